"""The one image preprocessing definition, shared by preprocess, train, evaluate and serve.

An image goes through two steps:

1. :func:`prepare` (CPU, once per image): decode the encoded bytes and resize the whole photo to a
   square ``image_size`` x ``image_size`` uint8 RGB array. The whole bin is kept (no crop), because
   an item cut off at the edge would change the count. JPEGs are decoded at a reduced DCT scale
   when the target is much smaller than the photo, which is several times faster than a full decode
   and what makes serving and preprocessing cheap.
2. :func:`normalize` (on the training/inference device, per batch): uint8 -> float, scaled by the
   ImageNet mean and standard deviation the ResNet50 weights expect.

The :class:`Preprocessing` settings are saved in the model folder, so a predictor rebuilds exactly
the preprocessing the model was trained with.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from invmon.core.settings import Settings, setting

if TYPE_CHECKING:  # torch is imported where batches are normalised, not by decoding workers
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ALLOWED_FORMATS = ("JPEG", "PNG")
_JPEG_END = b"\xff\xd9"
# An ABID photo has about 0.16 megapixels; anything above this is refused before decoding.
DEFAULT_MAX_PIXELS = 40_000_000


class InvalidImage(ValueError):
    """Bytes that are not a decodable, complete image of an allowed format and size."""


@dataclass(frozen=True)
class Preprocessing(Settings):
    """Settings of the shared preprocessing; saved with every model. The image size is the one
    definition that preprocess, the pipeline and its component inherit."""

    image_size: int = setting(
        224, help="side of the square model input in pixels", minimum=16, maximum=1024
    )
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            image_size=int(data["image_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open encoded image bytes lazily, checking format and size before any pixel is decoded."""
    if not data:
        raise InvalidImage("empty image data")
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as err:
        raise InvalidImage(f"not a recognised image ({len(data)} bytes)") from err
    if image.format not in ALLOWED_FORMATS:
        raise InvalidImage(f"image format {image.format} is not allowed (allowed: JPEG, PNG)")
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    return image


def prepare(data: bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes and resize the whole photo to ``image_size``; return uint8 (3, S, S).

    Raises InvalidImage for anything that is not a complete JPEG or PNG within ``max_pixels``.
    """
    image = open_image(data, max_pixels)
    try:
        if image.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying >= 2x the target size,
            # so the antialiased resize below still sees enough pixels.
            image.draft("RGB", (image_size * 2, image_size * 2))
        image = image.convert("RGB")
        image = image.resize((image_size, image_size), Image.BILINEAR, reducing_gap=None)
        array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InvalidImage(f"image could not be decoded: {err}") from err
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def normalize(batch: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Turn a uint8 (N, 3, S, S) batch into the float input the model expects, on its device."""
    import torch

    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(
            f"expected a uint8 batch of shape (N, 3, S, S), got {batch.dtype} {tuple(batch.shape)}"
        )
    mean = torch.tensor(preprocessing.mean, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(preprocessing.std, device=batch.device).view(1, 3, 1, 1) * 255
    out = (batch.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last)


class ImageProblem(ValueError):
    """An image file that preprocess could not use."""


def check_image(path: Path) -> tuple[int, int, int]:
    """Return ``(width, height, bytes)`` of an image file, reading only its header and end.

    Raises ImageProblem when it is not a JPEG or PNG, its header does not read, or a JPEG does not
    end with the end-of-image marker (the usual sign of a cut-off file).
    """
    size = path.stat().st_size
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageProblem(f"unreadable image ({size} bytes): {err}") from err
    if kind not in ALLOWED_FORMATS:
        raise ImageProblem(f"image format {kind} is not allowed (allowed: JPEG, PNG)")
    if kind == "JPEG":
        with open(path, "rb") as handle:
            handle.seek(max(0, size - 2))
            if handle.read(2) != _JPEG_END:
                raise ImageProblem(f"truncated JPEG: {size} bytes without the end-of-image marker")
    return width, height, size
