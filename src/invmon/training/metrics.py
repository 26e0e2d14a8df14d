"""What a training run reports per epoch, and the line Katib reads.

After each epoch, rank 0 prints one line of ``name=value`` metrics preceded by an RFC 3339
timestamp, the format Katib's StdOut metrics collector parses with its default filter::

    2026-01-05T10:00:00.000000Z epoch=3 loss=0.5200 accuracy=0.8100 val_loss=0.6000 ...

``accuracy`` is validation accuracy, the search objective.
"""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass

# Metrics printed per epoch, in order (Katib collects the ones an Experiment names).
METRIC_NAMES = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "train_accuracy",
    "images_per_second",
    "seconds",
)


@dataclass
class EpochResult:
    """Metrics of one epoch."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    train_accuracy: float
    images_per_second: float
    seconds: float


def print_metrics(result: EpochResult, stream=None, now: datetime.datetime | None = None) -> None:
    """Print an epoch's metrics as one timestamped line of ``name=value`` pairs.

    Katib's StdOut collector reads the leading RFC 3339 timestamp as the time of the observation
    and every ``name=value`` pair with its default filter.
    """
    stream = stream or sys.stdout
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stamp = now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pairs = [
        f"{name}={value}" if name == "epoch" else f"{name}={value:.4f}"
        for name, value in ((n, getattr(result, n)) for n in METRIC_NAMES)
    ]
    stream.write(f"{stamp} {' '.join(pairs)}\n")
    stream.flush()
