"""Copy the bins of an S3 bucket (ABID's layout) into a folder: in parallel, retried, resumable.

Many requests are in flight at once over a pooled connection set (small S3 GETs are bound by
latency, not bandwidth), and each is retried with backoff when S3 throttles (503 SlowDown), fails
(5xx), times out, drops the connection or sends a short body. Objects already on disk with the
right size (or, with ``verify="etag"``, the right MD5) are skipped, and every file is written under
a temporary name and renamed when complete, so a killed run resumes where it stopped. Keys are
copied exactly as they are: ``121.jpg`` and ``00121.jpg`` are different bins.

A copy can be limited to one :class:`Part` of the bins (a key range, or a slice of a file list),
so that several copies run side by side; the ingest stage (:mod:`invmon.stages.ingest`) plans the
parts and merges what they copied.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from invmon.core.ahead import produced_ahead
from invmon.core.progress import Progress
from invmon.data import abid
from invmon.data.s3 import (
    ListedObject,
    ObjectReader,
    RetryPolicy,
    S3ObjectError,
    S3Options,
    S3Uri,
)

log = logging.getLogger(__name__)

REPORT_FILE = "ingest_report.json"
# What makes a file already on disk count as copied: its size, or its size and MD5 (the ETag).
VERIFY_MODES = ("size", "etag")


@dataclass(frozen=True)
class Part:
    """One part of a copy: the bins whose keys fall in ``[start, stop)``, or, with a file list,
    the ``index``-th of ``count`` equal slices of its ids.

    Keys are compared as ``<id>.<suffix>`` strings, which sorts a bin's image and its metadata
    document the same way (``.`` sorts before every id character except ``-``, and ends every
    id), so a range holds whole bins and a listing can stop at the first key past ``stop``.
    An empty ``start`` or ``stop`` leaves that end open.
    """

    index: int = 0
    count: int = 1
    start: str = ""
    stop: str = ""
    objects: int | None = None  # expected number of objects, for progress; None if unknown

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"part {self.index} of {self.count} does not exist")
        for bound in (self.start, self.stop):
            if bound and not abid.is_valid_bin_id(bound):
                raise ValueError(f"part bound {bound!r} is not a bin id")

    def holds(self, remainder: str) -> bool:
        """True when a key (relative to its folder, e.g. ``00012.jpg``) is in this range."""
        return (not self.start or remainder >= self.start + ".") and (
            not self.stop or remainder < self.stop + "."
        )

    def past(self, remainder: str) -> bool:
        """True when a key sorts after this range, so that a listing can stop."""
        return bool(self.stop) and remainder >= self.stop + "."

    def to_dict(self) -> dict[str, str]:
        """Strings only: KFP passes loop items as JSON and turns numbers into floats."""
        data = {"index": self.index, "count": self.count, "start": self.start, "stop": self.stop}
        if self.objects is not None:
            data["objects"] = self.objects
        return {k: str(v) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> Part:
        """Rebuild from :meth:`to_dict` output (numbers may arrive as floats or strings)."""
        objects = data.get("objects")
        return cls(
            index=int(float(data.get("index", 0))),
            count=int(float(data.get("count", 1))),
            start=str(data.get("start") or ""),
            stop=str(data.get("stop") or ""),
            objects=int(float(objects)) if objects not in (None, "") else None,
        )

    @classmethod
    def parse(cls, text: str) -> Part:
        """Parse ``START:STOP`` (a key range; either side may be empty) or a JSON object."""
        if text.lstrip().startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except (json.JSONDecodeError, TypeError, ValueError) as err:
                raise ValueError(f"--part {text!r} is not a part description: {err}") from None
        start, sep, stop = text.partition(":")
        if not sep:
            raise ValueError(f"--part must look like START:STOP (bin ids), got {text!r}")
        return cls(start=start, stop=stop)

    def slice(self, items: list) -> list:
        """This part's share of ``items`` (the ``index``-th of ``count`` equal slices)."""
        size = len(items)
        return items[self.index * size // self.count : (self.index + 1) * size // self.count]

    def describe(self) -> str:
        """A short label for logs and reports."""
        return f"part {self.index + 1}/{self.count} [{self.start or '-'}, {self.stop or '-'})"


WHOLE = Part()


@dataclass
class IngestReport:
    """What ingest copied, skipped and failed to copy."""

    source: str
    part: str = WHOLE.describe()
    objects: int = 0
    copied: int = 0
    skipped_present: int = 0
    bytes_copied: int = 0
    retries: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    refused_keys: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IngestReport:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**data)

    def summary(self) -> str:
        """One line for logs and the command line."""
        return (
            f"{self.copied} copied, {self.skipped_present} already present, "
            f"{len(self.failed)} failed, {len(self.refused_keys)} keys refused, "
            f"{self.retries} retried requests ({self.objects} objects in {self.seconds:.1f}s)"
        )


@dataclass(frozen=True)
class _Object:
    relative: str  # key relative to the source prefix, e.g. "bin-images/00001.jpg"
    size: int | None  # from the listing; None when only a file list named it
    etag: str | None = None


# -- what to copy ----------------------------------------------------------------------------


def show_plan(plan: list[Part], settings=None) -> str:
    """A plan as the plan commands print it: one JSON line per part, each a ``--part`` value."""
    return "\n".join(json.dumps(part.to_dict()) for part in plan)


def plan_outputs(plan: list[Part], unit: str = "objects", objects_per_unit: int = 1) -> list[dict]:
    """A plan as a pipeline's plan task returns it: one dict per part, for the part tasks' ``part``
    input; each part is printed to the task's log with its size in ``unit``."""
    for part in plan:
        print(part.describe(), f"~{part.objects // objects_per_unit} {unit}")
    return [part.to_dict() for part in plan]


def _escapes(relative: str) -> bool:
    path = PurePosixPath(relative)
    return path.is_absolute() or ".." in path.parts or relative.startswith("/")


# Keys asked for in each folder's first listing page: the first GET waits for it (later: 1,000).
FIRST_PAGE = 100
_FOLDERS = (abid.IMAGE_DIR, abid.METADATA_DIR)


def list_objects(reader: ObjectReader, source: S3Uri, report: IngestReport, part: Part = WHOLE):
    """List the bin images and metadata of ``part`` under ``source``, in bin order.

    The two folders are listed side by side, page by page, and merged: each bin's image and
    metadata come together, so a copy stopped halfway holds whole bins and a limited copy stops
    listing once it has its bins. Memory stays flat. Keys that would land outside the output
    (``..``, absolute) or are not ``bin-images/<id>.jpg`` or ``metadata/<id>.json`` are reported.
    """
    folders = [_folder_objects(reader, source, folder, report, part) for folder in _FOLDERS]
    return heapq.merge(*folders, key=_bin_order)


def _bin_order(obj: _Object) -> str:
    """``<id>.<suffix>``: S3's order in both folders (see Part); ``.jpg`` before ``.json``."""
    return obj.relative.partition("/")[2]


def _folder_objects(
    reader: ObjectReader, source: S3Uri, folder: str, report: IngestReport, part: Part
) -> Iterator[_Object]:
    """The valid objects of one folder of ``part``, in key order; refused keys are reported."""
    for item in _list_range(reader, source.key(folder) + "/", part, FIRST_PAGE):
        relative = source.relative(item.key)
        if _escapes(relative):
            report.refused_keys[item.key] = "key would be written outside the output"
        elif abid.split_key(relative) is None:
            report.refused_keys[item.key] = "not a bin image or metadata key"
        else:
            yield _Object(relative, item.size, item.etag)


def _list_range(
    reader: ObjectReader, prefix: str, part: Part, first_page: int | None = None
) -> Iterator[ListedObject]:
    """The listing entries under ``prefix`` whose keys fall in ``part``, in key order."""
    # Every key of the range sorts after "<prefix><start>" (see Part).
    start_after = prefix + part.start if part.start else ""
    for item in reader.list(prefix, start_after=start_after, first_page=first_page):
        remainder = item.key[len(prefix) :]
        if part.past(remainder):
            return
        if part.holds(remainder):
            yield item


def _limited(objects: Iterable[_Object], limit: int | None) -> Iterator[_Object]:
    """Keep the objects of the first ``limit`` bins (objects in bin order, a bin counted by its
    image); stop at the first image past them, so the listing goes no further."""
    if not limit:
        yield from objects
        return
    wanted: set[str] = set()
    for obj in objects:
        kind, bin_id = abid.split_key(obj.relative)
        if kind == "image" and bin_id not in wanted:
            if len(wanted) == limit:
                return
            wanted.add(bin_id)
        if bin_id in wanted:
            yield obj


def _objects_for_ids(ids: Iterable[str]) -> Iterator[_Object]:
    for bin_id in ids:
        yield _Object(abid.image_key(bin_id), None)
        yield _Object(abid.metadata_key(bin_id), None)


# -- copying ---------------------------------------------------------------------------------


class _Copier:
    """Copies one object at a time; shared by the worker threads."""

    def __init__(self, reader: ObjectReader, source: S3Uri, out: Path, verify: str):
        self.reader, self.source, self.out, self.verify = reader, source, out, verify
        self.root = out.resolve()
        self.prefix = os.path.join(self.root, "")
        self.folders: set[Path] = set()

    def target(self, relative: str) -> Path:
        # Listed keys were already checked (abid.split_key); this is the last line of defence,
        # in string operations because a resolve() per object costs system calls.
        path = os.path.normpath(os.path.join(self.root, relative))
        if not path.startswith(self.prefix):
            raise ValueError(f"key {relative!r} would be written outside {str(self.out)!r}")
        return Path(path)

    def present(self, obj: _Object, path: Path) -> bool:
        try:
            size_on_disk = path.stat().st_size
        except FileNotFoundError:
            return False
        size, etag = obj.size, obj.etag
        if size is None or (self.verify == "etag" and etag is None):
            info = self.reader.head(self.source.key(obj.relative))
            size, etag = info.size, info.etag
        if size_on_disk != size:
            return False
        return self.verify != "etag" or _same_content(path, etag)

    def copy(self, obj: _Object) -> tuple[str, int]:
        path = self.target(obj.relative)
        if self.present(obj, path):
            return "present", 0
        body = self.reader.get(self.source.key(obj.relative))
        if path.parent not in self.folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.folders.add(path.parent)
        # One fixed temporary name per object: a killed run leaves at most one stale file per
        # key, which the next attempt overwrites; readers skip dot-files.
        partial = path.with_name(f".{path.name}.part")
        with open(partial, "wb") as handle:
            handle.write(body)
        os.replace(partial, path)
        return "copied", len(body)


def _same_content(path: Path, etag: str | None) -> bool:
    """Compare a file with an ETag; multipart ETags (``"...-N"``) are not MD5s and pass on size."""
    etag = (etag or "").strip('"')
    if not etag or "-" in etag:
        return True
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False))
    return digest.hexdigest() == etag


class _Tally:
    """Outcomes of the copies, recorded by the worker threads."""

    def __init__(self, report: IngestReport, progress: Progress):
        self.report, self.progress = report, progress
        self.lock = threading.Lock()

    def copy(self, copier: _Copier, obj: _Object) -> None:
        """Copy one object and record what happened; a failure is recorded, never raised."""
        try:
            outcome, size = copier.copy(obj)
        except (S3ObjectError, OSError, ValueError) as err:
            log.warning("could not copy %s: %s", obj.relative, err)
            with self.lock:
                self.report.failed[obj.relative] = str(err)
                self.progress.advance()
            return
        with self.lock:
            if outcome == "present":
                self.report.skipped_present += 1
            else:
                self.report.copied += 1
                self.report.bytes_copied += size
            self.progress.advance()


# A listing still running after this many seconds gets a second, images-only listing that
# estimates the total for the progress ETA. A shorter one (any copy of a few thousand objects)
# gives the exact total when it ends, and the server is spared listing every image key twice.
COUNT_AFTER = 5.0


def _counted(objects: Iterable[_Object], progress: Progress, listed: threading.Event):
    """``objects``, setting ``progress.total`` to their exact number (and ``listed``) at the end."""
    number = 0
    for obj in objects:
        number += 1
        yield obj
    progress.total = number
    listed.set()


def _count_in_background(
    reader: ObjectReader, source: S3Uri, part: Part, progress, listed: threading.Event
) -> None:
    """Estimate the objects to copy (two per image key) with a second listing of the images only,
    so that progress can show an ETA, unless the copy's own listing ends within COUNT_AFTER
    seconds (it then gives the exact total)."""

    def count() -> None:
        if listed.wait(COUNT_AFTER):
            return
        prefix = source.key(abid.IMAGE_DIR) + "/"
        try:
            estimate = 2 * sum(1 for _ in _list_range(reader, prefix, part))
        except S3ObjectError as err:  # progress only; the copy reports listing errors
            log.debug("could not count objects for progress: %s", err)
            return
        if not listed.is_set():  # the exact total wins over the estimate
            progress.total = estimate

    threading.Thread(target=count, name="ingest-count", daemon=True).start()


def copy_bins(
    source: str,
    out: str | Path,
    s3: S3Options,
    *,
    workers: int,
    verify: str,
    part: Part = WHOLE,
    file_list: str | None = None,
    limit: int | None = None,
    retry: RetryPolicy | None = None,
    report_to: str | Path | None = None,
) -> IngestReport:
    """Copy the bins of ``part`` from ``s3://BUCKET[/PREFIX]`` into ``out``; return the report.

    ``workers`` requests are in flight at once. Objects already in ``out`` are skipped when their
    size (``verify="size"``) or also their MD5 (``"etag"``) match. A file list selects bins by id
    (nothing is listed); ``limit`` keeps the first bins. One object that cannot be copied is named
    in the report and the copy goes on. The report goes to ``report_to`` (default ``out``), so
    that parts copying into one folder keep their reports apart. Raises ValueError when nothing
    matched or the source cannot be listed, RuntimeError when every object failed.
    """
    uri = S3Uri.parse(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reader = ObjectReader.open(s3, uri.bucket, max_connections=workers, retry=retry)
    report = IngestReport(source=str(uri), part=part.describe())
    progress = Progress("ingest", total=part.objects, unit="objects")
    if file_list:
        ids = part.slice(abid.read_file_list(file_list, limit, s3))
        objects: Iterable[_Object] = _objects_for_ids(ids)
        progress.total = 2 * len(ids)
    else:
        listed = threading.Event()
        objects = _limited(list_objects(reader, uri, report, part), limit)
        if progress.total is None:
            objects = _counted(objects, progress, listed)
            if not limit:
                _count_in_background(reader, uri, part, progress, listed)
    start = time.monotonic()
    try:
        _run_workers(_Copier(reader, uri, out, verify), objects, workers, _Tally(report, progress))
    except S3ObjectError as err:
        raise ValueError(f"cannot list {uri}: {err.reason}") from err
    finally:
        progress.close()
    report.seconds = round(time.monotonic() - start, 3)
    report.retries = reader.retries
    write_report(report, report_to or out)
    log.info("ingest %s: %s", part.describe(), report.summary())
    _check_copied(report, uri, part)
    return report


def _check_copied(report: IngestReport, uri: S3Uri, part: Part) -> None:
    """Refuse a copy that matched nothing or copied nothing: never an empty success."""
    if report.objects == 0:
        raise ValueError(f"no bin images or metadata matched under {uri} ({part.describe()})")
    if report.copied + report.skipped_present == 0:
        first = next(iter(report.failed.items()))
        raise RuntimeError(
            f"all {report.objects} objects failed to copy from {uri}; first: {first[0]}: {first[1]}"
        )


# Objects listed ahead of the copy: two pages of S3's listing, about 200 KB of memory.
LISTED_AHEAD = 2000


def _run_workers(copier: _Copier, objects: Iterable[_Object], workers: int, tally: _Tally) -> None:
    """Copy ``objects`` on ``workers`` threads, each taking the next object when it is free.

    The listing runs ahead on a thread of its own, at most :data:`LISTED_AHEAD` objects, so that
    no worker waits for the next page (inside the workers' lock, every worker stood idle for each
    page's round trip). No future is made per object. A listing that fails, or a bug, stops the
    copy and is raised here.
    """
    source, take_lock = produced_ahead(objects, LISTED_AHEAD), threading.Lock()
    fatal: list[BaseException] = []

    def take() -> _Object | None:
        with take_lock:
            if fatal:
                return None
            obj = next(source, None)
            if obj is not None:
                tally.report.objects += 1
            return obj

    def work() -> None:
        try:
            while (obj := take()) is not None:
                tally.copy(copier, obj)
        except BaseException as err:  # raised again below, in the caller's thread
            fatal.append(err)

    threads = [threading.Thread(target=work, name=f"ingest-{n}") for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if fatal:
        raise fatal[0]


def write_report(report: IngestReport, out: str | Path) -> None:
    """Write ``ingest_report.json`` into ``out``."""
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def read_report(folder: str | Path) -> IngestReport:
    """Read the ``ingest_report.json`` in ``folder`` (an ingest output or one part of it)."""
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} holds no {REPORT_FILE}: not an ingest output")
    return IngestReport.from_dict(json.loads(path.read_text()))
