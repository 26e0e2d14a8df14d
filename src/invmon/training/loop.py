"""Train: a ResNet50 with the original two-layer head, fitted on preprocessed shards.

The loop is split into verbs, as in torchvision's classification recipe: :func:`train_one_epoch`,
:func:`evaluate_split` and :func:`fit`, with the pieces of a run built by :func:`build_optimizer`,
:func:`make_scheduler` and :func:`make_loss`. Tune reuses :func:`fit` through its ``on_epoch`` hook
instead of copying the loop.

The same command trains in one process or in N under ``torchrun`` (DistributedDataParallel, NCCL
on GPUs, gloo on CPU): each process trains on its share of every global batch of ``batch_size``
images, so N processes compute what one process computes. Only rank 0 prints, checkpoints and
writes the model.

After each epoch, rank 0 writes a checkpoint (see :mod:`invmon.training.checkpoint`) and prints one
line of
``name=value`` metrics preceded by an RFC 3339 timestamp, the format Katib's StdOut metrics
collector parses with its default filter::

    2026-01-05T10:00:00.000000Z epoch=3 loss=0.5200 accuracy=0.8100 val_loss=0.6000 ...

``accuracy`` is validation accuracy, the search objective.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from invmon.data.shards import BatchLoader, DatasetIndex, LoaderOptions, ShardedSplit
from invmon.data.transforms import normalize
from invmon.training import distributed
from invmon.training.checkpoint import CheckpointStore
from invmon.training.device import (
    PRECISIONS,
    autocast,
    grad_scaler,
    resolve_device,
    resolve_precision,
)
from invmon.training.model import ModelConfig, build_model, load_backbone_weights, save_model
from invmon.training.weights import load_state_dict

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "step", "constant")
# fp64 is a reference precision for numerical checks (the DDP equivalence test): at ResNet50's
# initialisation, fp32 rounding alone moves some gradients by tens of percent, which would hide a
# real difference between one process and N.
TRAIN_PRECISIONS = (*PRECISIONS, "fp64")
OPTIMIZERS = ("adam", "adamw", "sgd")
CLASS_WEIGHTS = ("none", "balanced")
HISTORY_FILE = "history.json"
# Hyperparameters that a search may choose (the keys of best.json); each is a train flag
# (``lr`` -> ``--lr``, ``batch_size`` -> ``--batch-size``).
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
# Metrics printed per epoch, in order (Katib collects the ones an Experiment names).
METRIC_NAMES = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "train_accuracy",
    "images_per_second",
    "seconds",
)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; saved with the model it produces.

    The defaults are this project's recipe (Adam with warmup and cosine decay). The original
    project's recipe is :func:`original_recipe`: Adam at a constant rate, nothing else.
    """

    lr: float = 2e-3
    batch_size: int = 32
    epochs: int = 10
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.0
    class_weights: str = "none"
    early_stopping_patience: int = 0
    head_hidden: int = 256
    head_dropout: float = 0.0
    weights: str = "none"
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    sync_batchnorm: bool = True
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.optimizer in OPTIMIZERS, _choice("--optimizer", self.optimizer, OPTIMIZERS)),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.schedule in SCHEDULES, _choice("--schedule", self.schedule, SCHEDULES)),
            (
                0 <= self.warmup_fraction < 1,
                f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}",
            ),
            (
                0 <= self.label_smoothing < 1,
                f"--label-smoothing must be in [0, 1), got {self.label_smoothing}",
            ),
            (
                self.class_weights in CLASS_WEIGHTS,
                _choice("--class-weights", self.class_weights, CLASS_WEIGHTS),
            ),
            (
                self.early_stopping_patience >= 0,
                f"--early-stopping-patience must be >= 0, got {self.early_stopping_patience}",
            ),
            (self.head_hidden >= 1, f"--head-hidden must be >= 1, got {self.head_hidden}"),
            (
                self.precision in TRAIN_PRECISIONS,
                _choice("--precision", self.precision, TRAIN_PRECISIONS),
            ),
            (
                0 <= self.head_dropout < 1,
                f"--head-dropout must be in [0, 1), got {self.head_dropout}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def replace(self, **changes) -> TrainConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return TrainConfig(**{**asdict(self), **changes})

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Rebuild from :func:`dataclasses.asdict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown} (allowed: {sorted(known)})")
        return cls(**data)


def _choice(flag: str, value, allowed) -> str:
    return f"{flag} must be one of {', '.join(allowed)}, got {value!r}"


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


# Boolean settings whose flag switches them off (``--no-channels-last``) or on (``--compile``).
_OFF_FLAGS = ("channels_last", "sync_batchnorm")
_ON_FLAGS = ("compile",)


def flag_name(setting: str) -> str:
    """The train command's option for a TrainConfig field (``batch_size`` -> ``--batch-size``)."""
    return "--" + setting.replace("_", "-")


def to_flags(config: TrainConfig, skip: tuple[str, ...] = ()) -> list[str]:
    """The train command's options that reproduce ``config`` (settings at their default omitted).

    Katib trials and TrainJobs run ``invmon train`` with these, so a remote run trains with the
    recipe the caller configured.
    """
    default = TrainConfig()
    flags: list[str] = []
    for name in (f.name for f in fields(TrainConfig)):
        value = getattr(config, name)
        if name in skip or value == getattr(default, name):
            continue
        if name in _OFF_FLAGS:
            flags.append(f"--no-{flag_name(name)[2:]}")
        elif name in _ON_FLAGS:
            flags.append(flag_name(name))
        else:
            flags += [flag_name(name), str(value)]
    return flags


RECIPES = ("default", "original")


def recipe_config(recipe: str, params: dict | None = None, **settings) -> TrainConfig:
    """The config of ``recipe`` with run ``settings`` (weights, device, seed, ...) and then the
    searched ``params`` applied."""
    if recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    config = TrainConfig(**settings)
    if recipe == "original":
        config = original_recipe(config)
    return config.replace(**(params or {}))


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


@dataclass
class EpochResult:
    """Metrics of one epoch."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    train_accuracy: float
    images_per_second: float
    seconds: float


@dataclass
class TrainResult:
    """What :func:`fit` returns."""

    config: TrainConfig
    history: list[EpochResult] = field(default_factory=list)
    model_dir: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def best_accuracy(self) -> float:
        """The best validation accuracy over the epochs."""
        return max((e.accuracy for e in self.history), default=0.0)


def print_metrics(result: EpochResult, stream=None, now: datetime.datetime | None = None) -> None:
    """Print an epoch's metrics as one timestamped line of ``name=value`` pairs.

    Katib's StdOut collector reads the leading RFC 3339 timestamp as the time of the observation
    and every ``name=value`` pair with its default filter.
    """
    stream = stream or sys.stdout
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stamp = now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pairs = [
        f"{name}={value}" if name == "epoch" else f"{name}={value:.4f}"
        for name, value in ((n, getattr(result, n)) for n in METRIC_NAMES)
    ]
    stream.write(f"{stamp} {' '.join(pairs)}\n")
    stream.flush()


# -- the pieces of a run ---------------------------------------------------------------------


def build_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the original), AdamW (decoupled weight decay) or SGD with Nesterov momentum."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )


def schedule_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier per optimizer step.

    A linear warmup over ``warmup_fraction`` of all steps, then cosine decay to zero, or steps of
    x0.1 at 50 % and 75 % of training, or a constant rate (the original recipe; no warmup unless
    asked for).
    """
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(total * config.warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if config.schedule == "step":
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 1.0

    return factor


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """A per-step LambdaLR following :func:`schedule_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(config, steps_per_epoch))


def class_weights(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (``n / (k * n_c)``), so each class counts as much in the loss.

    A class absent from the training split gets weight 0 (it never appears as a target).
    """
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(
    config: TrainConfig,
    train_split: ShardedSplit,
    num_classes: int,
    device,
    dtype: torch.dtype = torch.float32,
):
    """Per-image cross-entropy with the run's label smoothing and class weights.

    Returns ``(loss_fn, weight)``; ``weight`` is None without class weights. The loop divides the
    summed per-image losses by the weight total of the global batch, which is what
    ``CrossEntropyLoss(reduction="mean")`` computes, also when the batch is split across processes.
    """
    weight = None
    if config.class_weights == "balanced":
        weight = class_weights(train_split.targets, num_classes).to(device, dtype)
    loss_fn = nn.CrossEntropyLoss(
        weight=weight, label_smoothing=config.label_smoothing, reduction="none"
    )
    return loss_fn, weight


@dataclass
class Run:
    """The live objects of one training run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    weight: torch.Tensor | None
    device: torch.device
    dtype: torch.dtype | None
    place: distributed.Distributed
    model_config: ModelConfig

    @property
    def input_dtype(self) -> torch.dtype:
        """float32, or float64 for a model in the fp64 reference precision."""
        return next(self.plain_model.parameters()).dtype

    @property
    def plain_model(self) -> nn.Module:
        """The model without DDP or torch.compile wrappers (what is saved)."""
        return distributed.unwrap(self.model)


def build_run(
    config: TrainConfig,
    index: DatasetIndex,
    train_split: ShardedSplit,
    device: torch.device,
    place: distributed.Distributed,
) -> Run:
    """Build the model (pretrained backbone if asked), optimizer, scheduler, scaler and loss."""
    dtype = resolve_precision("fp32" if config.precision == "fp64" else config.precision, device)
    model_config = ModelConfig(
        classes=index.classes,
        preprocessing=index.preprocessing,
        head_hidden=config.head_hidden,
        head_dropout=config.head_dropout,
    )
    model = build_model(model_config)
    if config.weights != "none":
        load_backbone_weights(model, load_state_dict(config.weights))
    model = model.to(device, torch.float64 if config.precision == "fp64" else None)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Wrapping first: converting BatchNorm layers for synchronised statistics replaces their
    # parameters, and the optimizer must hold the ones that train.
    model = distributed.wrap(model, place, config.sync_batchnorm)
    optimizer = build_optimizer(model.parameters(), config)
    steps = steps_per_epoch(train_split, config, place, device)
    scheduler = make_scheduler(optimizer, config, steps)
    if config.compile:
        model = torch.compile(model)
    loss_dtype = torch.float64 if config.precision == "fp64" else torch.float32
    loss_fn, weight = make_loss(config, train_split, len(index.classes), device, loss_dtype)
    return Run(
        model,
        optimizer,
        scheduler,
        grad_scaler(device, dtype),
        loss_fn,
        weight,
        device,
        dtype,
        place,
        model_config,
    )


def steps_per_epoch(
    split: ShardedSplit,
    config: TrainConfig,
    place: distributed.Distributed | None = None,
    device: torch.device | None = None,
) -> int:
    """Optimizer steps in one epoch, as the loader deals them out (the first epoch's count; later
    epochs differ by at most one step when shards differ in size)."""
    place = place or distributed.Distributed()
    return max(1, len(training_batches(split, config, 1, place, device or torch.device("cpu"))))


# -- the loop --------------------------------------------------------------------------------


def training_batches(
    split: ShardedSplit,
    config: TrainConfig,
    epoch: int,
    place: distributed.Distributed,
    device: torch.device,
) -> BatchLoader:
    """This process's training batches of ``epoch``: shuffled, flipped uint8 images and targets.

    This is the one place where training obtains its input. Each of N processes reads its own
    shards (the data stage's loader deals them out) in batches of ``batch_size / N``, all with the
    same number of steps; together they make the global batch.
    """
    options = LoaderOptions.for_device(
        device,
        batch_size=config.batch_size // place.world_size,
        shuffle=True,
        seed=config.seed * 1000 + epoch,
        # Equal batches in every process; a lone partial batch only when it is the only one.
        drop_last=place.enabled or len(split) > config.batch_size,
        augment=True,
        rank=place.rank,
        world_size=place.world_size,
    )
    return split.loader(options)


def global_denominator(
    targets: torch.Tensor, weight: torch.Tensor | None, place: distributed.Distributed
) -> torch.Tensor | int:
    """What the global batch's summed per-image losses are divided by: its size, or the total of
    its class weights (which needs the other processes' targets, hence an all-reduce)."""
    if weight is None:
        return len(targets) * place.world_size
    local = weight[targets].sum()
    if place.enabled:
        local = local.clone()
        torch.distributed.all_reduce(local)
    return local


def train_one_epoch(
    run: Run,
    split: ShardedSplit,
    config: TrainConfig,
    preprocessing,
    epoch: int,
) -> tuple[float, float, float]:
    """Run one epoch; return (mean loss, train accuracy, images per second) over all processes."""
    run.model.train()
    place = run.place
    # Sums stay on the device: a .item() per step would stall the GPU's queue of work.
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    weight_sum = torch.zeros_like(loss_sum)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    seen = 0
    start = time.perf_counter()
    for images, targets in training_batches(split, config, epoch, place, run.device):
        images = images.to(run.device, non_blocking=True)
        targets = targets.to(run.device, non_blocking=True)
        # Normalised by the global batch, so that the gradient DDP averages over N processes is
        # the gradient of the global batch's mean loss (CrossEntropyLoss's "mean", with weights).
        denominator = global_denominator(targets, run.weight, place)
        inputs = normalize(images, preprocessing).to(run.input_dtype)
        if not config.channels_last:
            inputs = inputs.contiguous()
        with autocast(run.device, run.dtype):
            logits = run.model(inputs)
        # The loss in fp32 at least (bf16/fp16 logits are promoted), fp64 in fp64.
        per_image = run.loss_fn(
            logits.to(torch.promote_types(logits.dtype, torch.float32)), targets
        )
        batch_loss = per_image.sum()
        loss = batch_loss * place.world_size / denominator
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        loss_sum += batch_loss.detach()
        weight_sum += denominator / place.world_size
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
    local = [loss_sum.item(), weight_sum.item(), correct.item(), seen]  # waits for the device
    elapsed = time.perf_counter() - start
    loss_sum, weight_sum, correct, seen = place.sum(local)
    return loss_sum / max(weight_sum, 1e-12), correct / max(1, seen), seen / max(elapsed, 1e-9)


@torch.inference_mode()
def evaluate_split(
    model,
    split: ShardedSplit,
    preprocessing,
    device,
    dtype,
    batch_size: int = 128,
    place: distributed.Distributed | None = None,
):
    """Return (mean loss, accuracy) of ``model`` on ``split``; processes share the batches."""
    place = place or distributed.Distributed()
    model.eval()
    parameter_dtype = next(model.parameters()).dtype
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for number, (images, targets) in enumerate(split.batches(batch_size)):
        if number % place.world_size != place.rank:
            continue
        targets = targets.to(device)
        inputs = normalize(images.to(device), preprocessing).to(parameter_dtype)
        with autocast(device, dtype):
            logits = model(inputs).float()
        total_loss += loss_fn(logits, targets).item()
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    total_loss, correct, seen = place.sum([total_loss, correct, seen])
    n = max(1, seen)
    return total_loss / n, correct / n


def seed_everything(seed: int) -> None:
    """Seed torch and numpy so that a run is repeatable."""
    torch.manual_seed(seed)
    np.random.seed(seed)


@dataclass
class Progress:
    """What the loop has done so far: saved in every checkpoint."""

    history: list[EpochResult] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None
    stopped_early: bool = False

    @property
    def epoch(self) -> int:
        """The last completed epoch (0 before the first)."""
        return self.history[-1].epoch if self.history else 0

    def record(self, result: EpochResult, model: nn.Module, keep_best: bool) -> None:
        """Add an epoch; remember the weights of the best epoch so far when ``keep_best``."""
        self.history.append(result)
        if result.accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = result.accuracy, result.epoch
            if keep_best:
                self.best_state = _cpu_state(model)

    def should_stop(self, patience: int) -> bool:
        """True when validation accuracy has not improved for ``patience`` epochs (0: never)."""
        return patience > 0 and self.epoch - self.best_epoch >= patience


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# -- checkpoints -----------------------------------------------------------------------------


def checkpoint_state(run: Run, config: TrainConfig, progress: Progress) -> dict:
    """Everything needed to continue the run after its last completed epoch."""
    return {
        "epoch": progress.epoch,
        "config": asdict(config),
        "model": _cpu_state(run.plain_model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "history": [asdict(e) for e in progress.history],
        "best_accuracy": progress.best_accuracy,
        "best_epoch": progress.best_epoch,
        "best_state": progress.best_state,
        "rng": torch.get_rng_state(),
    }


def restore(state: dict, run: Run, config: TrainConfig, where: str) -> Progress:
    """Load a checkpoint into ``run``; refuse one written by a run with other settings."""
    saved = TrainConfig.from_dict(state["config"])
    different = [
        f"{name}={getattr(saved, name)!r} (now {getattr(config, name)!r})"
        for name in (f.name for f in fields(TrainConfig))
        if name not in RESUMABLE_DIFFERENCES and getattr(saved, name) != getattr(config, name)
    ]
    if different:
        raise ValueError(
            f"checkpoint {where} belongs to a run with other settings: {', '.join(different)}; "
            "use another --checkpoint location or --no-resume to start over"
        )
    run.plain_model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    return Progress(
        history=[EpochResult(**e) for e in state["history"]],
        best_accuracy=state["best_accuracy"],
        best_epoch=state["best_epoch"],
        best_state=state["best_state"],
    )


# -- fit -------------------------------------------------------------------------------------


def measuring_split_name(index: DatasetIndex) -> str:
    """The split that measures a model during training: val, else test."""
    return "val" if index.splits.get("val", {}).get("images") else "test"


def open_splits(index: DatasetIndex) -> tuple[ShardedSplit, ShardedSplit]:
    """The training split and the split that measures progress (val, else test)."""
    train_split = index.split("train")
    if len(train_split) == 0:
        raise ValueError(f"the train split of {str(index.root)!r} has no images")
    if measuring_split_name(index) == "test":
        log.warning("no validation split: reporting accuracy on the test split")
    return train_split, index.split(measuring_split_name(index))


def fit(
    data: str | Path,
    config: TrainConfig,
    out: str | Path | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    quiet: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    endpoint_url: str | None = None,
) -> TrainResult:
    """Train on the preprocessed dataset at ``data``; save the model to ``out`` if given.

    ``data`` and ``out`` are folders or ``s3://`` URIs. With ``checkpoint`` (a folder or
    ``s3://`` prefix), a checkpoint is written after every epoch and, when ``resume`` is true, a
    run finding one there continues after its last completed epoch; it is removed once the model
    is saved. ``on_epoch`` is called after each epoch with its metrics; it may raise to stop the run
    (the local search prunes trials this way). Under torchrun, this is one process of N.
    """
    from invmon.data.transfer import fetch_dataset, publish_folder

    device = resolve_device(config.device)
    place = distributed.init(device)
    try:
        if config.batch_size % place.world_size:
            raise ValueError(
                f"--batch-size {config.batch_size} is not divisible by the {place.world_size} "
                "training processes (each takes an equal share of every batch)"
            )
        seed_everything(config.seed)
        index = DatasetIndex.read(fetch_dataset(data, place, endpoint_url))
        store = CheckpointStore(checkpoint, endpoint_url) if checkpoint is not None else None
        result, run = _fit(
            index, config, place.device(device), place, store, resume, on_epoch, quiet
        )
        if out is not None and place.is_main:
            with publish_folder(out, endpoint_url) as local_out:
                save_outputs(result, run.plain_model, run.model_config, local_out)
                write_calibration(local_out, index)
            result.model_dir = str(out)
            if store is not None:
                store.clear()
        place.barrier()
        return result
    finally:
        distributed.shutdown(place)


def _fit(
    index: DatasetIndex,
    config: TrainConfig,
    device: torch.device,
    place: distributed.Distributed,
    store: CheckpointStore | None,
    resume: bool,
    on_epoch: Callable[[EpochResult], None] | None,
    quiet: bool,
) -> tuple[TrainResult, Run]:
    train_split, val_split = open_splits(index)
    if len(training_batches(train_split, config, 1, place, device)) == 0:
        raise ValueError(
            f"the train split ({len(train_split)} images in {len(train_split.stems)} shards) "
            f"gives no batch of {config.batch_size // place.world_size} to each of "
            f"{place.world_size} processes: lower --batch-size or preprocess with smaller shards"
        )
    run = build_run(config, index, train_split, device, place)
    progress = Progress()
    saved = store.load() if store is not None and resume else None
    if saved is not None:
        progress = restore(saved, run, config, str(store))
        log.info("resuming from %s after epoch %d", store, progress.epoch)
    log.info(
        "training on %s (%s%s), %d train / %d val images, classes %s",
        device,
        str(run.dtype or run.input_dtype).replace("torch.", ""),
        f", {place.world_size} processes" if place.enabled else "",
        len(train_split),
        len(val_split),
        list(index.classes),
    )
    keep_best = config.early_stopping_patience > 0
    resumed_after = progress.epoch
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        if progress.should_stop(config.early_stopping_patience):
            break
        start = time.perf_counter()
        loss, train_acc, ips = train_one_epoch(run, train_split, config, index.preprocessing, epoch)
        val_loss, accuracy = evaluate_split(
            run.plain_model, val_split, index.preprocessing, device, run.dtype, place=place
        )
        result = EpochResult(
            epoch, loss, accuracy, val_loss, train_acc, ips, time.perf_counter() - start
        )
        progress.record(result, run.plain_model, keep_best)
        if place.is_main:
            if store is not None:
                store.save(checkpoint_state(run, config, progress))
            if not quiet:
                print_metrics(result)
        if on_epoch is not None:
            on_epoch(result)
    progress.stopped_early = progress.epoch < config.epochs
    if keep_best and progress.best_state is not None:
        run.plain_model.load_state_dict(progress.best_state)
    info = _run_info(run, progress, resumed_after, train_split, val_split)
    return TrainResult(config=config, history=progress.history, info=info), run


def _run_info(run: Run, progress: Progress, resumed_after: int, train_split, val_split) -> dict:
    info = {
        "device": str(run.device),
        "precision": str(run.dtype or run.input_dtype).replace("torch.", ""),
        "processes": run.place.world_size,
        "train_images": len(train_split),
        "val_images": len(val_split),
        "best_epoch": progress.best_epoch,
        "best_accuracy": progress.best_accuracy,
        "stopped_early": progress.stopped_early,
        "resumed_after_epoch": resumed_after,
    }
    return info


def save_outputs(
    result: TrainResult, model: nn.Module, model_config: ModelConfig, out: str | Path
) -> None:
    """Write the model folder (weights.pt, config.json), history.json and the training report."""
    from invmon.training.report import REPORT_FILE, html_report

    training = {
        "config": asdict(result.config),
        "history": [asdict(e) for e in result.history],
        "run": result.info,
    }
    save_model(model, _with_training(model_config, training), out)
    (Path(out) / HISTORY_FILE).write_text(json.dumps(training, indent=2) + "\n")
    (Path(out) / REPORT_FILE).write_text(html_report(training))


def write_calibration(model_dir: str | Path, index: DatasetIndex) -> None:
    """Calibrate int8 inference of the saved model on training images; save it beside it.

    How closely the int8 model follows the float one is measured too, on up to
    ``quantize.AGREEMENT_IMAGES`` images (the validation split, topped up from the training
    split: this measures numerical fidelity, not generalisation, and a few dozen validation
    images are too few to tell 99 % from 97 %), and saved: ``--precision auto`` serves int8 only
    when it is faithful enough (:class:`invmon.training.quantize.Fidelity`). The model is read back
    from
    ``model_dir`` as a predictor reads it (plain batch norm, float32, CPU), whatever wrappers
    and precision trained it. Skipped, with a warning, where PyTorch has no x86 quantized engine
    (an Arm build): serving then runs the float model. See :mod:`invmon.training.quantize`.
    """
    from invmon.training import quantize
    from invmon.training.model import load_model

    if not quantize.int8_supported(torch.device("cpu")):
        log.warning("no int8 calibration: this PyTorch has no %s quantized engine", quantize.ENGINE)
        return
    model, _ = load_model(model_dir, "cpu")
    train_split, check = index.split("train"), index.split(measuring_split_name(index))
    calibration = train_split.gather(quantize.calibration_sample(len(train_split)))
    preprocessing = index.preprocessing
    state = quantize.calibrate(
        model, quantize.calibration_batches(calibration, preprocessing), preprocessing.image_size
    )
    held_out = quantize.calibration_sample(len(check), quantize.AGREEMENT_IMAGES)
    top_up = quantize.calibration_sample(
        len(train_split), quantize.AGREEMENT_IMAGES - len(held_out)
    )
    parts = [(check, held_out), (train_split, top_up)]
    images = np.concatenate([split.gather(rows) for split, rows in parts if len(rows)])
    int8 = quantize.convert(model, state, preprocessing.image_size)
    fidelity = quantize.measure_fidelity(
        model, int8, quantize.calibration_batches(images, preprocessing)
    )
    log.info(
        "int8 gives the fp32 count on %.1f%% of %d images, %.1f%% once the %.1f%% closest calls "
        "are re-checked in float: %s",
        100 * fidelity.agreement,
        fidelity.images,
        100 * fidelity.checked_agreement,
        100 * fidelity.rechecked,
        "served by default" if fidelity.serves_int8 else "NOT served by default",
    )
    quantize.save_calibration(state, model_dir, fidelity)


def _with_training(config: ModelConfig, training: dict) -> ModelConfig:
    final = training["history"][-1] if training["history"] else {}
    summary = {
        "hyperparameters": training["config"],
        "val_accuracy": training["run"].get("best_accuracy", final.get("accuracy")),
        "epochs_run": len(training["history"]),
    }
    return dataclasses.replace(config, training=summary)
