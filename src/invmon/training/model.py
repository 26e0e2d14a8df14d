"""The counting model and the one loader used by evaluate, serve, predict and audit.

A model folder holds exactly two files:

- ``weights.pt``: the state dict, loaded with ``torch.load(weights_only=True)`` so that opening a
  model file never executes code;
- ``config.json``: a :class:`ModelConfig` (architecture, head, classes, preprocessing, and how it
  was trained) which is all a predictor needs to rebuild the model and its input pipeline.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from invmon.data.transforms import Preprocessing

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
ARCHITECTURES = ("resnet50",)
WEIGHT_SOURCES = "none, imagenet, a local path or an s3:// URI"


class ModelNotFound(FileNotFoundError):
    """A model folder without its weights or config."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a trained model and its preprocessing."""

    classes: tuple[int, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    architecture: str = "resnet50"
    head_hidden: int = 256
    head_dropout: float = 0.0
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture {self.architecture!r} is not supported (allowed: {ARCHITECTURES})"
            )
        if len(self.classes) < 2:
            raise ValueError(f"a model needs at least two classes, got {self.classes}")

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            classes=tuple(int(c) for c in data["classes"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            architecture=data.get("architecture", "resnet50"),
            head_hidden=int(data.get("head_hidden", 256)),
            head_dropout=float(data.get("head_dropout", 0.0)),
            training=dict(data.get("training", {})),
        )


def build_model(config: ModelConfig) -> nn.Module:
    """Return a ResNet50 whose classifier is the original project's two-layer head.

    The backbone starts from random weights; :func:`load_backbone_weights` puts pretrained ones in.
    """
    # Imported here, not at the top: importing torchvision imports torch._dynamo and TorchInductor
    # (through torchvision.ops), about 2 s that a predictor running a prebuilt engine never needs.
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Sequential(
        nn.Linear(model.fc.in_features, config.head_hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(config.head_dropout),
        nn.Linear(config.head_hidden, len(config.classes)),
    )
    return model


def load_backbone_weights(model: nn.Module, state_dict: dict) -> list[str]:
    """Copy pretrained backbone weights into ``model``, leaving the new head as it is.

    Returns the names of backbone parameters that were not in ``state_dict`` (empty when all
    matched); raises ValueError when nothing matched, which means the file is not a ResNet50.
    """
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    missing, _unexpected = model.load_state_dict(backbone, strict=False)
    missing_backbone = [k for k in missing if not k.startswith("fc.")]
    if len(missing_backbone) == len([k for k in model.state_dict() if not k.startswith("fc.")]):
        raise ValueError("the weights file has no ResNet50 backbone parameters")
    return missing_backbone


def save_model(model: nn.Module, config: ModelConfig, out_dir: str | Path) -> Path:
    """Write ``weights.pt`` and ``config.json`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _atomic_torch_save(state, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return out


def _atomic_torch_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_config(model_dir: str | Path) -> ModelConfig:
    """Read a model folder's config; raise ModelNotFound naming the folder when absent."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelNotFound(f"no {CONFIG_FILE} in model folder {str(model_dir)!r}")
    return ModelConfig.from_dict(json.loads(path.read_text()))


def weights_path(model_dir: str | Path) -> Path:
    """A model folder's weights file; raise ModelNotFound naming the folder when absent."""
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelNotFound(f"no {WEIGHTS_FILE} in model folder {str(model_dir)!r}")
    return weights


def load_model(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Load a model folder written by :func:`save_model`, in eval mode, on ``device``.

    The weights are read with ``weights_only=True``: a model file cannot run code when opened.
    """
    config = read_config(model_dir)
    weights = weights_path(model_dir)
    model = build_model(config)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model = model.to(device).to(memory_format=torch.channels_last)
    model.eval()
    return model, config
