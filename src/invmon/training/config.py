"""The training recipe: every setting of a training run, as one settings dataclass.

:class:`TrainConfig` is the only definition of the training options. ``invmon train`` and
``invmon tune`` derive their recipe options from its fields (through
:func:`invmon.core.settings.add_options`), Katib trials and TrainJob nodes get the options that
reproduce a config from :func:`invmon.core.settings.to_flags`, a checkpoint records it, and a model
folder keeps it. Adding a training option is adding a field here.

A recipe sets the defaults of some fields: ``default`` is this project's (Adam with warmup and
cosine decay); ``original`` is the original project's (Adam at a constant rate, nothing else).
What a search chose (``best.json``) and what is given explicitly override the recipe, in that
order (:func:`recipe_config`).

This module imports no PyTorch, so that building a command line stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from invmon.core.settings import Settings, overrides_of, setting, share

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# fp64 is a reference precision for numerical checks (the DDP equivalence test): at ResNet50's
# initialisation, fp32 rounding alone moves some gradients by tens of percent, which would hide a
# real difference between one process and N.
TRAIN_PRECISIONS = (*PRECISIONS, "fp64")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
CLASS_WEIGHTS = ("none", "balanced")
RECIPES = ("default", "original")
# Hyperparameters that a search may choose (the keys of best.json); each is a train option.
TUNABLE = (
    "lr",
    "batch_size",
    "epochs",
    "weight_decay",
    "label_smoothing",
    "warmup_fraction",
    "head_dropout",
)
# Settings that may differ between a run and the run it resumes: where it runs, not what it does.
RESUMABLE_DIFFERENCES = ("device", "compile")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Every setting of a training run; saved with the model it produces."""

    lr: float = setting(2e-3, help="learning rate", above=0)
    batch_size: int = setting(32, help="global batch size (all processes together)", minimum=1)
    epochs: int = setting(10, help="epochs", minimum=1)
    optimizer: str = setting(
        "adam", help="adam (the original), adamw or sgd with Nesterov momentum", choices=OPTIMIZERS
    )
    weight_decay: float = setting(0.0, help="weight decay", minimum=0)
    schedule: str = setting("cosine", help="learning-rate schedule", choices=SCHEDULES)
    warmup_fraction: float = share(0.1, help="share of steps warming up")
    label_smoothing: float = share(0.0, help="label smoothing")
    class_weights: str = setting(
        "none", help="balanced: weigh classes by inverse frequency", choices=CLASS_WEIGHTS
    )
    early_stopping_patience: int = setting(
        0,
        help="stop after this many epochs without a better validation accuracy and keep the "
        "best epoch's weights (0: off)",
        minimum=0,
    )
    head_hidden: int = setting(256, help="units in the head's hidden layer", minimum=1)
    head_dropout: float = share(0.0, help="dropout in the head")
    weights: str = setting(
        "none", help="backbone start: none, imagenet, a path or an s3:// URI of ResNet50 weights"
    )
    init_model: str = setting(
        "",
        help="starting model of a retrain round, a model folder or s3:// URI: fine-tune it "
        "instead of training from scratch (its classes, image size and head must match; "
        "empty: none)",
    )
    fine_tune_lr_scale: float = setting(
        0.1,
        help="with --init-model, the learning rate is multiplied by this: a trained model "
        "fine-tuned at the rate it was trained from scratch with loses accuracy",
        above=0,
    )
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N")
    precision: str = setting(
        "auto",
        help="auto uses bf16 where the device runs it natively; fp16 scales the loss; fp64 is "
        "a slow reference for numerical checks",
        choices=TRAIN_PRECISIONS,
    )
    channels_last: bool = setting(True, help="keep tensors in NCHW layout")
    compile: bool = setting(False, help="compile the model with torch.compile")
    sync_batchnorm: bool = setting(
        True, help="under torchrun, keep batch-norm statistics per process"
    )
    seed: int = setting(0, help="random seed of the run")

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Rebuild from :func:`dataclasses.asdict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown} (allowed: {sorted(known)})")
        return cls(**data)

    def to_dict(self) -> dict:
        """A JSON-serialisable form (what checkpoints and model folders record)."""
        return asdict(self)

    @property
    def start_lr(self) -> float:
        """The learning rate the optimizer is built with: ``lr``, times ``fine_tune_lr_scale`` in
        a retrain round (``init_model``). Two epochs at a searched from-scratch rate of 4.25e-3
        took a converged model 8.6 points down; at a tenth of it, 1.4-1.7 (docs/recount.md)."""
        return self.lr * self.fine_tune_lr_scale if self.init_model else self.lr


# The recipe options of train and tune: TrainConfig's fields, each None unless given, so that a
# given one overrides the recipe and the search's choice.
TrainOverrides = overrides_of(TrainConfig)


@dataclass(frozen=True)
class RecipeChoice(Settings):
    """Which recipe sets a run's defaults: train's, and every tune trial's (so that the search
    tunes the recipe the final training uses). The one definition both stages inherit."""

    recipe: str = setting(
        "default",
        help="default: warmup + cosine decay; original: the original project's Adam at a "
        "constant rate",
        choices=RECIPES,
    )


def original_recipe(config: TrainConfig | None = None) -> TrainConfig:
    """The original project's recipe: Adam at a constant learning rate, no other technique."""
    return (config or TrainConfig()).replace(
        optimizer="adam",
        weight_decay=0.0,
        schedule="constant",
        warmup_fraction=0.0,
        label_smoothing=0.0,
        class_weights="none",
        early_stopping_patience=0,
    )


def recipe_config(recipe: str, *overrides: dict) -> TrainConfig:
    """The config of ``recipe`` with ``overrides`` applied in order (later ones win).

    Settings a recipe does not touch (weights, device, seed, ...) are plain overrides too.
    """
    if recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    config = original_recipe() if recipe == "original" else TrainConfig()
    changes = {}
    for layer in overrides:
        changes.update(layer or {})
    return config.replace(**changes)


def read_params(path: str | Path) -> dict:
    """Read a best-hyperparameters JSON (tune's output) and keep the tunable keys."""
    data = json.loads(Path(path).read_text())
    params = data.get("parameters", data)
    unknown = sorted(set(params) - set(TUNABLE))
    if unknown:
        raise ValueError(f"{path}: unknown hyperparameters {unknown} (allowed: {list(TUNABLE)})")
    return {name: coerce_param(name, value) for name, value in params.items()}


def coerce_param(name: str, value) -> int | float:
    """Turn a searched value (Katib passes strings) into the type of the TrainConfig field."""
    if name not in TUNABLE:
        raise ValueError(f"{name!r} is not a tunable hyperparameter (allowed: {list(TUNABLE)})")
    kind = {f.name: f.type for f in fields(TrainConfig)}[name]
    try:
        return int(float(value)) if kind == "int" else float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"hyperparameter {name}: {value!r} is not a number") from err
