"""Benchmark: the local search with pruning against the same search without it.

The same synthetic dataset (1,200 bins in ABID's layout through synth, arrange and preprocess, at
32 px), the same search space (learning rate log-uniform in [1e-5, 3e-2], batch size 16 or 32),
the same budget (12 trials of up to 6 epochs) and the same random sampler seed, so every variant
proposes the same trials. Without pruning every trial trains 6 epochs; with median stopping
(Katib's medianstop, from epoch 1 or from epoch 2) or Hyperband, trials that fall behind stop
early. Measured: the best validation accuracy found and the trial-epochs spent.

    .venv/bin/python benchmarks/search.py

Prints a table, then, last, the pruned search's best accuracy and trial-epochs against the
unpruned search's (target: within 1 point with at most 50 % of the trial-epochs).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

# The synthetic training data is test support, kept under tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BINS = 1200
SIZE = 32
TRIALS = 12
EPOCHS = 6
# (label, early stopping, first epoch at which a trial may be stopped)
VARIANTS = (
    ("none", "none", 1),
    ("median", "median", 1),
    ("median from epoch 2", "median", 2),
    ("hyperband", "hyperband", 1),
)


def make_dataset(root: Path) -> Path:
    """Synthetic bins through the project's own synth, arrange and preprocess stages."""
    from support.datasets import synthetic_shards

    return synthetic_shards(
        root, BINS, seed=1, classes="0-5", split="0.7,0.15,0.15", image_size=SIZE
    )


def search(shards: Path, out: Path, early_stopping: str, start_epoch: int):
    from invmon.training.config import TrainConfig
    from invmon.training.search import Parameter, SearchSpec, tune

    spec = SearchSpec(
        parameters=[
            Parameter("lr", "double", 1e-5, 3e-2, log_scale=True),
            Parameter("batch_size", "categorical", values=(16, 32)),
        ],
        algorithm="random",
        max_trials=TRIALS,
        early_stopping=early_stopping,
        min_trials=2,
        start_epoch=start_epoch,
    )
    base = TrainConfig(epochs=EPOCHS, device="cpu", seed=0)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the trials' per-epoch metric lines
        result = tune(shards, out, spec=spec, base=base, seed=0)
    return result, time.perf_counter() - start


def main() -> None:
    logging.disable(logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_dataset(Path(tmp))
        for number, (variant, early_stopping, start_epoch) in enumerate(VARIANTS):
            out = Path(tmp) / f"search-{number}"
            results[variant] = search(shards, out, early_stopping, start_epoch)
            result, seconds = results[variant]
            print(
                f"{variant}: best {result.best_value:.4f}, {result.trial_epochs} trial-epochs, "
                f"{seconds:.0f}s",
                file=sys.stderr,
            )
    print(
        f"{TRIALS} random trials (seed 0) of up to {EPOCHS} epochs, {BINS} synthetic bins at "
        f"{SIZE} px; objective: best validation accuracy of a trial"
    )
    print("| early stopping | best accuracy | trial-epochs | trials pruned | wall time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant, (result, seconds) in results.items():
        print(
            f"| {variant} | {result.best_value:.4f} | {result.trial_epochs} | {result.pruned} | "
            f"{seconds:.0f} s |"
        )
    full = results["none"][0]
    for variant, _, _ in VARIANTS[1:]:
        pruned = results[variant][0]
        points = 100 * (pruned.best_value - full.best_value)
        print(
            f"{variant} vs no pruning: best accuracy {points:+.1f} points, "
            f"trial-epochs {pruned.trial_epochs / full.trial_epochs:.2f}x "
            "(target: within 1 point, <= 0.50x)"
        )


if __name__ == "__main__":
    main()
