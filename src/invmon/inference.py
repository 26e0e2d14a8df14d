"""Batch inference with a trained model: the code evaluate, serve and audit share.

:class:`Counter` wraps the one model loader (:func:`invmon.model.load_model`) and the one
preprocessing (:mod:`invmon.transforms`) and turns uint8 image batches into counts, class
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

from invmon.device import autocast, resolve_device, resolve_precision
from invmon.model import ModelConfig, load_model
from invmon.transforms import DEFAULT_MAX_PIXELS, normalize, prepare


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


GRAPHS = ("auto", "eager", "frozen", "compiled")


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

    def __init__(self, model, config: ModelConfig, device: torch.device, dtype):
        self.model, self.config, self.device, self.dtype = model, config, device, dtype
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

        ``graph`` says how the model runs (see :data:`GRAPHS`): ``eager``; ``frozen``, a frozen
        TorchScript graph with batch norm folded into the convolutions and convolution + ReLU
        fused by oneDNN; or ``compiled`` by TorchInductor with frozen, prepacked weights, the
        fastest on a CPU but seconds to compile and needing a C++ compiler (``auto`` picks it
        when one is there, else ``frozen``). ``freeze=True`` is ``graph="frozen"``. The figures
        are in docs/benchmarks.md.
        """
        torch_device = resolve_device(device)
        model, config = load_model(model_dir, torch_device)
        dtype = resolve_precision(precision, torch_device)
        graph = resolve_graph(graph or ("frozen" if freeze else "eager"), torch_device)
        if graph == "frozen":
            model = frozen(model, config.preprocessing.image_size, torch_device, dtype)
        elif graph == "compiled":
            model = compiled(model)
        return cls(model, config, torch_device, dtype)

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
            self.predict_many([torch.zeros((n, 3, size, size), dtype=torch.uint8)])

    def predictions(self, logits: torch.Tensor) -> Predictions:
        """Turn logits into counts, probabilities and expected counts."""
        probabilities = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
        counts = self.class_counts[probabilities.argmax(axis=1)]
        expected = probabilities @ self.class_counts.astype(np.float32)
        return Predictions(probabilities, counts, expected)
