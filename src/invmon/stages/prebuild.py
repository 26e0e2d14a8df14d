"""Prebuild: the serving engine built ahead of time, for predictors at full speed from the start.

A copy of the model folder with ``engine/`` added (:mod:`invmon.serving.prebuilt`: an AOTInductor
package and its signed manifest), built for the batches the predictor forms with its default
options. In the pipeline it runs before deploy, in the engine image (the serving image's PyTorch
with a C++ compiler) on the kind of node the predictor runs on, since the package is specific to
the CPU capability and the torch version; a predictor on another kind of CPU refuses the package
and compiles in the background as without one. It needs ``INVMON_ENGINE_KEY``, the secret the
predictors verify the engine with (from a Kubernetes Secret on a cluster).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from invmon.core.command import Command
from invmon.core.settings import Settings, setting
from invmon.serving.options import Limits, ServingOptions, largest_batch

# The largest batch a predictor with the default serving options forms (what deploy serves).
DEFAULT_LARGEST_BATCH = largest_batch(ServingOptions(), Limits())


@dataclass(frozen=True)
class PrebuildSettings(Settings):
    """Settings of prebuild."""

    model: str = setting(help="model folder (from train)")
    out: str = setting(
        "", help="folder for the model with its engine (empty: build into the model folder)"
    )
    largest_batch: int = setting(
        DEFAULT_LARGEST_BATCH,
        help="largest batch the engine runs: the predictor's --max-batch-images or --max-images, "
        "whichever is larger (a predictor that forms larger batches refuses the engine)",
        minimum=1,
    )
    precision: str = setting(
        "auto",
        choices=("auto", "fp32", "bf16"),
        help="precision of the engine: auto is what a predictor with --precision auto runs its "
        "float model in on this CPU (bf16 where it is native, else fp32); a predictor serving "
        "another precision refuses the engine",
    )


def run(settings: PrebuildSettings) -> Path:
    """Build the engine into ``settings.out`` (a copy of the model folder) or into the model
    folder itself; return the folder that holds the model and its engine."""
    from invmon.serving import prebuilt
    from invmon.training.model import read_config, weights_path

    prebuilt.required_key()  # before anything is copied
    model = Path(settings.model)
    read_config(model)  # a folder that is not a model fails here, naming it
    weights_path(model)
    folder = Path(settings.out) if settings.out else model
    if folder.resolve() != model.resolve():
        # An engine already in the source is not copied: it is built again for this node.
        ignore = shutil.ignore_patterns(prebuilt.ENGINE_DIR)
        shutil.copytree(model, folder, ignore=ignore, dirs_exist_ok=True)
    largest = settings.largest_batch
    precision = prebuilt.float_precision(settings.precision)
    print(
        f"building the {precision} serving engine for batches of 1 to {largest} (minutes)",
        flush=True,
    )
    engine = prebuilt.build(folder, largest, precision)
    print(f"written: {engine}", flush=True)
    return folder


PREBUILD = Command(
    PrebuildSettings,
    run,
    description="Build the serving engine ahead of time (an AOTInductor package, signed with "
    "$INVMON_ENGINE_KEY) into a model folder or a copy of it, so that predictors on this kind of "
    "CPU serve at full speed from the start.",
)
