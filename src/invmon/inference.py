"""Batch inference with a trained model: the code evaluate, serve and audit share.

:class:`Counter` wraps the one model loader (:func:`invmon.model.load_model`) and the one
preprocessing (:mod:`invmon.transforms`) and turns uint8 image batches into counts, class
probabilities and expected counts.
"""

from __future__ import annotations

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


class Counter:
    """A loaded counting model that predicts on batches of preprocessed or encoded images."""

    def __init__(self, model, config: ModelConfig, device: torch.device, dtype):
        self.model, self.config, self.device, self.dtype = model, config, device, dtype
        self.class_counts = np.asarray(config.classes, dtype=np.int64)

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, device: str = "auto", precision: str = "auto"
    ) -> Counter:
        """Load the model folder written by train."""
        torch_device = resolve_device(device)
        model, config = load_model(model_dir, torch_device)
        return cls(model, config, torch_device, resolve_precision(precision, torch_device))

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

    def predictions(self, logits: torch.Tensor) -> Predictions:
        """Turn logits into counts, probabilities and expected counts."""
        probabilities = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
        counts = self.class_counts[probabilities.argmax(axis=1)]
        expected = probabilities @ self.class_counts.astype(np.float32)
        return Predictions(probabilities, counts, expected)
