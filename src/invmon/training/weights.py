"""Pretrained backbone weights from torchvision, a local file, or an S3 object.

Air-gapped clusters keep the ImageNet weights in their own store, so ``--weights`` takes a path or
an ``s3://`` URI as well as ``imagenet``. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from invmon.data.s3 import S3Uri, is_s3_uri, make_client


def load_state_dict(source: str, endpoint_url: str | None = None) -> dict:
    """Return a ResNet50 state dict from ``imagenet``, a local path or an ``s3://`` URI."""
    if source == "imagenet":
        import torchvision

        try:
            return torchvision.models.ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
        except OSError as err:
            raise ValueError(
                "--weights imagenet: could not download torchvision's ResNet50 weights "
                f"({err}); pass a local path or an s3:// URI to the weights file instead"
            ) from err
    if is_s3_uri(source):
        uri = S3Uri.parse(source)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "weights.pth"
            make_client(endpoint_url).download_file(uri.bucket, uri.prefix, str(path))
            return _read(path, source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(
            f"--weights {source!r}: no such file (allowed: none, imagenet, a path or an s3:// URI)"
        )
    return _read(path, source)


def _read(path: Path, source: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for files that are not state dicts
        raise ValueError(f"--weights {source!r} is not a loadable weights file: {err}") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint rather than a bare state dict
    if not isinstance(state, dict):
        raise ValueError(f"--weights {source!r} does not hold a state dict")
    return state
