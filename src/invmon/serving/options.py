"""The serving options, defined once for ``invmon serve`` and the serving image's entry point.

:class:`ServeSettings` is the only definition of what a predictor can be told: its fields derive
``invmon serve``'s options and, on top of KServe's own parser, the serving image's
(``python -m invmon.serving``). The image keeps KServe's flags (``--http_port``, ``--model_name``,
``--workers``, ...) instead of the port and name fields, and accepts the snake_case spellings
KServe's flags use (``--model_dir``, ``--max_images``), which InferenceServices pass.

This module imports neither PyTorch nor KServe, so a command's help is quick to build.
"""

from __future__ import annotations

from dataclasses import dataclass

from invmon.core.settings import Settings, setting
from invmon.data.transforms import DEFAULT_MAX_PIXELS
from invmon.serving.client import DEFAULT_MODEL_NAME
from invmon.training.device import INFERENCE_PRECISIONS

GRAPHS = ("auto", "eager", "frozen", "compiled")
LOADS = ("staged", "blocking")
PREBUILT = ("auto", "off")


@dataclass(frozen=True)
class Limits(Settings):
    """What one request may contain."""

    max_images: int = setting(
        64, help="most images in one request", minimum=1, aliases=("--max_images",)
    )
    # An ABID photo is about 57 KB; 10 MB leaves room for large PNGs from other cameras.
    max_image_bytes: int = setting(
        10 * 1024 * 1024,
        help="largest encoded image in bytes",
        minimum=1,
        aliases=("--max_image_bytes",),
    )
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        help="largest image in pixels (checked before decoding)",
        minimum=1,
        aliases=("--max_pixels",),
    )

    @property
    def max_request_bytes(self) -> int:
        """The largest request body worth reading: every image at its limit, base64-encoded."""
        return self.max_images * (self.max_image_bytes * 4 // 3 + 1024) + 1024 * 1024


@dataclass(frozen=True)
class ServingOptions(Settings):
    """How the predictor runs the model."""

    device: str = setting("auto", help="auto, cpu, cuda or cuda:N")
    precision: str = setting(
        "auto",
        choices=INFERENCE_PRECISIONS,
        help="auto: int8 on a CPU when train found the model folder's int8 calibration faithful "
        "(docs/training.md), else bf16 where the device runs it natively, else fp32",
    )
    graph: str = setting(
        "auto",
        choices=GRAPHS,
        help="how a float model runs: auto (compiled on a CPU with a C++ compiler, else "
        "frozen), compiled, frozen or eager",
    )
    load: str = setting(
        "staged",
        choices=LOADS,
        help="staged: ready within seconds on the eager float model, the int8 or compiled model "
        "built in the background and swapped in once warm (docs/serving.md); blocking: ready "
        "only once the final model is built (every answer from it, as tests that compare exact "
        "answers need)",
    )
    prebuilt: str = setting(
        "auto",
        choices=PREBUILT,
        help="auto: serve the engine prebuilt into the model folder (--prebuild) from the start "
        "when its manifest is signed with INVMON_ENGINE_KEY, fits this model, torch, CPU and "
        "precision, and the package hashes to it, else build as without one "
        "(docs/serving.md); off: never open a prebuilt package",
    )
    max_batch_images: int = setting(
        32,
        help="most images per model batch when concurrent requests are grouped (1 turns "
        "grouping off)",
        minimum=1,
        aliases=("--max_batch_images",),
    )
    decode_threads: int = setting(
        0,
        help="threads decoding images (0: one per CPU core)",
        minimum=0,
        aliases=("--decode_threads",),
    )


def largest_batch(options: ServingOptions, limits: Limits) -> int:
    """The most images the batcher puts in one batch: requests are grouped up to
    ``max_batch_images``, but one request is never split, so a request of up to ``max_images``
    images runs as one batch of its own. A compiled or prebuilt engine is made for every size up
    to it."""
    return max(options.max_batch_images, limits.max_images)


# The environment variable holding the secret that signs and verifies prebuilt engines
# (invmon.serving.prebuilt); here, where the cluster code that passes it to pods can import it
# without PyTorch.
ENGINE_KEY_ENV = "INVMON_ENGINE_KEY"

# The fields KServe's parser owns in the serving image, and its flag for each.
KSERVE_FLAGS = {"port": "http_port", "name": "model_name"}


@dataclass(frozen=True)
class ServeSettings(Settings):
    """Settings of serve: a model folder behind KServe's ModelServer (V1 and V2 REST)."""

    model: str = setting(help="model folder (from train)", aliases=("--model_dir",))
    port: int = setting(8080, help="HTTP port", minimum=1)
    name: str = setting(DEFAULT_MODEL_NAME, help="model name in URLs")
    options: ServingOptions = setting(default_factory=ServingOptions, group="how the model runs")
    prebuild: bool = setting(
        False,
        help="build the serving engine ahead of time into the model folder's engine/ "
        "(minutes; once per model, torch version and CPU kind) and exit instead of serving",
    )
    limits: Limits = setting(default_factory=Limits, group="request limits")
