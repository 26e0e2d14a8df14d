"""The container images the pipeline runs, and which stage runs in which.

Each image is built from ``images/<name>/Dockerfile``; ``invmon compile`` writes these references
into the pipeline YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

from invmon.core.settings import Settings, setting

DEFAULT_REGISTRY = "ghcr.io/inventory-monitoring"
DEFAULT_TAG = "0.1.0"
IMAGE_NAMES = ("data", "train", "serve", "engine")
# CPU stages share the data image; everything that runs the model on a GPU uses the train image
# (CUDA PyTorch); deploy needs KServe.
STAGE_IMAGES = {
    "ingest": "data",
    "arrange": "data",
    "preprocess": "data",
    "tune": "train",
    "train": "train",
    "evaluate": "train",
    "audit": "train",
    "deploy": "serve",
    # Builds the serving engine: the serving image's torch, with a C++ compiler.
    "prebuild": "engine",
    # A REST client only: the light CPU image.
    "register": "data",
}


@dataclass(frozen=True)
class ImageSet(Settings):
    """Where the project's images live: ``<registry>/invmon-<name>:<tag>``."""

    registry: str = setting(DEFAULT_REGISTRY, help="image registry")
    tag: str = setting(DEFAULT_TAG, help="image tag")

    def image(self, name: str) -> str:
        """The reference of image ``name`` (one of :data:`IMAGE_NAMES`)."""
        if name not in IMAGE_NAMES:
            raise ValueError(f"unknown image {name!r} (allowed: {', '.join(IMAGE_NAMES)})")
        return f"{self.registry.rstrip('/')}/invmon-{name}:{self.tag}"

    def for_stage(self, stage: str) -> str:
        """The image a pipeline stage runs in."""
        if stage not in STAGE_IMAGES:
            raise ValueError(f"unknown stage {stage!r} (allowed: {', '.join(STAGE_IMAGES)})")
        return self.image(STAGE_IMAGES[stage])


DEFAULT_IMAGES = ImageSet()
