"""The folders the data stages hand on, as the stages after them read them.

An *arranged* dataset (written by arrange) holds ``manifest.csv`` (``bin_id,count,split``),
``dataset.json`` (classes, split, what was dropped, and whether the images are in the class folders
``<split>/<count>/<id>.jpg`` or read from the raw folder it was arranged from). A *preprocessed*
dataset (written by preprocess, read by :mod:`invmon.data.shards`) is described by its
``index.json``.

This module names and reads those files without NumPy or PyTorch, so that arrange, preprocess (and
its decoding workers), the shard reader and the deploy smoke test share it at no import cost.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from invmon.data import abid

SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.csv"
DATASET_FILE = "dataset.json"
# The index of a preprocessed dataset (its preprocessing, classes and the shards of each split).
# It is named here, not in invmon.data.shards (which reads it), because that module imports
# PyTorch, and preprocess, which writes it, never does.
INDEX_FILE = "index.json"


def read_manifest(data: str | Path) -> list[tuple[str, int, str]]:
    """Return ``(bin_id, count, split)`` rows of an arranged folder's manifest."""
    path = Path(data) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"{str(data)!r} is not an arranged dataset: {MANIFEST_FILE} is missing")
    with open(path, newline="") as handle:
        return [(r["bin_id"], int(r["count"]), r["split"]) for r in csv.DictReader(handle)]


def read_classes(data: str | Path) -> list[int]:
    """Return the classes an arranged folder was made for."""
    return [int(c) for c in _dataset(data)["classes"]]


def read_verified(data: str | Path) -> dict[str, list[str]]:
    """The recount-verified bins of each split of an arranged folder (empty: no recounts)."""
    return {s: list(ids) for s, ids in _dataset(data).get("recount_verified", {}).items()}


def _dataset(data: str | Path) -> dict:
    path = Path(data) / DATASET_FILE
    if not path.is_file():
        raise ValueError(f"{str(data)!r} is not an arranged dataset: {DATASET_FILE} is missing")
    return json.loads(path.read_text())


def image_locator(data: str | Path) -> Callable[[str, int, str], Path]:
    """Return ``f(bin_id, count, split) -> Path`` of the image files of an arranged folder.

    Images are in the class folders, or, for a folder arranged with ``images="refer"``, in the raw
    folder it was arranged from.
    """
    data = Path(data)
    info = _dataset(data)
    if info.get("layout", "folders") == "raw":
        images = Path(info["raw"]) / abid.IMAGE_DIR
        if not images.is_dir():
            raise ValueError(
                f"{str(data)!r} refers to images in {str(images)!r}, which does not exist here"
            )
        return lambda bin_id, count, split: images / f"{bin_id}{abid.IMAGE_SUFFIX}"
    return lambda bin_id, count, split: data / split / str(count) / f"{bin_id}{abid.IMAGE_SUFFIX}"
