"""Preprocess: decode and resize every arranged image once, into shards the trainer reads directly.

Output layout::

    index.json                      # preprocessing, classes, and the shards of each split
    train/shard-00000.images.npy    # uint8 (N, 3, S, S), memory-mappable
    train/shard-00000.labels.npy    # int16 (N,) item counts
    train/shard-00000.ids.json      # bin ids, in row order
    val/...  test/...

Shards let many data-loader workers, GPUs and nodes read disjoint parts, and keep memory bounded
by the shard size. The decode and resize are :func:`invmon.transforms.prepare`, the same function
the predictor runs, so training and serving see identical pixels.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from invmon import abid
from invmon.arrange import SPLITS, read_classes, read_manifest
from invmon.progress import Progress
from invmon.transforms import InvalidImage, Preprocessing, prepare

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
DEFAULT_SHARD_SIZE = 4096


@dataclass
class PreprocessReport:
    """What preprocess wrote and what it had to skip."""

    image_size: int
    images: dict[str, int]
    shards: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


def _prepare_file(job: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, image_size = job
    try:
        return prepare(Path(path).read_bytes(), image_size), None
    except (InvalidImage, OSError) as err:
        return None, str(err)


def _chunks(rows: list, size: int) -> Iterator[list]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _write_shard(folder: Path, number: int, images: list, labels: list, ids: list) -> str:
    stem = f"shard-{number:05d}"
    np.save(folder / f"{stem}.images.npy", np.stack(images))
    np.save(folder / f"{stem}.labels.npy", np.asarray(labels, dtype=np.int16))
    (folder / f"{stem}.ids.json").write_text(json.dumps(ids))
    return stem


def preprocess(
    data: str | Path,
    out: str | Path,
    image_size: int = 96,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
) -> PreprocessReport:
    """Decode and resize the arranged dataset under ``data`` into shards under ``out``.

    Images that cannot be decoded are skipped and named in the report; a split left empty is an
    error for train and test.
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    preprocessing = Preprocessing(image_size=image_size)
    data, out = Path(data), Path(out)
    rows = read_manifest(data)
    classes = read_classes(data)
    workers = workers or os.cpu_count() or 1
    out.mkdir(parents=True, exist_ok=True)
    report = PreprocessReport(image_size=image_size, images={}, shards={})
    index = {"preprocessing": preprocessing.to_dict(), "classes": classes, "splits": {}}
    progress = Progress("preprocess", total=len(rows), unit="images")
    ctx = get_context("spawn")
    with ctx.Pool(workers) as pool:
        for split in SPLITS:
            split_rows = [r for r in rows if r[2] == split]
            folder = out / split
            folder.mkdir(exist_ok=True)
            shards, kept = [], 0
            for chunk in _chunks(split_rows, shard_size):
                jobs = [
                    (str(data / split / str(count) / f"{bin_id}{abid.IMAGE_SUFFIX}"), image_size)
                    for bin_id, count, _ in chunk
                ]
                images, labels, ids = [], [], []
                results = pool.imap(_prepare_file, jobs, chunksize=32)
                for (bin_id, count, _), (array, error) in zip(chunk, results, strict=True):
                    progress.advance()
                    if error is not None:
                        log.warning("skipping bin %s: %s", bin_id, error)
                        report.skipped[bin_id] = error
                        continue
                    images.append(array)
                    labels.append(count)
                    ids.append(bin_id)
                if images:
                    shards.append(_write_shard(folder, len(shards), images, labels, ids))
                    kept += len(images)
            index["splits"][split] = {"images": kept, "shards": shards}
            report.images[split] = kept
            report.shards[split] = len(shards)
    progress.close()
    for split in ("train", "test"):
        if report.images[split] == 0:
            raise ValueError(f"preprocess produced no {split} images from {str(data)!r}")
    index["skipped"] = report.skipped
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return report
