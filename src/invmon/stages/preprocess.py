"""Preprocess: decode and resize every arranged image once, into shards the trainer reads directly.

Output layout::

    index.json                      # preprocessing, classes, and the shards of each split
    train/shard-00000.images.npy    # uint8 (N, 3, S, S), memory-mappable
    train/shard-00000.labels.npy    # int16 (N,) item counts
    train/shard-00000.ids.json      # bin ids, in row order
    train/shard-00000.done.json     # what the shard was made from (for resuming)
    val/...  test/...

Shards let many data-loader workers, GPUs and nodes read disjoint parts. A pool of processes (one
per core) decodes, and each process writes its images straight into their rows of the shard file,
so memory is bounded by what is in flight, not by the shard or the dataset. Every shard is
written under a temporary name and renamed when complete, with a record of the rows it was made
from: a run that was stopped resumes at the first shard not finished.

The decode and resize are :func:`invmon.data.transforms.prepare`, the same function the predictor
runs,
so training and serving see identical pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from invmon.core.command import Command
from invmon.core.progress import Progress
from invmon.core.settings import Settings, inherit, setting
from invmon.data.layout import (
    INDEX_FILE,
    SPLITS,
    image_locator,
    read_classes,
    read_manifest,
    read_verified,
)
from invmon.data.transforms import InvalidImage, Preprocessing, prepare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessSettings(Settings):
    """Settings of preprocess."""

    data: str = setting(help="arranged folder (from arrange)")
    out: str = setting(help="output folder")
    image_size: int = inherit(Preprocessing, "image_size")
    shard_size: int = setting(4096, help="images per shard", minimum=1)
    workers: int | None = setting(None, help="decoding processes (default: all cores)", minimum=1)

    def preprocessing(self) -> Preprocessing:
        """The shared preprocessing these shards are made with (saved in their index)."""
        return Preprocessing(image_size=self.image_size)


@dataclass
class PreprocessReport:
    """What preprocess wrote and what it had to skip."""

    image_size: int
    images: dict[str, int]
    shards: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)
    reused_shards: int = 0
    seconds: float = 0.0
    workers: int = 1

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


@dataclass(frozen=True)
class _Shard:
    """One planned shard: the manifest rows it is made from."""

    split: str
    number: int
    rows: list[tuple[str, int, str]]

    @property
    def stem(self) -> str:
        return f"shard-{self.number:05d}"

    @property
    def key(self) -> tuple[str, int]:
        return self.split, self.number

    def fingerprint(self, image_size: int) -> str:
        text = f"{image_size}\n" + "\n".join(f"{b},{c}" for b, c, _ in self.rows)
        return hashlib.sha256(text.encode()).hexdigest()


def _prepare_into(job: tuple[str, int, str, int]) -> str | None:
    """Decode one image and write it at its row of the shard file; return why it failed, if so.

    Workers write their rows themselves: sending 150 KB of pixels per image back to one writing
    process would make that process the bottleneck.
    """
    path, image_size, target, offset = job
    try:
        array = prepare(Path(path).read_bytes(), image_size)
    except (InvalidImage, OSError) as err:
        return str(err)
    fd = os.open(target, os.O_WRONLY)
    try:
        os.pwrite(fd, memoryview(array).cast("B"), offset)
    finally:
        os.close(fd)
    return None


def plan_shards(rows: list[tuple[str, int, str]], shard_size: int) -> list[_Shard]:
    """Cut each split's manifest rows, in order, into shards of ``shard_size`` rows."""
    shards = []
    for split in SPLITS:
        split_rows = [r for r in rows if r[2] == split]
        for number, first in enumerate(range(0, len(split_rows), shard_size)):
            shards.append(_Shard(split, number, split_rows[first : first + shard_size]))
    return shards


def _done_record(folder: Path, shard: _Shard) -> Path:
    return folder / f"{shard.stem}.done.json"


def _finished(out: Path, shard: _Shard, image_size: int) -> dict | None:
    """The record of a shard a previous run completed from the same rows, or None."""
    folder = out / shard.split
    record = _done_record(folder, shard)
    if not record.is_file():
        return None
    done = json.loads(record.read_text())
    files = [f"{shard.stem}.{kind}" for kind in ("images.npy", "labels.npy", "ids.json")]
    if done.get("fingerprint") != shard.fingerprint(image_size):
        return None
    if done["kept"] and not all((folder / name).is_file() for name in files):
        return None
    return done


class _ShardWriter:
    """One shard's ``.npy`` file under a temporary name, written row by row by the workers.

    The file is created at its full size; decoding workers write each image at its row's offset
    (no pixels pass through this process, and nothing is memory-mapped). Rows of images that
    failed are squeezed out when the shard is closed.
    """

    def __init__(self, out: Path, shard: _Shard, image_size: int):
        self.folder, self.shard, self.image_size = out / shard.split, shard, image_size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.partial = self.folder / f".{shard.stem}.images.npy.part"
        self.row_shape = (3, image_size, image_size)
        self.row_bytes = 3 * image_size * image_size
        header = _npy_header(len(shard.rows), self.row_shape)
        self.header_bytes = len(header)
        with open(self.partial, "wb") as handle:
            handle.write(header)
            handle.truncate(len(header) + len(shard.rows) * self.row_bytes)
        self.kept_rows: list[int] = []
        self.labels: list[int] = []
        self.ids: list[str] = []
        self.skipped: dict[str, str] = {}

    def offset(self, row: int) -> int:
        """Where row ``row`` of the planned shard starts in the file."""
        return self.header_bytes + row * self.row_bytes

    def add(self, number: int, error: str | None) -> None:
        """Record the outcome of planned row ``number`` (its pixels are already in the file)."""
        bin_id, count, _ = self.shard.rows[number]
        if error is not None:
            log.warning("skipping bin %s: %s", bin_id, error)
            self.skipped[bin_id] = error
            return
        self.kept_rows.append(number)
        self.labels.append(count)
        self.ids.append(bin_id)

    def close(self) -> dict:
        """Finish the files (renamed into place) and return the shard's record."""
        kept, stem = len(self.ids), self.shard.stem
        if kept < len(self.shard.rows):
            self._squeeze(kept)
        if kept:
            os.replace(self.partial, self.folder / f"{stem}.images.npy")
            labels = np.asarray(self.labels, dtype=np.int16)
            _write_atomic(
                self.folder / f"{stem}.labels.npy", _npy_header(kept, ()) + labels.tobytes()
            )
            _write_atomic(self.folder / f"{stem}.ids.json", json.dumps(self.ids).encode())
        else:
            self.partial.unlink()
        record = {
            "fingerprint": self.shard.fingerprint(self.image_size),
            "kept": kept,
            "skipped": self.skipped,
        }
        _write_atomic(_done_record(self.folder, self.shard), json.dumps(record).encode())
        return record

    def _squeeze(self, kept: int) -> None:
        # Rare: some images failed. Move the kept rows up, then fix the header and the length.
        header = _npy_header(kept, self.row_shape)
        with open(self.partial, "r+b") as handle:
            for new, old in enumerate(self.kept_rows):
                if len(header) != self.header_bytes or new != old:
                    handle.seek(self.offset(old))
                    row = handle.read(self.row_bytes)
                    handle.seek(len(header) + new * self.row_bytes)
                    handle.write(row)
            handle.seek(0)
            handle.write(header)
            handle.truncate(len(header) + kept * self.row_bytes)


def _npy_header(rows: int, row_shape: tuple[int, ...], dtype: str = "") -> bytes:
    """The header of a ``.npy`` file of ``rows`` rows (uint8 images, or int16 labels)."""
    buffer = io.BytesIO()
    descr = dtype or ("|u1" if row_shape else "<i2")
    header = {"descr": descr, "fortran_order": False, "shape": (rows, *row_shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


def _jobs(shards, writers, out, locate, image_size, window) -> Iterator[tuple[str, int, str, int]]:
    # The pool's feeder thread runs this generator; the window keeps it from queueing the whole
    # dataset ahead of the workers. A shard's file is made before its first job is handed out.
    for shard in shards:
        writer = writers[shard.key] = _ShardWriter(out, shard, image_size)
        for number, (bin_id, count, split) in enumerate(shard.rows):
            window.acquire()
            path = str(locate(bin_id, count, split))
            yield path, image_size, str(writer.partial), writer.offset(number)


def _decode_into_shards(todo, records, out, locate, image_size, workers, progress) -> None:
    """Decode the rows of the ``todo`` shards on ``workers`` processes, finishing shard by shard."""
    in_flight = workers * 64
    window = threading.Semaphore(in_flight)
    writers: dict[tuple[str, int], _ShardWriter] = {}
    jobs = _jobs(todo, writers, out, locate, image_size, window)
    with get_context("spawn").Pool(workers) as pool:
        try:
            results = pool.imap(_prepare_into, jobs, chunksize=16)
            for shard in todo:
                for number in range(len(shard.rows)):
                    error = next(results)  # the shard's writer exists once a result is back
                    writers[shard.key].add(number, error)
                    window.release()
                    progress.advance()
                records[shard.key] = writers.pop(shard.key).close()
        finally:
            # Unblock the feeder thread if we stopped early, so that the pool can shut down.
            window.release(in_flight)


def run(settings: PreprocessSettings) -> PreprocessReport:
    """Decode and resize the arranged dataset under ``data`` into shards under ``out``.

    Images that cannot be decoded are skipped and named in the report; a split left empty is an
    error for train and test. Shards that a previous run finished from the same rows are kept.
    """
    data, out, image_size = Path(settings.data), Path(settings.out), settings.image_size
    rows = read_manifest(data)
    classes = read_classes(data)
    locate = image_locator(data)
    workers = settings.workers or os.cpu_count() or 1
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    shards = plan_shards(rows, settings.shard_size)
    records = {s.key: _finished(out, s, image_size) for s in shards}
    todo = [s for s in shards if records[s.key] is None]
    report = PreprocessReport(image_size, {}, {}, reused_shards=len(shards) - len(todo))
    report.workers = workers
    if report.reused_shards:
        log.info("resuming: %d of %d shards are already done", report.reused_shards, len(shards))
    progress = Progress("preprocess", total=sum(len(s.rows) for s in todo), unit="images")
    if todo:
        _decode_into_shards(todo, records, out, locate, image_size, workers, progress)
    progress.close()
    index = _index(shards, records, report, settings.preprocessing(), classes)
    # Which bins' labels a recount confirmed: evaluate reports its accuracy on them apart.
    index["recount_verified"] = read_verified(data)
    for split in ("train", "test"):
        if report.images[split] == 0:
            raise ValueError(f"preprocess produced no {split} images from {str(data)!r}")
    report.seconds = round(time.monotonic() - start, 3)
    _write_atomic(out / INDEX_FILE, (json.dumps(index, indent=2) + "\n").encode())
    return report


def _index(shards, records, report: PreprocessReport, preprocessing, classes) -> dict:
    """The dataset's index (what the trainer reads), filling the report's counts on the way."""
    index = {"preprocessing": preprocessing.to_dict(), "classes": classes, "splits": {}}
    for split in SPLITS:
        done = [(s, records[s.key]) for s in shards if s.split == split]
        stems = [s.stem for s, record in done if record["kept"]]
        kept = sum(record["kept"] for _, record in done)
        for _, record in done:
            report.skipped.update(record["skipped"])
        index["splits"][split] = {"images": kept, "shards": stems}
        report.images[split], report.shards[split] = kept, len(stems)
    index["skipped"] = report.skipped
    return index


PREPROCESS = Command(
    PreprocessSettings,
    run,
    description="Decode and resize every arranged image once into uint8 shards that the "
    "trainer reads without decoding JPEG.",
    show=lambda report, settings: (
        f"preprocess: {report.images} images at {report.image_size}px in "
        f"{sum(report.shards.values())} shards, {len(report.skipped)} skipped -> {settings.out}"
    ),
)
