"""Training checkpoints: all a restarted process needs to continue where the last one stopped.

A checkpoint is one file, ``checkpoint.pt``, holding the model, optimizer, learning-rate scheduler
and gradient scaler states, the last completed epoch, the metrics so far, the early-stopping state,
the random number generator state and the run's configuration. It is written after every epoch,
atomically: to a local folder by writing a temporary file and renaming it over the old one, to an
``s3://`` prefix by one upload (S3 shows an object only once it is complete). A reader therefore
sees either the previous checkpoint or the new one, never a torn file, whenever the writer is
killed.

Checkpoints are read with ``torch.load(weights_only=True)``: opening one never runs code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from invmon.data.s3 import S3Uri, is_s3_uri, make_client
from invmon.training.config import RESUMABLE_DIFFERENCES, TrainConfig
from invmon.training.metrics import EpochResult
from invmon.training.run import Run

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
CHECKPOINT_PREFIX = "checkpoint-"


def beside(out: str | Path) -> str:
    """The default checkpoint location of a model written to ``out``: beside it, not in it.

    The model folder becomes the model artifact, and KServe's storage initializer downloads all
    of it at every predictor start, listing by prefix without a trailing slash (kserve/kserve
    python/storage/kserve_storage/kserve_storage.py:694-721): ``OUT/checkpoint`` and
    ``OUT.checkpoint`` would both be fetched. So the checkpoint is ``PARENT/checkpoint-NAME``.
    """
    text = str(out).rstrip("/")
    if "://" not in text:
        path = Path(text)
        return str(path.parent / f"{CHECKPOINT_PREFIX}{path.name}")
    parent, sep, name = text.rpartition("/")
    if not sep or parent.endswith(":/"):
        raise ValueError(
            f"--out {out!r} is a whole bucket: there is nothing beside it to hold the checkpoint; "
            "pass --checkpoint (a folder or s3:// prefix) or --checkpoint none"
        )
    return f"{parent}/{CHECKPOINT_PREFIX}{name}"


class CheckpointStore:
    """The checkpoint of one training run, in a local folder or under an ``s3://`` prefix."""

    def __init__(self, location: str | Path, endpoint_url: str | None = None):
        self.location = str(location)
        self.endpoint_url = endpoint_url
        if is_s3_uri(self.location):
            self._uri = S3Uri.parse(self.location)
            self._key = self._uri.key(CHECKPOINT_FILE)
        else:
            self._uri = None
            self._path = Path(self.location) / CHECKPOINT_FILE

    def __str__(self) -> str:
        if self._uri is not None:
            return f"s3://{self._uri.bucket}/{self._key}"
        return str(self._path)

    def save(self, state: dict) -> None:
        """Write ``state`` so that a reader never sees a partly written checkpoint."""
        state = {**state, "format_version": FORMAT_VERSION}
        if self._uri is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(state, self._path)
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / CHECKPOINT_FILE
            torch.save(state, local)
            self._client().upload_file(str(local), self._uri.bucket, self._key)

    def load(self) -> dict | None:
        """The last checkpoint, or None when there is none yet."""
        if self._uri is None:
            return _read(self._path, str(self)) if self._path.is_file() else None
        from botocore.exceptions import ClientError

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / CHECKPOINT_FILE
            try:
                self._client().download_file(self._uri.bucket, self._key, str(local))
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    return None
                raise
            return _read(local, str(self))

    def clear(self) -> None:
        """Remove the checkpoint (after the finished model has been saved)."""
        if self._uri is None:
            self._path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._path.parent.rmdir()  # only when empty: never remove anything else
            return
        self._client().delete_object(Bucket=self._uri.bucket, Key=self._key)

    def _client(self):
        return make_client(self.endpoint_url)


def _atomic_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read(path: Path, name: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for files that are not checkpoints
        raise ValueError(f"checkpoint {name} is not a loadable checkpoint: {err}") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {name} is not an invmon training checkpoint (format {FORMAT_VERSION})"
        )
    return state


# -- what a checkpoint holds ------------------------------------------------------------------


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
