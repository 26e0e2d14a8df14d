"""Ingest: copy bin images and metadata from S3 into a local folder in the bucket's layout.

The copy itself (parallel, retried, resumable) is :mod:`invmon.data.bucket_copy`. At scale it is
split into parts: :func:`plan_parts` lists the image keys once (keeping only a bounded sample of
them) and cuts the bins into contiguous key ranges of about equal size; each part runs
:func:`ingest` on its range (in the pipeline: one task per part under ``dsl.ParallelFor``), and
:func:`merge_parts` joins the parts' reports and folders.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from invmon.data import abid, workspace
from invmon.data.bucket_copy import (
    VERIFY_MODES,
    WHOLE,
    IngestReport,
    Part,
    copy_bins,
    read_file_list,
    read_report,
    write_report,
)
from invmon.data.s3 import ObjectReader, RetryPolicy, S3Options, S3Uri, make_client

DEFAULT_WORKERS = 32
# A planner keeps at most this many image keys in memory to place the part boundaries.
_PLAN_SAMPLE = 4096


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
        ids = read_file_list(file_list, limit, S3Options(endpoint_url, anonymous))
        if not ids:
            raise ValueError(f"--file-list {str(file_list)!r} names no bins")
        count = min(parts, len(ids))
        return [Part(i, count, objects=2 * len(Part(i, count).slice(ids))) for i in range(count)]
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
    return copy_bins(
        source,
        out,
        S3Options(endpoint_url, anonymous),
        workers=workers,
        verify=verify,
        part=part or WHOLE,
        file_list=file_list,
        limit=limit,
        retry=retry,
        report_to=report_to,
    )


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
