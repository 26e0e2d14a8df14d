"""Train: a ResNet50 with the original two-layer head, fitted with Adam on preprocessed shards.

The loop is split into verbs, as in torchvision's classification recipe: :func:`train_one_epoch`,
:func:`evaluate_split` and :func:`fit`. Tune reuses :func:`fit` through its ``on_epoch`` hook
instead of copying the loop.

Each epoch prints one ``name=value`` line per metric, the format of Katib's StdOut metrics
collector (``epoch=3``, ``loss=0.52``, ``accuracy=0.81``); ``accuracy`` is validation accuracy, the
search objective.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from invmon.data import DatasetIndex, LoaderOptions, ShardedSplit
from invmon.device import autocast, resolve_device, resolve_precision
from invmon.model import ModelConfig, build_model, load_backbone_weights, save_model
from invmon.transforms import normalize
from invmon.weights import load_state_dict

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant")
HISTORY_FILE = "history.json"
# Hyperparameters that a search may choose (the keys of best.json).
TUNABLE = ("lr", "batch_size", "epochs")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; saved with the model it produces."""

    lr: float = 2e-3
    batch_size: int = 32
    epochs: int = 10
    weights: str = "none"
    device: str = "auto"
    precision: str = "auto"
    schedule: str = "cosine"
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    head_hidden: int = 256
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (
                self.schedule in SCHEDULES,
                f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
            ),
            (0 <= self.warmup_fraction < 1, "--warmup-fraction must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def replace(self, **changes) -> TrainConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return TrainConfig(**{**asdict(self), **changes})


def read_params(path: str | Path) -> dict:
    """Read a best-hyperparameters JSON (tune's output) and keep the tunable keys."""
    data = json.loads(Path(path).read_text())
    params = data.get("parameters", data)
    unknown = sorted(set(params) - set(TUNABLE))
    if unknown:
        raise ValueError(f"{path}: unknown hyperparameters {unknown} (allowed: {list(TUNABLE)})")
    names = {f.name: f.type for f in fields(TrainConfig)}
    return {k: (int(v) if names[k] == "int" else float(v)) for k, v in params.items()}


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


@dataclass
class TrainResult:
    """What :func:`fit` returns."""

    config: TrainConfig
    history: list[EpochResult] = field(default_factory=list)
    model_dir: str | None = None

    @property
    def best_accuracy(self) -> float:
        """The best validation accuracy over the epochs."""
        return max((e.accuracy for e in self.history), default=0.0)


def print_metrics(result: EpochResult, stream=None) -> None:
    """Print an epoch's metrics as ``name=value`` lines (Katib's StdOut collector format)."""
    stream = stream or sys.stdout
    for name in ("epoch", "loss", "accuracy", "val_loss", "train_accuracy", "images_per_second"):
        value = getattr(result, name)
        stream.write(f"{name}={value}\n" if name == "epoch" else f"{name}={value:.4f}\n")
    stream.flush()


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """Linear warmup then cosine decay to zero, per step; or a constant rate (the original)."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(total * config.warmup_fraction)

    def factor(step: int) -> float:
        if config.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(
    model,
    split: ShardedSplit,
    optimizer,
    scheduler,
    config: TrainConfig,
    preprocessing,
    device,
    dtype,
    epoch: int,
) -> tuple[float, float, float]:
    """Run one epoch; return (mean loss, training accuracy, images per second)."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    batches = split.loader(
        LoaderOptions.for_device(
            device,
            batch_size=config.batch_size,
            shuffle=True,
            seed=config.seed * 1000 + epoch,
            drop_last=len(split) > config.batch_size,
            augment=True,
        )
    )
    for images, targets in batches:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        inputs = normalize(images, preprocessing)
        with autocast(device, dtype):
            logits = model(inputs)
            loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    elapsed = time.perf_counter() - start
    return total_loss / max(1, seen), correct / max(1, seen), seen / max(elapsed, 1e-9)


@torch.inference_mode()
def evaluate_split(model, split: ShardedSplit, preprocessing, device, dtype, batch_size=128):
    """Return (mean loss, accuracy) of ``model`` on ``split``."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for images, targets in split.batches(batch_size):
        targets = targets.to(device)
        with autocast(device, dtype):
            logits = model(normalize(images.to(device), preprocessing)).float()
        total_loss += loss_fn(logits, targets).item()
        correct += (logits.argmax(1) == targets).sum().item()
    n = max(1, len(split))
    return total_loss / n, correct / n


def seed_everything(seed: int) -> None:
    """Seed torch and numpy so that a run is repeatable."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def fit(
    data: str | Path,
    config: TrainConfig,
    out: str | Path | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    quiet: bool = False,
) -> TrainResult:
    """Train on the preprocessed dataset under ``data``; save the model to ``out`` if given.

    ``on_epoch`` is called after each epoch with its metrics; it may raise to stop the run (the
    local search prunes trials this way).
    """
    seed_everything(config.seed)
    index = DatasetIndex.read(data)
    train_split = index.split("train")
    val_split = index.split("val") if index.splits.get("val", {}).get("images") else None
    if val_split is None:
        log.warning("no validation split: reporting accuracy on the test split")
        val_split = index.split("test")
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    model_config = ModelConfig(
        classes=index.classes, preprocessing=index.preprocessing, head_hidden=config.head_hidden
    )
    model = build_model(model_config)
    if config.weights != "none":
        load_backbone_weights(model, load_state_dict(config.weights))
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, len(train_split) // config.batch_size)
    scheduler = make_scheduler(optimizer, config, steps)
    log.info(
        "training on %s (%s), %d train / %d val images, classes %s",
        device,
        dtype or "fp32",
        len(train_split),
        len(val_split),
        list(index.classes),
    )
    result = TrainResult(config=config)
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        loss, train_acc, ips = train_one_epoch(
            model,
            train_split,
            optimizer,
            scheduler,
            config,
            index.preprocessing,
            device,
            dtype,
            epoch,
        )
        val_loss, accuracy = evaluate_split(model, val_split, index.preprocessing, device, dtype)
        epoch_result = EpochResult(
            epoch, loss, accuracy, val_loss, train_acc, ips, time.perf_counter() - start
        )
        result.history.append(epoch_result)
        if not quiet:
            print_metrics(epoch_result)
        if on_epoch is not None:
            on_epoch(epoch_result)
    if out is not None:
        training = {"config": asdict(config), "history": [asdict(e) for e in result.history]}
        save_model(model, _with_training(model_config, training), out)
        (Path(out) / HISTORY_FILE).write_text(json.dumps(training, indent=2) + "\n")
        result.model_dir = str(out)
    return result


def _with_training(config: ModelConfig, training: dict) -> ModelConfig:
    final = training["history"][-1] if training["history"] else {}
    summary = {
        "hyperparameters": training["config"],
        "val_accuracy": final.get("accuracy"),
        "epochs_run": len(training["history"]),
    }
    return ModelConfig(
        classes=config.classes,
        preprocessing=config.preprocessing,
        architecture=config.architecture,
        head_hidden=config.head_hidden,
        head_dropout=config.head_dropout,
        training=summary,
    )
