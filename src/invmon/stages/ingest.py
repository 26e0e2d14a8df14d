"""Ingest: copy bin images and metadata from S3 into a local folder in the bucket's layout.

Many requests are in flight at once over a pooled connection set (small S3 GETs are bound by
latency, not bandwidth), and each is retried with backoff when S3 throttles (503 SlowDown), fails
(5xx), times out, drops the connection or sends a short body. Objects already on disk with the
right size (or, with ``verify="etag"``, the right MD5) are skipped, and every file is written under
a temporary name and renamed when complete, so a killed run resumes where it stopped. Keys are
copied exactly as they are: ``121.jpg`` and ``00121.jpg`` are different bins.

At scale the copy is split into parts: :func:`plan_parts` lists the image keys once (keeping only
a bounded sample of them) and cuts the bins into contiguous key ranges of about equal size; each
part runs :func:`ingest` on its range (in the pipeline: one task per part under
``dsl.ParallelFor``), and :func:`merge_parts` joins the parts' reports and folders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path, PurePosixPath

from botocore.exceptions import BotoCoreError, ClientError

from invmon.core.progress import Progress
from invmon.data import abid, workspace
from invmon.data.s3 import (
    ListedObject,
    ObjectReader,
    RetryPolicy,
    S3ObjectError,
    S3Uri,
    is_s3_uri,
    make_client,
)

log = logging.getLogger(__name__)

REPORT_FILE = "ingest_report.json"
DEFAULT_WORKERS = 32
VERIFY_MODES = ("size", "etag")
# A planner keeps at most this many image keys in memory to place the part boundaries.
_PLAN_SAMPLE = 4096


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


def read_file_list(
    path: str | Path, limit: int | None = None, endpoint_url=None, anonymous=False
) -> list[str]:
    """Return the bin ids named by the original project's ``file_list.json`` (a path or s3:// URI).

    The file maps a count to metadata paths (``{"1": ["data/metadata/100313.json", ...]}``). With
    ``limit``, ids are taken in turn from each count so that a small subset keeps every class.
    """
    try:
        if is_s3_uri(str(path)):
            uri = S3Uri.parse(str(path))
            client = make_client(endpoint_url, anonymous=anonymous)
            text = client.get_object(Bucket=uri.bucket, Key=uri.prefix)["Body"].read()
        else:
            text = Path(path).read_text()
        groups = json.loads(text)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, ClientError, BotoCoreError) as err:
        raise ValueError(f"--file-list {str(path)!r} is not a readable JSON file: {err}") from err
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise ValueError(f"--file-list {str(path)!r} must map counts to lists of metadata paths")
    ids: list[str] = []
    seen: set[str] = set()
    for row in zip_longest(*(groups[k] for k in sorted(groups))):
        for entry in row:
            if entry is None:
                continue
            bin_id = PurePosixPath(str(entry)).stem
            if not abid.is_valid_bin_id(bin_id):
                raise ValueError(f"--file-list {str(path)!r}: entry {entry!r} is not a bin path")
            if bin_id not in seen:
                seen.add(bin_id)
                ids.append(bin_id)
    return ids[:limit] if limit else ids


def _escapes(relative: str) -> bool:
    path = PurePosixPath(relative)
    return path.is_absolute() or ".." in path.parts or relative.startswith("/")


def list_objects(reader: ObjectReader, source: S3Uri, report: IngestReport, part: Part = WHOLE):
    """List the bin images and metadata of ``part`` under ``source``, page by page.

    Memory stays flat however many objects there are. Keys that would land outside the output
    folder (``..``, absolute) and keys that are not ``bin-images/<id>.jpg`` or
    ``metadata/<id>.json`` are recorded in the report and skipped.
    """
    for folder in (abid.IMAGE_DIR, abid.METADATA_DIR):
        for item in _list_range(reader, source.key(folder) + "/", part):
            relative = source.relative(item.key)
            if _escapes(relative):
                report.refused_keys[item.key] = "key would be written outside the output"
            elif abid.split_key(relative) is None:
                report.refused_keys[item.key] = "not a bin image or metadata key"
            else:
                yield _Object(relative, item.size, item.etag)


def _list_range(reader: ObjectReader, prefix: str, part: Part) -> Iterator[ListedObject]:
    """The listing entries under ``prefix`` whose keys fall in ``part``, in key order."""
    # Every key of the range sorts after "<prefix><start>" (see Part).
    for item in reader.list(prefix, start_after=prefix + part.start if part.start else ""):
        remainder = item.key[len(prefix) :]
        if part.past(remainder):
            return
        if part.holds(remainder):
            yield item


def _limited(objects: Iterable[_Object], limit: int | None) -> Iterator[_Object]:
    """Keep the objects of the first ``limit`` bins (by image listing order)."""
    if not limit:
        yield from objects
        return
    wanted: set[str] = set()
    for obj in objects:
        kind, bin_id = abid.split_key(obj.relative)
        if kind == "image" and len(wanted) < limit:
            wanted.add(bin_id)
        if bin_id in wanted:
            yield obj


def _objects_for_ids(ids: Iterable[str]) -> Iterator[_Object]:
    for bin_id in ids:
        yield _Object(abid.image_key(bin_id), None)
        yield _Object(abid.metadata_key(bin_id), None)


def _slice(items: list, part: Part) -> list:
    return items[
        part.index * len(items) // part.count : (part.index + 1) * len(items) // part.count
    ]


# -- planning parts --------------------------------------------------------------------------


def _image_ids(reader: ObjectReader, source: S3Uri, limit: int | None) -> Iterator[str]:
    """Bin ids of the image keys in key order (the first ``limit`` + 1 at most)."""
    seen = 0
    for item in reader.list(source.key(abid.IMAGE_DIR) + "/"):
        parsed = abid.split_key(source.relative(item.key))
        if parsed is None:
            continue
        yield parsed[1]
        seen += 1
        if limit and seen > limit:
            return


def plan_parts(
    source: str,
    parts: int,
    endpoint_url: str | None = None,
    anonymous: bool = False,
    file_list: str | Path | None = None,
    limit: int | None = None,
) -> list[Part]:
    """Cut the bins under ``source`` into ``parts`` contiguous key ranges of about equal size.

    The image keys are listed once (one request per 1,000 keys); only an evenly spaced sample of
    at most a few thousand ids is kept, so memory does not grow with the bucket. With a file list
    nothing is listed: part ``i`` takes the ``i``-th slice of its ids. Raises ValueError when no
    bin matched.
    """
    if parts < 1:
        raise ValueError(f"--parts must be >= 1, got {parts}")
    uri = S3Uri.parse(source)
    if file_list:
        ids = read_file_list(file_list, limit, endpoint_url, anonymous)
        if not ids:
            raise ValueError(f"--file-list {str(file_list)!r} names no bins")
        count = min(parts, len(ids))
        return [Part(i, count, objects=2 * len(_slice(ids, Part(i, count)))) for i in range(count)]
    reader = ObjectReader(make_client(endpoint_url, anonymous=anonymous), uri.bucket)
    sample: list[str] = []
    step, total, after_limit = 1, 0, ""
    for bin_id in _image_ids(reader, uri, limit):
        if limit and total == limit:
            after_limit = bin_id  # the first bin past the limit ends the last part
            break
        if total % step == 0:
            sample.append(bin_id)
            if len(sample) > _PLAN_SAMPLE:
                sample, step = sample[::2], step * 2
        total += 1
    if total == 0:
        raise ValueError(f"no bin images matched under {uri}")
    count = min(parts, total)
    bounds = [""] + [sample[len(sample) * i // count] for i in range(1, count)] + [after_limit]
    return [
        Part(
            i,
            count,
            bounds[i],
            bounds[i + 1],
            objects=2 * (total * (i + 1) // count - total * i // count),
        )
        for i in range(count)
    ]


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
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
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


def _count_in_background(reader: ObjectReader, source: S3Uri, part: Part, progress) -> None:
    """Estimate the objects to copy (two per image key) with a second listing of the images only,
    so that progress can show an ETA."""

    def count() -> None:
        prefix = source.key(abid.IMAGE_DIR) + "/"
        try:
            progress.total = 2 * sum(1 for _ in _list_range(reader, prefix, part))
        except S3ObjectError as err:  # progress only; the copy reports listing errors
            log.debug("could not count objects for progress: %s", err)

    threading.Thread(target=count, name="ingest-count", daemon=True).start()


def ingest(
    source: str,
    out: str | Path,
    endpoint_url: str | None = None,
    anonymous: bool = False,
    file_list: str | Path | None = None,
    limit: int | None = None,
    workers: int = DEFAULT_WORKERS,
    part: Part | None = None,
    verify: str = "size",
    retry: RetryPolicy | None = None,
    report_to: str | Path | None = None,
) -> IngestReport:
    """Copy bins from ``s3://BUCKET[/PREFIX]`` into ``out``; return (and write) a report.

    ``part`` restricts the copy to one part of a plan (:func:`plan_parts`). Objects already in
    ``out`` are skipped when their size (``verify="size"``) or also their MD5 (``"etag"``) match.
    One object that cannot be copied is named in the report and the copy goes on. The report is
    written to ``report_to`` (default ``out``), so that parts copying into one shared folder keep
    their reports apart. Raises ValueError when nothing matched or the source cannot be listed,
    and RuntimeError when every object failed: an empty copy is never reported as a success.
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if verify not in VERIFY_MODES:
        raise ValueError(f"--verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    part = part or WHOLE
    uri = S3Uri.parse(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    client = make_client(endpoint_url, anonymous=anonymous, max_connections=workers)
    reader = ObjectReader(client, uri.bucket, max_connections=workers, retry=retry)
    report = IngestReport(source=str(uri), part=part.describe())
    progress = Progress("ingest", total=part.objects, unit="objects")
    if file_list:
        ids = _slice(read_file_list(file_list, limit, endpoint_url, anonymous), part)
        objects: Iterable[_Object] = _objects_for_ids(ids)
        progress.total = 2 * len(ids)
    else:
        objects = _limited(list_objects(reader, uri, report, part), limit)
        if progress.total is None and not limit:
            _count_in_background(reader, uri, part, progress)
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
    if report.objects == 0:
        raise ValueError(f"no bin images or metadata matched under {uri} ({part.describe()})")
    if report.copied + report.skipped_present == 0:
        first = next(iter(report.failed.items()))
        raise RuntimeError(
            f"all {report.objects} objects failed to copy from {uri}; first: {first[0]}: {first[1]}"
        )
    return report


def _run_workers(copier: _Copier, objects: Iterable[_Object], workers: int, tally: _Tally) -> None:
    """Copy ``objects`` on ``workers`` threads, each taking the next object when it is free.

    Nothing is queued ahead (memory does not grow with the listing) and no future is made per
    object. A listing that fails, or a bug, stops the copy and is raised here.
    """
    source, take_lock = iter(objects), threading.Lock()
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


# -- merging parts ---------------------------------------------------------------------------


def merge_reports(reports: list[IngestReport]) -> IngestReport:
    """One report for a copy made in parts (which ran side by side: seconds is the longest)."""
    if not reports:
        raise ValueError("no ingest parts to merge")
    merged = IngestReport(source=reports[0].source, part=f"{len(reports)} parts")
    for report in reports:
        for name in ("objects", "copied", "skipped_present", "bytes_copied", "retries"):
            setattr(merged, name, getattr(merged, name) + getattr(report, name))
        merged.failed.update(report.failed)
        merged.refused_keys.update(report.refused_keys)
        merged.seconds = max(merged.seconds, report.seconds)
    return merged


def merge_parts(parts: list[str | Path], out: str | Path) -> IngestReport:
    """Join the folders that the parts of a copy wrote into ``out``, and merge their reports.

    Files are hard-linked where ``out`` shares a file system with the parts (no copy), copied
    otherwise. Parts that wrote into a shared workspace folder (their output is a pointer to it)
    are not moved: ``out`` becomes a pointer to that folder too.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reports = [read_report(part) for part in parts]
    pointers = [workspace.is_pointer(part) for part in parts]
    if any(pointers):
        targets = {str(workspace.resolve(part)) for part in parts}
        if not all(pointers) or len(targets) != 1:
            raise ValueError(f"ingest parts must all point at one workspace folder: {parts}")
        workspace.write_pointer(out, targets.pop())
    else:
        for part in parts:
            _link_tree(Path(part), out)
    merged = merge_reports(reports)
    write_report(merged, out)
    if merged.objects == 0:
        raise ValueError(f"no bin images or metadata matched under {merged.source}")
    return merged


def _link_tree(source: Path, out: Path) -> None:
    for folder in (abid.IMAGE_DIR, abid.METADATA_DIR):
        if not (source / folder).is_dir():
            continue
        (out / folder).mkdir(exist_ok=True)
        for entry in os.scandir(source / folder):
            if entry.name.startswith(".") or not entry.is_file():
                continue  # partial downloads of a killed attempt
            target = out / folder / entry.name
            if target.exists():
                continue
            try:
                os.link(entry.path, target)
            except OSError:  # another file system
                shutil.copyfile(entry.path, target)
