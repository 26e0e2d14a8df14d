"""Device and precision choices shared by training and inference.

bf16 autocast is used where the hardware runs it natively: CUDA GPUs that support bf16, and CPUs
with native bf16 instructions (AVX512-BF16 or AMX), where it is also faster than fp32. The same
code path runs on CPU here and on GPU in the cluster. fp16 autocast (for GPUs without bf16, such
as V100 and T4) needs loss scaling: :func:`grad_scaler` returns a scaler that is active only then.

PyTorch is imported by the functions, not here, so that the choices below can be read by the
settings of a command (``invmon serve --help``) without loading it.
"""

from __future__ import annotations

import contextlib
import typing

if typing.TYPE_CHECKING:
    import torch

from invmon.training.config import DEVICES, PRECISIONS

# Inference may also run int8 on a CPU (invmon.training.quantize); training never does.
INFERENCE_PRECISIONS = ("auto", "int8", *PRECISIONS[1:])


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``auto``, ``cpu`` or ``cuda`` (``cuda:N`` also accepted)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(name)
    raise ValueError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")


def bf16_supported(device: torch.device) -> bool:
    """True when ``device`` runs bf16 natively."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for ``name`` on ``device`` (None means plain fp32)."""
    import torch

    if name not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "fp32":
        return None
    if name == "fp16":
        return torch.float16
    if name == "bf16" or bf16_supported(device):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` on ``device``, or a no-op for fp32."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler for ``dtype`` on ``device``: enabled for fp16 only.

    bf16 has fp32's exponent range and needs no loss scaling; a disabled scaler passes gradients
    through unchanged, so the training step is the same code for every precision.
    """
    import torch

    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
