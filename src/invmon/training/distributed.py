"""Distributed data parallel training: one process per GPU (or per CPU worker), started by torchrun.

``torchrun`` (and Kubeflow Trainer's ``torch-distributed`` runtime, which runs torchrun on every
node) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init` reads them and joins the
process group: NCCL between GPUs, gloo on CPU. Without them the run is a single process and every
helper here is a no-op, so the training loop has one code path.

Only rank 0 writes (metrics, checkpoints, the model); :attr:`Distributed.is_main` says which
process that is.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that prints and writes."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this process: its own GPU (``cuda:LOCAL_RANK``) or the CPU."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` over all processes (returned to each of them)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.backend == "nccl":
            tensor = tensor.cuda(self.local_rank)
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()


def from_environment(environ=None) -> Distributed:
    """Read torchrun's variables; a single process when they are absent."""
    environ = os.environ if environ is None else environ
    present = [name for name in _TORCHRUN_VARIABLES if name in environ]
    if not present:
        return Distributed()
    if len(present) != len(_TORCHRUN_VARIABLES):
        missing = sorted(set(_TORCHRUN_VARIABLES) - set(present))
        raise ValueError(f"distributed run: {', '.join(missing)} not set (start it with torchrun)")
    return Distributed(
        rank=int(environ["RANK"]),
        world_size=int(environ["WORLD_SIZE"]),
        local_rank=int(environ["LOCAL_RANK"]),
    )


def init(device: torch.device, timeout_minutes: int = 30) -> Distributed:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU)."""
    place = from_environment()
    if not place.enabled:
        return place
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(place.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return Distributed(place.rank, place.world_size, place.local_rank, backend)


def shutdown(place: Distributed) -> None:
    """Leave the process group."""
    if place.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, place: Distributed, sync_batchnorm: bool) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel; with ``sync_batchnorm``, share BN statistics.

    Shared statistics make N processes compute what one process computes on the whole global
    batch. On GPUs this is torch's SyncBatchNorm; torch's implementation refuses CPU tensors, so on
    CPU (gloo) :class:`AllReduceBatchNorm2d` does the same with an all-reduce of the sums.
    """
    if not place.enabled:
        return model
    if sync_batchnorm:
        if place.backend == "nccl":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            model = AllReduceBatchNorm2d.convert(model)
    device_ids = [place.local_rank] if place.backend == "nccl" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (and a torch.compile wrapper)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across processes.

    Per-channel sums and sums of squares are all-reduced with autograd support, so gradients flow
    through the shared statistics exactly as through one process's BatchNorm on the whole batch.
    Outside distributed training it is an ordinary BatchNorm2d. Its state dict keys are those of
    BatchNorm2d, so checkpoints and model folders do not depend on it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        channels = x.shape[1]
        # Two passes in float64, as BatchNorm2d's CPU kernel accumulates: the mean, then the
        # mean squared deviation from it (no cancellation error from E[x^2] - E[x]^2).
        xd = x.double()
        local = torch.cat([xd.sum(dim=(0, 2, 3)), xd.new_tensor([x.numel() / channels])])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        shape = (1, channels, 1, 1)
        centred = xd - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / count
        self._update_running_stats(mean.detach(), var.detach(), count.detach())
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape).double() + self.bias.view(shape).double()
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean, var, count) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
        unbiased = var * count / (count - 1).clamp_min(1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d in ``module`` by this class, keeping parameters and buffers."""
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, cls):
            converted = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
            )
            like = module.weight if module.affine else module.running_mean
            if like is not None:
                converted.to(like.device, like.dtype)
            converted.load_state_dict(module.state_dict())
            return converted
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of each process's input is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad
