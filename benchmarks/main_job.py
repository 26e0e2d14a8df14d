"""Benchmark: the search and training of the embedded ``invmon run``, before and after issue 13.

``invmon run`` without ``--source`` trains on 3,600 synthetic bins at 64 px (2,880 train, 360
val, 360 test images). Its search and its final training were 70 % of the job. This runs the two
stages as the pipeline's components run them (``invmon.stages.tune.run``, then
``invmon.stages.train.run`` with the search's ``best.json`` and the run's final epochs, then
``evaluate``), for two settings of the embedded run:

- **before**: 3 trials of 1-2 epochs over batch sizes 16, 32 and 64, then 10 epochs (the
  defaults until issue 13; the one-epoch trials chose batch 16);
- **after**: the embedded defaults of ``invmon run`` now (``EMBEDDED`` in
  ``invmon.pipelines.local_run``).

Each variant runs in its own process with one PyTorch thread, and the figure compared is the
process CPU time of each stage: on the shared 2-core machine, other load stretches wall time
(and two OpenMP threads spin while a core is taken), but hardly the CPU time one thread needs
for the same work. Test accuracy depends only on the seed, so it is valid under load too (one
thread and two differ in rounding only). The data is the embedded run's (same synth seed, split
and size), made with the project's own stages unless ``--data`` names shards already made.

    .venv/bin/python benchmarks/main_job.py [--data SHARDS]

Prints one JSON line per variant, a table, then, last, the after/before ratio of the search and
training CPU time and both test accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The synthetic training data is test support, kept under tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BEFORE = {"trials": 3, "max_epochs": 2, "batch_sizes": "16,32,64", "epochs": 10}


def after() -> dict:
    """The embedded run's search and training settings now."""
    from invmon.pipelines.local_run import EMBEDDED

    return {name: getattr(EMBEDDED, name) for name in BEFORE}


def make_dataset(root: Path) -> Path:
    """The embedded run's data: its synthetic bins, split and image size."""
    from support.datasets import synthetic_shards

    from invmon.pipelines.local_run import DEMO_BINS, EMBEDDED

    return synthetic_shards(
        root,
        DEMO_BINS,
        seed=EMBEDDED.seed,
        classes=EMBEDDED.classes,
        split=EMBEDDED.split,
        image_size=EMBEDDED.image_size,
    )


def _timed(work) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(data: str, out: Path, variant: dict, threads: int) -> dict:
    """Search, train and evaluate as the pipeline does; CPU and wall seconds of each."""
    import torch

    torch.set_num_threads(threads)
    from invmon.stages import train, tune
    from invmon.stages.evaluate import evaluate
    from invmon.training.config import TrainOverrides

    search = tune.TuneSettings(
        data=data,
        out=str(out / "search"),
        trials=variant["trials"],
        max_epochs=variant["max_epochs"],
        batch_sizes=variant["batch_sizes"],
        training=TrainOverrides(device="cpu", seed=0),
    )
    searched, tune_wall, tune_cpu = _timed(lambda: tune.run(search))
    settings = train.TrainSettings(
        data=data,
        out=str(out / "model"),
        params=str(out / "search" / "best.json"),
        training=TrainOverrides(epochs=variant["epochs"], device="cpu", seed=0),
        checkpoint="none",
    )
    trained, train_wall, train_cpu = _timed(lambda: train.run(settings))
    epochs_wall = sum(e.seconds for e in trained.history)
    evaluation, eval_wall, eval_cpu = _timed(
        lambda: evaluate(out / "model", data, out / "evaluation", device="cpu")
    )
    return {
        **variant,
        "chosen": searched.best_parameters,
        "tune_cpu_s": round(tune_cpu, 1),
        "train_cpu_s": round(train_cpu, 1),
        "evaluate_cpu_s": round(eval_cpu, 1),
        "tune_wall_s": round(tune_wall, 1),
        "train_wall_s": round(train_wall, 1),
        # Saving the model and the int8 calibration and fidelity check that train ends with.
        "train_after_epochs_wall_s": round(train_wall - epochs_wall, 1),
        "evaluate_wall_s": round(eval_wall, 1),
        "val_accuracy": round(trained.history[-1].accuracy, 4),
        "test_accuracy": round(evaluation.accuracy, 4),
        "test_off_by_one": round(evaluation.off_by_one_accuracy, 4),
        "test_rmse": round(evaluation.rmse, 3),
        "load": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the embedded run's shards (default: made here)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads per variant")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # a child: the variant as JSON
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        result = measure(args.data, Path(args.out), json.loads(args.measure), args.threads)
        print(json.dumps(result), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(make_dataset(Path(tmp) / "data"))
        variants = {"before": BEFORE, "after": after()}
        # Both at once, one thread each: the CPU seconds compared do not depend on the overlap.
        command = [sys.executable, __file__, "--data", data, "--threads", str(args.threads)]
        children = {
            label: subprocess.Popen(
                [*command, "--out", str(Path(tmp) / label), "--measure", json.dumps(variant)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for label, variant in variants.items()
        }
        results = {}
        for label, child in children.items():
            out, _ = child.communicate()
            if child.returncode:
                sys.exit(f"the {label} variant failed")
            results[label] = json.loads(out.strip().splitlines()[-1])
            print(json.dumps({"variant": label, **results[label]}), flush=True)
    _table(results)


def _table(results: dict) -> None:
    print("| variant | search | final training | tune CPU s | train CPU s | test accuracy |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for label, r in results.items():
        search = f"{r['trials']} x <= {r['max_epochs']} epochs, batch {r['batch_sizes']}"
        final = f"{r['epochs']} epochs, batch {r['chosen']['batch_size']}"
        print(
            f"| {label} | {search} | {final} | {r['tune_cpu_s']} | {r['train_cpu_s']} "
            f"| {r['test_accuracy']} |"
        )
    before, now = results["before"], results["after"]
    spent = {label: r["tune_cpu_s"] + r["train_cpu_s"] for label, r in results.items()}
    print(
        f"search + training CPU time after/before: {spent['after'] / spent['before']:.2f}x "
        f"(tune {now['tune_cpu_s'] / before['tune_cpu_s']:.2f}x, train "
        f"{now['train_cpu_s'] / before['train_cpu_s']:.2f}x); test accuracy "
        f"{before['test_accuracy']:.3f} before, {now['test_accuracy']:.3f} after"
    )


if __name__ == "__main__":
    main()
