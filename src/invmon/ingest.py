"""Ingest: copy bin images and metadata from S3 into a local folder in the bucket's layout.

Many requests are in flight at once over a pooled connection set (small S3 GETs are bound by
latency, not bandwidth). Objects already on disk with the right size are skipped, and every file
is written under a temporary name and renamed when complete, so an interrupted run resumes where it
stopped. Keys are copied exactly as they are: ``121.jpg`` and ``00121.jpg`` are different bins.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from itertools import islice, zip_longest
from pathlib import Path, PurePosixPath

from botocore.exceptions import BotoCoreError, ClientError

from invmon import abid
from invmon.progress import Progress
from invmon.s3 import S3Uri, make_client

log = logging.getLogger(__name__)

REPORT_FILE = "ingest_report.json"
DEFAULT_WORKERS = 32
_BODY_ATTEMPTS = 4


@dataclass
class IngestReport:
    """What ingest copied, skipped and failed to copy."""

    source: str
    objects: int = 0
    copied: int = 0
    skipped_present: int = 0
    bytes_copied: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    refused_keys: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


@dataclass(frozen=True)
class _Object:
    relative: str  # key relative to the source prefix, e.g. "bin-images/00001.jpg"
    size: int | None  # from the listing; None when only a file list named it


def read_file_list(path: str | Path, limit: int | None = None) -> list[str]:
    """Return the bin ids named by the original project's ``file_list.json``.

    The file maps a count to metadata paths (``{"1": ["data/metadata/100313.json", ...]}``). With
    ``limit``, ids are taken in turn from each count so that a small subset keeps every class.
    """
    try:
        groups = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--file-list {str(path)!r} is not a readable JSON file: {err}") from err
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise ValueError(f"--file-list {str(path)!r} must map counts to lists of metadata paths")
    ids: list[str] = []
    seen: set[str] = set()
    for row in zip_longest(*(groups[k] for k in sorted(groups))):
        for entry in row:
            if entry is None:
                continue
            bin_id = PurePosixPath(entry).stem
            if not abid.is_valid_bin_id(bin_id):
                raise ValueError(f"--file-list {str(path)!r}: entry {entry!r} is not a bin path")
            if bin_id not in seen:
                seen.add(bin_id)
                ids.append(bin_id)
    return ids[:limit] if limit else ids


def list_objects(client, source: S3Uri, report: IngestReport) -> Iterator[_Object]:
    """List the bin images and metadata under ``source``, page by page (memory stays flat).

    Keys that are not ``bin-images/<id>.jpg`` or ``metadata/<id>.json`` are recorded in the report
    and skipped.
    """
    paginator = client.get_paginator("list_objects_v2")
    for folder in (abid.IMAGE_DIR, abid.METADATA_DIR):
        prefix = source.key(folder) + "/"
        for page in paginator.paginate(Bucket=source.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                relative = source.relative(item["Key"])
                if abid.split_key(relative) is None:
                    report.refused_keys[item["Key"]] = "not a bin image or metadata key"
                    continue
                yield _Object(relative, int(item["Size"]))


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


class _Copier:
    """Copies one object at a time; shared by the worker threads."""

    def __init__(self, client, source: S3Uri, out: Path, report: IngestReport):
        self.client, self.source, self.out, self.report = client, source, out, report
        self.lock = threading.Lock()

    def target(self, relative: str) -> Path:
        path = (self.out / relative).resolve()
        if not path.is_relative_to(self.out.resolve()):
            raise ValueError(f"key {relative!r} would be written outside {str(self.out)!r}")
        return path

    def present(self, obj: _Object, path: Path) -> bool:
        if not path.is_file():
            return False
        size = obj.size
        if size is None:
            head = self.client.head_object(
                Bucket=self.source.bucket, Key=self.source.key(obj.relative)
            )
            size = int(head["ContentLength"])
        return path.stat().st_size == size

    def fetch(self, key: str) -> bytes:
        """GET an object, retrying bodies that arrive short or break off."""
        for attempt in range(1, _BODY_ATTEMPTS + 1):
            try:
                response = self.client.get_object(Bucket=self.source.bucket, Key=key)
                body = response["Body"].read()
                if len(body) == int(response["ContentLength"]):
                    return body
                error = f"truncated body: {len(body)} of {response['ContentLength']} bytes"
            except BotoCoreError as err:  # connection dropped mid-body, read timeout, ...
                error = str(err)
            if attempt < _BODY_ATTEMPTS:
                time.sleep(0.2 * 2**attempt)
        raise OSError(f"{error} (after {_BODY_ATTEMPTS} attempts)")

    def copy(self, obj: _Object) -> tuple[str, int]:
        path = self.target(obj.relative)
        if self.present(obj, path):
            return "present", 0
        body = self.fetch(self.source.key(obj.relative))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return "copied", len(body)

    def record(self, obj: _Object, future: Future) -> None:
        with self.lock:
            try:
                outcome, size = future.result()
            except (ClientError, BotoCoreError, OSError, ValueError) as err:
                self.report.failed[obj.relative] = str(err)
                log.warning("could not copy %s: %s", obj.relative, err)
                return
            if outcome == "present":
                self.report.skipped_present += 1
            else:
                self.report.copied += 1
                self.report.bytes_copied += size


def ingest(
    source: str,
    out: str | Path,
    endpoint_url: str | None = None,
    anonymous: bool = False,
    file_list: str | Path | None = None,
    limit: int | None = None,
    workers: int = DEFAULT_WORKERS,
) -> IngestReport:
    """Copy bins from ``s3://BUCKET[/PREFIX]`` into ``out``; return (and write) a report.

    Raises ValueError when nothing matched, or when every object failed: an empty copy is never
    reported as a success.
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    uri = S3Uri.parse(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    client = make_client(endpoint_url, anonymous=anonymous, max_connections=workers)
    report = IngestReport(source=str(uri))
    if file_list:
        objects: Iterable[_Object] = _objects_for_ids(read_file_list(file_list, limit))
    else:
        objects = _limited(list_objects(client, uri, report), limit)
    copier = _Copier(client, uri, out, report)
    start = time.monotonic()
    progress = Progress("ingest", total=None, unit="objects")
    _run_bounded(copier, objects, workers, progress, report)
    progress.close()
    report.seconds = round(time.monotonic() - start, 3)
    (out / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if report.objects == 0:
        raise ValueError(f"no bin images or metadata matched under {uri}")
    if report.copied + report.skipped_present == 0:
        raise RuntimeError(f"all {report.objects} objects failed to copy from {uri}")
    return report


def _run_bounded(copier: _Copier, objects, workers: int, progress: Progress, report) -> None:
    """Keep at most ``2 * workers`` copies queued, so memory does not grow with the listing."""
    iterator = iter(objects)
    with ThreadPoolExecutor(workers) as pool:
        pending: dict[Future, _Object] = {}
        while True:
            for obj in islice(iterator, 2 * workers - len(pending)):
                report.objects += 1
                pending[pool.submit(copier.copy, obj)] = obj
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                copier.record(pending.pop(future), future)
                progress.advance()
