"""GPU check: training, input, DDP and serving on one CUDA GPU, each against a bare baseline.

Prepared to run on a machine with one (or more) NVIDIA GPUs and only PyTorch installed: it needs
torch, torchvision, numpy, PIL and the project's ``src/`` on PYTHONPATH, makes its own synthetic
shards with the project's stages (no data travels), and finishes within ``--budget`` seconds,
each part in its own share of it (a part out of time is skipped and says so)::

    PYTHONPATH=src python benchmarks/gpu.py --out results/

It measures, in one run: the bf16 matrix-product peak; ``train_one_epoch`` on shards against a
bare loop on tensors already on the GPU (bf16 autocast + channels_last, ResNet50 + head, batch
sizes 64/128/256, peak GPU memory), with torch.compile off and on; the shard loader against the
training rate; a few DDP steps under torchrun against one process; the predictor's batched path
against a bare forward at batch 1/8/32. It writes ``gpu.json`` (every figure) and ``gpu.txt``
(the summary, also printed last) under ``--out``.

``--device cpu --smoke`` runs the same code paths on a CPU in seconds (tiny images and batches,
two gloo processes for DDP, torch.compile's graph capture without Inductor's C++ build), so that
a test keeps this script working between GPU runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import gpu_ddp  # benchmarks/gpu_ddp.py
import gpu_parts  # benchmarks/gpu_parts.py
import torch

TARGETS = {"loop_vs_bare": 0.9, "loader_vs_training": 1.5}
DDP_TOLERANCE = 0.02  # relative, per step: bf16 autocast, and other kernels for other shapes
# Each part's share of --budget; a part starts only with its share left in the whole budget.
SHARES = {
    "data": 0.10,
    "matmul": 0.03,
    "training": 0.25,
    "loader": 0.07,
    "ddp": 0.15,
    "serving": 0.10,
    "compiled": 0.30,
}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; ``--smoke`` changes the defaults of every size to tiny ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu.json and gpu.txt")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds on a CPU")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (330; smoke 900)")
    parser.add_argument("--image-size", type=int, help="pixels (224; smoke 32)")
    parser.add_argument("--images", type=int, help="training images (3072; smoke 8)")
    parser.add_argument("--distinct", type=int, help="bins drawn, then repeated (256; smoke 4)")
    parser.add_argument("--batch-sizes", help="training batch sizes (64,128,256; smoke 4,8)")
    parser.add_argument("--compile-batch-sizes", help="with torch.compile (256; smoke 8)")
    parser.add_argument(
        "--compile-backend", help="torch.compile backend (inductor; smoke eager: no C++ build)"
    )
    parser.add_argument("--matmul-size", type=int, help="square bf16 products (8192; smoke 128)")
    parser.add_argument("--ddp-processes", type=int, help="torchrun processes (GPUs; CPU 2)")
    parser.add_argument("--ddp-batch-size", type=int, help="global batch of DDP (64; smoke 4)")
    parser.add_argument("--ddp-steps", type=int, help="DDP steps compared (5; smoke 2)")
    parser.add_argument("--ddp-precision", help="DDP steps' precision (bf16; smoke fp64)")
    parser.add_argument("--serve-batches", help="predictor batch sizes (1,8,32; smoke 1,2,4)")
    parser.add_argument("--serve-iterations", type=int, help="timed calls per batch (50; smoke 3)")
    parser.add_argument(
        "--serve-graph", help="predictor graph (auto: as serve picks; smoke frozen)"
    )
    parser.add_argument("--warm-up-steps", type=int, help="bare loop's warm-up (3; smoke 1)")
    parser.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker is None and args.out is None:
        parser.error("--out is required")
    return _with_defaults(args)


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    gpu = {
        "budget": 330.0,
        "image_size": 224,
        "images": 3072,
        "distinct": 256,
        "batch_sizes": "64,128,256",
        "compile_batch_sizes": "256",
        "compile_backend": "inductor",
        "matmul_size": 8192,
        "ddp_batch_size": 64,
        "ddp_steps": 5,
        "ddp_precision": "bf16",
        "serve_batches": "1,8,32",
        "serve_iterations": 50,
        "serve_graph": "auto",
        "warm_up_steps": 3,
    }
    smoke = {
        **gpu,
        "budget": 900.0,
        "image_size": 32,
        "images": 8,
        "distinct": 4,
        "batch_sizes": "4,8",
        "compile_batch_sizes": "8",
        "compile_backend": "eager",
        "matmul_size": 128,
        "ddp_batch_size": 4,
        "ddp_steps": 2,
        # Batches of 2 per process at 32 px leave BatchNorm a handful of values per channel in the
        # last layers, where bf16 rounding alone moves the loss by percents: fp64 shows DDP's own
        # difference.
        "ddp_precision": "fp64",
        "serve_batches": "1,2,4",
        "serve_iterations": 3,
        "serve_graph": "frozen",
        "warm_up_steps": 1,
    }
    for name, value in (smoke if args.smoke else gpu).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batch_sizes", "compile_batch_sizes", "serve_batches"):
        text = getattr(args, name)
        setattr(
            args, name, [int(v) for v in text.split(",") if v] if isinstance(text, str) else text
        )
    return args


class Report:
    """The figures so far, written after every part, so that a run stopped early leaves them."""

    def __init__(self, out: Path, budget: float):
        self.out, self.budget = out, budget
        self.start = time.perf_counter()
        self.data: dict = {"skipped": {}, "errors": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        """Seconds left in the whole budget."""
        return self.budget - (time.perf_counter() - self.start)

    def part(self, name: str, measure, *args) -> dict | None:
        """Run ``measure(seconds, *args)`` if its share of the budget is left; record it."""
        share = SHARES[name] * self.budget
        if self.left() < share:
            self.data["skipped"][name] = f"{self.left():.0f} s left, its share is {share:.0f} s"
            print(f"[gpu] {name}: skipped ({self.data['skipped'][name]})", flush=True)
            return None
        started = time.perf_counter()
        print(f"[gpu] {name} ...", flush=True)
        try:
            result = measure(share, *args)
        except Exception as error:  # one part failing must not cost the others' figures
            self.data["errors"][name] = "".join(traceback.format_exception_only(error)).strip()
            traceback.print_exc()
            result = None
        else:
            self.data[name] = result
        self.data.setdefault("seconds", {})[name] = time.perf_counter() - started
        self.write()
        return result

    def write(self) -> None:
        """Write gpu.json (whole or not at all: a temporary file renamed over it)."""
        self.data["total_seconds"] = time.perf_counter() - self.start
        tmp = self.out / ".gpu.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=float) + "\n")
        os.replace(tmp, self.out / "gpu.json")


def environment(device: torch.device) -> dict:
    """What ran: versions, the card, the cores."""
    import torchvision

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "cpu_cores": len(os.sched_getaffinity(0)),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=props.total_memory / 2**30,
            gpus=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return env


# -- the parts -------------------------------------------------------------------------------


def data_part(seconds: float, args, folder: Path) -> dict:
    """Synthetic shards made here, with every core (one in a smoke run)."""
    from invmon.data.shards import DatasetIndex

    workers = 1 if args.smoke else len(os.sched_getaffinity(0))
    shards = gpu_parts.make_shards(folder, args.images, args.image_size, args.distinct, workers)
    train = len(DatasetIndex.read(shards).split("train"))
    return {"shards": str(shards), "train_images": train, "image_size": args.image_size}


def train_part(seconds: float, args, device, shards: Path, compiled: bool) -> dict:
    """Our loop against the bare loop at each batch size, until the part's time runs out."""
    sizes = args.compile_batch_sizes if compiled else args.batch_sizes
    deadline = time.perf_counter() + seconds
    results = {}
    with gpu_parts.compile_backend(args.compile_backend if compiled else "inductor"):
        for size in sizes:
            if time.perf_counter() > deadline:
                results[str(size)] = {"skipped": "out of this part's time"}
                continue
            loop = gpu_parts.measure_loop(shards, device, size, compiled)
            bare = gpu_parts.measure_bare(shards, device, size, compiled, args.warm_up_steps)
            results[str(size)] = {
                "loop": loop,
                "bare": bare,
                "loop_vs_bare": loop["images_per_second"] / bare["images_per_second"],
            }
    backend = args.compile_backend if compiled else None
    return {"compile_backend": backend, "image_size": args.image_size, "batches": results}


def loader_part(seconds: float, args, device, shards: Path) -> dict:
    """The loader's rate at the largest batch size (set against training in :func:`finish`)."""
    return gpu_parts.measure_loader(shards, device, max(args.batch_sizes))


def ddp_part(seconds: float, args, device, shards: Path, folder: Path) -> dict:
    """A few steps under torchrun (one process per GPU; two gloo processes on a CPU)."""
    processes = args.ddp_processes or (torch.cuda.device_count() if device.type == "cuda" else 2)
    params = {
        "shards": str(shards),
        "device": str(device),
        "batch_size": args.ddp_batch_size,
        "steps": args.ddp_steps,
        "precision": args.ddp_precision,
    }
    single = gpu_ddp.step_losses(params, gpu_ddp.distributed.Distributed())
    gpu_parts.reset_peak(device)
    launched = gpu_ddp.launch(__file__, params, processes, seconds, folder)
    result = gpu_ddp.compare(single, launched.pop("losses"), DDP_TOLERANCE)
    return {
        **launched,
        "global_batch_size": args.ddp_batch_size,
        "precision": args.ddp_precision,
        **result,
    }


def serving_part(seconds: float, args, device, shards: Path, folder: Path) -> dict:
    """The predictor's batched path against a bare forward, on a random-weight model folder."""
    model_dir = gpu_parts.save_random_model(shards, folder / "model")
    return gpu_parts.measure_counter(
        model_dir, device, args.serve_batches, args.serve_iterations, args.serve_graph
    )


# -- the summary -----------------------------------------------------------------------------


def training_rates(data: dict) -> list[float]:
    """Every training rate measured: loop and bare, compiled or not, at every batch size."""
    return [
        run["images_per_second"]
        for part in ("training", "compiled")
        for batch in ((data.get(part) or {}).get("batches") or {}).values()
        for run in (batch.get("loop"), batch.get("bare"))
        if run
    ]


def finish(data: dict, image_size: int) -> None:
    """Set the loader against the fastest training rate; list every ratio with its target."""
    loader, rates = data.get("loader"), training_rates(data)
    if loader and rates:
        loader["training_images_per_second"] = max(rates)
        loader["loader_vs_training"] = loader["images_per_second"] / max(rates)
    data["targets"] = targets(data, image_size)


def targets(data: dict, image_size: int) -> list[dict]:
    """Each ratio measured, with its target where the issue sets one."""
    rows = []
    for part in ("training", "compiled"):
        for size, batch in ((data.get(part) or {}).get("batches") or {}).items():
            if "loop_vs_bare" in batch:
                rows.append(
                    _row(f"{part} loop/bare @{size}", batch["loop_vs_bare"], "loop_vs_bare")
                )
    loader = data.get("loader") or {}
    if loader.get("loader_vs_training") is not None:
        rows.append(_row("loader/training", loader["loader_vs_training"], "loader_vs_training"))
    ddp = data.get("ddp") or {}
    if "max_relative_difference" in ddp:
        rows.append(
            {
                "name": "ddp loss rel. difference",
                "value": ddp["max_relative_difference"],
                "target": f"<= {ddp['tolerance']}",
                "met": ddp["within_tolerance"],
            }
        )
    for size, batch in ((data.get("serving") or {}).get("batches") or {}).items():
        ratio = batch["counter_images_per_second"] / batch["bare_images_per_second"]
        rows.append({"name": f"predictor/bare @{size}", "value": ratio, "target": None})
    rows += _compute_share(data, image_size)
    return rows


def _row(name: str, value: float, target: str) -> dict:
    goal = TARGETS[target]
    return {"name": name, "value": value, "target": f">= {goal}", "met": value >= goal}


def _compute_share(data: dict, image_size: int) -> list[dict]:
    """The fastest training rate as model FLOP/s, a share of the measured matmul peak."""
    peak = (data.get("matmul") or {}).get("tflops")
    rates = training_rates(data)
    if not peak or not rates:
        return []
    flop = gpu_parts.RESNET50_TRAIN_FLOP_224 * (image_size / 224) ** 2
    tflops = max(rates) * flop / 1e12
    return [{"name": "training TFLOP/s / matmul peak", "value": tflops / peak, "target": None}]


def summary(data: dict) -> str:
    """The text summary: what ran, the headline figures, then every ratio against its target."""
    env = data["environment"]
    lines = [
        f"{env.get('gpu', env['device'])}: torch {env['torch']}, torchvision "
        f"{env['torchvision']}, Python {env['python']}, {env['cpu_cores']} cores",
    ]
    for part in ("training", "compiled"):
        for size, batch in ((data.get(part) or {}).get("batches") or {}).items():
            if "loop" in batch:
                loop, bare = batch["loop"], batch["bare"]
                lines.append(
                    f"{part:<9} batch {size:>4}: loop {loop['images_per_second']:8.1f} img/s "
                    f"({loop['peak_memory_mib']:.0f} MiB), bare {bare['images_per_second']:8.1f}"
                    f" img/s ({bare['peak_memory_mib']:.0f} MiB)"
                )
    if data.get("matmul"):
        lines.append(
            f"bf16 matmul {data['matmul']['size']}: {data['matmul']['tflops']:.1f} TFLOP/s"
        )
    for size, batch in ((data.get("serving") or {}).get("batches") or {}).items():
        lines.append(
            f"predictor batch {size:>3}: {batch['counter_images_per_second']:8.1f} img/s "
            f"p50 {batch['counter_p50_ms']:.2f} ms p99 {batch['counter_p99_ms']:.2f} ms; bare "
            f"{batch['bare_images_per_second']:8.1f} img/s p50 {batch['bare_p50_ms']:.2f} ms"
        )
    for row in data.get("targets", []):
        verdict = "" if row["target"] is None else ("  met" if row["met"] else "  MISSED")
        lines.append(f"{row['name']:<32} {row['value']:8.3f}  {row['target'] or ''}{verdict}")
    for name, why in {**data["skipped"], **data["errors"]}.items():
        lines.append(f"{name}: not measured ({why})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Run every part in its budget; write gpu.json and gpu.txt; print the summary."""
    args = parse_args(argv)
    if args.ddp_worker:
        gpu_ddp.worker(args.ddp_worker)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available here (use --device cpu --smoke)")
    if args.smoke:
        # One thread: the smoke run checks code paths, not speed, and shared cores make
        # OpenMP's threads wait on each other.
        torch.set_num_threads(1)
    report = Report(args.out, args.budget)
    report.data["environment"] = environment(device)
    report.data["settings"] = {k: v for k, v in vars(args).items() if k != "out"} | {
        "out": str(args.out)
    }
    # The budget is a promise: a part still running when it ends is stopped (and named as
    # failed), the parts after it are skipped, and the report is written all the same.
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(max(1, math.ceil(args.budget)))
    try:
        with tempfile.TemporaryDirectory(prefix="invmon-gpu-") as tmp:
            folder = Path(tmp)
            data = report.part("data", data_part, args, folder)
            if data is not None:
                _measure(report, args, device, Path(data["shards"]), folder)
    except OutOfTime as error:
        report.data["errors"]["budget"] = str(error)
    finally:
        signal.alarm(0)
    finish(report.data, args.image_size)
    report.write()
    text = summary(report.data)
    (args.out / "gpu.txt").write_text(text)
    print(text, end="")
    return 1 if report.data["errors"] else 0


class OutOfTime(Exception):
    """The whole run's ``--budget`` ran out."""


def _out_of_time(signum, frame):
    raise OutOfTime("the run's --budget ran out")


def _measure(report: Report, args, device, shards: Path, folder: Path) -> None:
    report.part("matmul", lambda s: gpu_parts.matmul_tflops(device, args.matmul_size))
    report.part("training", train_part, args, device, shards, False)
    report.part("loader", loader_part, args, device, shards)
    report.part("ddp", ddp_part, args, device, shards, folder)
    report.part("serving", serving_part, args, device, shards, folder)
    # Last: compiling takes the longest and is the likeliest to run out of time.
    report.part("compiled", train_part, args, device, shards, True)


if __name__ == "__main__":
    sys.exit(main())
