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
from pathlib import Path

import torch

from invmon.data.s3 import S3Uri, is_s3_uri, make_client

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


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
