"""Train: a ResNet50 with the original two-layer head, fitted on preprocessed shards.

The loop is split into verbs, as in torchvision's classification recipe: :func:`train_one_epoch`,
:func:`evaluate_split` and :func:`fit`, with the pieces of a run built by
:mod:`invmon.training.optim` from the run's :class:`~invmon.training.config.TrainConfig`. Tune
reuses :func:`fit` through its ``on_epoch`` hook instead of copying the loop.

The same command trains in one process or in N under ``torchrun`` (DistributedDataParallel, NCCL
on GPUs, gloo on CPU): each process trains on its share of every global batch of ``batch_size``
images, so N processes compute what one process computes. Only rank 0 prints the per-epoch
metrics line (:mod:`invmon.training.metrics`), checkpoints (:mod:`invmon.training.checkpoint`)
and writes the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from invmon.data.shards import BatchLoader, DatasetIndex, LoaderOptions, ShardedSplit
from invmon.data.transforms import normalize
from invmon.training import distributed, quantize
from invmon.training.checkpoint import CheckpointStore, Progress, checkpoint_state, restore
from invmon.training.config import TrainConfig
from invmon.training.device import autocast, grad_scaler, resolve_device, resolve_precision
from invmon.training.init_model import start_from
from invmon.training.metrics import EpochResult, print_metrics
from invmon.training.model import ModelConfig, build_model, load_backbone_weights, save_model
from invmon.training.optim import build_optimizer, make_loss, make_scheduler
from invmon.training.report import REPORT_FILE, html_report
from invmon.training.run import Run, measuring_split_name
from invmon.training.weights import load_state_dict

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"


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


def build_run(
    config: TrainConfig,
    index: DatasetIndex,
    train_split: ShardedSplit,
    device: torch.device,
    place: distributed.Distributed,
    endpoint_url: str | None = None,
) -> Run:
    """Build the model (from a starting model or a pretrained backbone if asked), optimizer,
    scheduler, scaler and loss. ``endpoint_url`` reaches an ``s3://`` starting model."""
    dtype = resolve_precision("fp32" if config.precision == "fp64" else config.precision, device)
    model_config = ModelConfig(
        classes=index.classes,
        preprocessing=index.preprocessing,
        head_hidden=config.head_hidden,
        head_dropout=config.head_dropout,
    )
    model = build_model(model_config)
    if config.init_model:  # a retrain round: the whole model, backbone and head, starts trained
        start_from(model, config.init_model, model_config, endpoint_url)
    elif config.weights != "none":
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


# -- fit -------------------------------------------------------------------------------------


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
        local = fetch_dataset(data, endpoint_url, place.local_rank, place.barrier)
        index = DatasetIndex.read(local)
        store = CheckpointStore(checkpoint, endpoint_url) if checkpoint is not None else None
        result, run = _fit(
            index, config, place.device(device), place, store, resume, on_epoch, quiet, endpoint_url
        )
        if out is not None and place.is_main:
            with publish_folder(out, endpoint_url) as local_out:
                save_outputs(result, run.plain_model, run.model_config, local_out)
                quantize.calibrate_model_folder(local_out, index)
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
    endpoint_url: str | None = None,
) -> tuple[TrainResult, Run]:
    train_split, val_split = open_splits(index)
    if len(training_batches(train_split, config, 1, place, device)) == 0:
        raise ValueError(
            f"the train split ({len(train_split)} images in {len(train_split.stems)} shards) "
            f"gives no batch of {config.batch_size // place.world_size} to each of "
            f"{place.world_size} processes: lower --batch-size or preprocess with smaller shards"
        )
    run = build_run(config, index, train_split, device, place, endpoint_url)
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
    training = {
        "config": asdict(result.config),
        "history": [asdict(e) for e in result.history],
        "run": result.info,
    }
    save_model(model, _with_training(model_config, training), out)
    (Path(out) / HISTORY_FILE).write_text(json.dumps(training, indent=2) + "\n")
    (Path(out) / REPORT_FILE).write_text(html_report(training))


def _with_training(config: ModelConfig, training: dict) -> ModelConfig:
    final = training["history"][-1] if training["history"] else {}
    summary = {
        "hyperparameters": training["config"],
        "val_accuracy": training["run"].get("best_accuracy", final.get("accuracy")),
        "epochs_run": len(training["history"]),
    }
    return dataclasses.replace(config, training=summary)
