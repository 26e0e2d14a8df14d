"""The optimizer, learning-rate schedule and loss of a training run, built from its config."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from invmon.data.shards import ShardedSplit
from invmon.training.config import TrainConfig


def build_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the original), AdamW (decoupled weight decay) or SGD with Nesterov momentum, at the
    config's :attr:`~TrainConfig.start_lr`."""
    lr = config.start_lr
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )


def schedule_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier per optimizer step.

    A linear warmup over ``warmup_fraction`` of all steps, then cosine decay to zero, or steps of
    x0.1 at 50 % and 75 % of training, or a constant rate (the original recipe; no warmup unless
    asked for).
    """
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(total * config.warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if config.schedule == "step":
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 1.0

    return factor


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """A per-step LambdaLR following :func:`schedule_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(config, steps_per_epoch))


def class_weights(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (``n / (k * n_c)``), so each class counts as much in the loss.

    A class absent from the training split gets weight 0 (it never appears as a target).
    """
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(
    config: TrainConfig,
    train_split: ShardedSplit,
    num_classes: int,
    device,
    dtype: torch.dtype = torch.float32,
):
    """Per-image cross-entropy with the run's label smoothing and class weights.

    Returns ``(loss_fn, weight)``; ``weight`` is None without class weights. The loop divides the
    summed per-image losses by the weight total of the global batch, which is what
    ``CrossEntropyLoss(reduction="mean")`` computes, also when the batch is split across processes.
    """
    weight = None
    if config.class_weights == "balanced":
        weight = class_weights(train_split.targets, num_classes).to(device, dtype)
    loss_fn = nn.CrossEntropyLoss(
        weight=weight, label_smoothing=config.label_smoothing, reduction="none"
    )
    return loss_fn, weight
