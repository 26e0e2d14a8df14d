"""Batch inference with a trained model: the code evaluate, serve and audit share.

:class:`Counter` wraps the one model loader (:func:`invmon.training.model.load_model`) and the one
preprocessing (:mod:`invmon.data.transforms`) and turns uint8 image batches into counts, class
probabilities and expected counts.
"""

from __future__ import annotations

import itertools
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from invmon.data.transforms import DEFAULT_MAX_PIXELS, normalize, prepare
from invmon.serving.options import GRAPHS
from invmon.training import quantize
from invmon.training.device import INFERENCE_PRECISIONS, autocast, resolve_device, resolve_precision
from invmon.training.model import ModelConfig, load_model


@dataclass(frozen=True)
class Predictions:
    """Per-image results of one batch."""

    probabilities: np.ndarray  # (N, C) float32, rows sum to 1
    counts: np.ndarray  # (N,) most likely item count
    expected: np.ndarray  # (N,) probability-weighted mean count

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted count, per image."""
        return self.probabilities.max(axis=1)

    def rows(self, start: int, end: int) -> Predictions:
        """The results of images ``start`` to ``end`` (exclusive)."""
        return Predictions(
            self.probabilities[start:end], self.counts[start:end], self.expected[start:end]
        )


_FLOAT_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_inference_precision(
    name: str, device: torch.device, fidelity: quantize.Fidelity | None
) -> str:
    """The precision to run a model in: ``int8``, or a float one for :func:`autocast`.

    ``auto`` is int8 on a CPU when the model folder's int8 calibration is one train found
    faithful enough (``fidelity``, see :mod:`invmon.training.quantize`; int8 is the fastest there),
    else
    what :func:`invmon.training.device.resolve_precision` picks.
    """
    if name not in INFERENCE_PRECISIONS:
        raise ValueError(
            f"--precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {name!r}"
        )
    if name == "int8" and not quantize.int8_supported(device):
        raise ValueError(
            f"--precision int8 runs on a CPU with PyTorch's {quantize.ENGINE} quantized engine, "
            f"not on {device}; use bf16, fp16 or fp32"
        )
    faithful = fidelity is not None and fidelity.serves_int8
    if name == "auto" and faithful and quantize.int8_supported(device):
        return "int8"
    return name


def resolve_graph(name: str, device: torch.device) -> str:
    """The graph mode for ``name`` on ``device``: ``auto`` compiles on a CPU with a C++ compiler."""
    if name not in GRAPHS:
        raise ValueError(f"--graph must be one of {', '.join(GRAPHS)}, got {name!r}")
    if name != "auto":
        return name
    has_compiler = shutil.which(os.environ.get("CXX", "g++")) is not None
    return "compiled" if device.type == "cpu" and has_compiler else "frozen"


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` compiled by TorchInductor for inference, weights frozen and prepacked.

    The batch dimension is dynamic, so batches of any size share one compiled graph (batch size 1
    gets its own); the first call of each compiles, so warm the model up before serving.
    """
    import torch._inductor.config as inductor

    inductor.freezing = True
    return torch.compile(model, dynamic=True)


def frozen(model: torch.nn.Module, image_size: int, device: torch.device, dtype):
    """``model`` traced and frozen for inference at ``image_size`` in precision ``dtype``."""
    example = torch.zeros((2, 3, image_size, image_size), device=device)
    example = example.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.inference_mode(), autocast(device, dtype):
        # Tracing warns that autocast is recorded into the graph: that is the intent here.
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))


class Counter:
    """A loaded counting model that predicts on batches of preprocessed or encoded images."""

    def __init__(
        self, model, config: ModelConfig, device: torch.device, dtype, precision: str = "fp32"
    ):
        self.model, self.config, self.device, self.dtype = model, config, device, dtype
        self.precision = precision  # what the model runs in, for logs and reports
        self.class_counts = np.asarray(config.classes, dtype=np.int64)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        device: str = "auto",
        precision: str = "auto",
        freeze: bool = False,
        graph: str | None = None,
    ) -> Counter:
        """Load the model folder written by train.

        ``precision`` is one of :data:`INFERENCE_PRECISIONS` (see
        :func:`resolve_inference_precision`). ``graph`` says how a float model runs (see
        :data:`GRAPHS`): ``eager``; ``frozen``, a frozen TorchScript graph with batch norm folded
        into the convolutions and convolution + ReLU fused by oneDNN; or ``compiled`` by
        TorchInductor with frozen, prepacked weights, the fastest float graph on a CPU but seconds
        to compile and needing a C++ compiler (``auto`` picks it when one is there, else
        ``frozen``). ``freeze=True`` is ``graph="frozen"``. An int8 model
        always runs as the quantized FX graph. The figures are in docs/benchmarks.md.
        """
        torch_device = resolve_device(device)
        model, config = load_model(model_dir, torch_device)
        size = config.preprocessing.image_size
        graph = resolve_graph(graph or ("frozen" if freeze else "eager"), torch_device)
        calibration = (
            quantize.read_calibration(model_dir) if quantize.int8_supported(torch_device) else None
        )
        fidelity = quantize.Fidelity.from_state(calibration) if calibration is not None else None
        int8 = resolve_inference_precision(precision, torch_device, fidelity) == "int8"
        # An int8 model re-checks close calls with the float model, in the float precision
        # ``auto`` would pick (see invmon.training.quantize.RecheckedInt8).
        dtype = resolve_precision("auto" if int8 else precision, torch_device)
        int8_model = quantize.quantized(model, model_dir, calibration, size) if int8 else None
        if graph == "frozen":
            model = frozen(model, size, torch_device, dtype)
        elif graph == "compiled":
            model = compiled(model)
        if int8_model is not None:
            margin = fidelity.margin if fidelity is not None else 0.0
            model = quantize.RecheckedInt8(
                int8_model, model, margin, lambda: autocast(torch_device, dtype)
            )
            return cls(model, config, torch_device, None, precision="int8")
        return cls(model, config, torch_device, dtype, precision=_FLOAT_NAMES[dtype])

    @property
    def image_size(self) -> int:
        """The side of the square input the model was trained on."""
        return self.config.preprocessing.image_size

    @torch.inference_mode()
    def predict_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return float32 logits for a normalised float batch (N, 3, S, S)."""
        inputs = inputs.to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            return self.model(inputs).float()

    def predict_uint8(self, images: torch.Tensor | np.ndarray) -> Predictions:
        """Predict on a uint8 (N, 3, S, S) batch, as preprocess and :func:`prepare` produce."""
        batch = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
        inputs = normalize(batch.to(self.device), self.config.preprocessing)
        return self.predictions(self.predict_logits(inputs))

    def predict_bytes(
        self, encoded: Sequence[bytes], max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Predictions:
        """Decode, resize and predict a batch of encoded images (raises InvalidImage)."""
        arrays = [prepare(data, self.image_size, max_pixels) for data in encoded]
        return self.predict_uint8(np.stack(arrays))

    def to_inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """Model input on the device: uint8 images normalised, float tensors as they are."""
        if batch.dtype == torch.uint8:
            return normalize(batch.to(self.device), self.config.preprocessing)
        return batch.to(self.device, torch.float32)

    def predict_many(self, batches: Sequence[torch.Tensor]) -> list[Predictions]:
        """Run the inputs of several requests as one forward pass; one Predictions per request.

        Each batch is uint8 images or normalised float tensors, (N, 3, S, S).
        """
        inputs = torch.cat([self.to_inputs(b) for b in batches])
        whole = self.predictions(self.predict_logits(inputs))
        bounds = np.cumsum([0] + [len(b) for b in batches])
        return [whole.rows(start, end) for start, end in itertools.pairwise(bounds)]

    def warm_up(self, batch_sizes: Sequence[int] = (1, 4)) -> None:
        """Run the model once per batch size, so the first requests do not pay for setup."""
        size = self.image_size
        for n in batch_sizes:
            batch = torch.zeros((n, 3, size, size), dtype=torch.uint8)
            self.predict_many([batch])
            if isinstance(self.model, quantize.RecheckedInt8):  # its float model, too
                with torch.inference_mode():
                    self.model.warm_up(self.to_inputs(batch))
        if isinstance(self.model, quantize.RecheckedInt8):
            self.model.images = self.model.rechecked = 0  # count requests only

    def predictions(self, logits: torch.Tensor) -> Predictions:
        """Turn logits into counts, probabilities and expected counts."""
        probabilities = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
        counts = self.class_counts[probabilities.argmax(axis=1)]
        expected = probabilities @ self.class_counts.astype(np.float32)
        return Predictions(probabilities, counts, expected)
