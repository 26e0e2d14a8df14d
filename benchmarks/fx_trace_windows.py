"""How long a staged upgrade keeps requests out: the torch.fx traces that hold MODEL_RUNS.

While torch.fx traces, it patches torch.nn.Module for the whole process, so a staged predictor
makes every trace and every served batch hold one lock (invmon.serving.fx_tracing; the reason is
in docs/serving.md). This runs one staged upgrade of --model in this process, with nothing
serving, in an empty TorchInductor cache, and times each trace: the time a request sent during it
could wait for the lock on top of its own run.

    flock /tmp/invmon-cpu.lock .venv/bin/python benchmarks/fx_trace_windows.py --model MODEL_DIR \\
        --precision bf16 --graph compiled
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch.fx

from invmon.serving.counter import Counter
from invmon.serving.options import GRAPHS
from invmon.training.device import INFERENCE_PRECISIONS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder written by invmon train")
    parser.add_argument("--precision", default="auto", choices=INFERENCE_PRECISIONS)
    parser.add_argument("--graph", default="auto", choices=GRAPHS)
    args = parser.parse_args(argv)
    # An empty cache, as a new pod has: cached kernels would skip the traces being measured.
    # (TorchInductor reads the variable when it compiles, not at import.)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fx-trace-windows-")
    counter, upgrade = Counter.staged(
        args.model, device="cpu", precision=args.precision, graph=args.graph
    )
    if upgrade is None:
        print(f"nothing to upgrade to: {counter.precision} ({counter.engine.graph} graph) at once")
        return
    guarded, spans = torch.fx.Tracer.trace, []

    def timed(self, *trace_args, **kwargs):
        start = time.perf_counter()
        try:
            return guarded(self, *trace_args, **kwargs)
        finally:
            spans.append((type(self).__name__, time.perf_counter() - start))

    torch.fx.Tracer.trace = timed
    start = time.perf_counter()
    upgrade()
    total = time.perf_counter() - start
    held = sum(seconds for _, seconds in spans)
    print(
        f"upgrade to {counter.precision} ({counter.engine.graph} graph): {total:.1f} s; "
        f"{len(spans)} traces held the lock for {held:.2f} s in all"
    )
    for name, seconds in sorted(spans, key=lambda span: -span[1])[:5]:
        print(f"  {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
