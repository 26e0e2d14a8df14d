"""The live objects of one training run, and which split measures it.

Its own module so that the loop, the checkpoint (which saves and restores a :class:`Run`) and the
int8 calibration (which measures on the same split the loop does) all import it from below,
instead of from one another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from invmon.data.shards import DatasetIndex
from invmon.training import distributed
from invmon.training.model import ModelConfig


@dataclass
class Run:
    """The live objects of one training run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    weight: torch.Tensor | None
    device: torch.device
    dtype: torch.dtype | None
    place: distributed.Distributed
    model_config: ModelConfig

    @property
    def input_dtype(self) -> torch.dtype:
        """float32, or float64 for a model in the fp64 reference precision."""
        return next(self.plain_model.parameters()).dtype

    @property
    def plain_model(self) -> nn.Module:
        """The model without DDP or torch.compile wrappers (what is saved)."""
        return distributed.unwrap(self.model)


def measuring_split_name(index: DatasetIndex) -> str:
    """The split that measures a model during training: val, else test."""
    return "val" if index.splits.get("val", {}).get("images") else "test"
