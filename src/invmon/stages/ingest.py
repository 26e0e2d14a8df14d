"""Ingest: copy bin images and metadata from S3 into a local folder in the bucket's layout.

The copy itself (parallel, retried, resumable) is :mod:`invmon.data.bucket_copy`. At scale it is
split into parts: :func:`plan_parts` (``invmon ingest-plan``) lists the image keys once, keeping
only a bounded sample of them, and cuts the bins into contiguous key ranges of about equal size;
each part runs :func:`run` (``invmon ingest --part``; in the pipeline, one task per part under
``dsl.ParallelFor``) on its range, and :func:`merge_parts` (``invmon ingest-merge``) joins the
parts' reports and folders.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from invmon.core.command import Command
from invmon.core.settings import Settings, setting
from invmon.data import abid, workspace
from invmon.data.bucket_copy import (
    VERIFY_MODES,
    WHOLE,
    IngestReport,
    Part,
    copy_bins,
    read_report,
    show_plan,
    write_report,
)
from invmon.data.bucket_copy import plan_outputs as plan_outputs  # the plan task's result
from invmon.data.s3 import ObjectReader, RetryPolicy, S3Options, S3Uri

# A planner keeps at most this many image keys in memory to place the part boundaries.
_PLAN_SAMPLE = 4096


@dataclass(frozen=True)
class BinSelection(Settings):
    """Which bins of a bucket: the settings that ingest and ingest-plan share."""

    source: str = setting(help="s3://BUCKET[/PREFIX]")
    s3: S3Options = setting(default_factory=S3Options, help="S3 access")
    file_list: str | None = setting(
        None, help="the original project's file_list.json (path or s3://)"
    )
    limit: int | None = setting(None, help="copy at most this many bins", minimum=1)

    def __post_init__(self):
        super().__post_init__()
        S3Uri.parse(self.source)  # a source that is not s3://BUCKET[/PREFIX] is named now


def selection(source: str, endpoint_url: str, anonymous: bool, file_list: str, limit: int) -> dict:
    """:class:`BinSelection`'s fields from a KFP task's parameters, whose empty values ("" and
    0) stand for "not given"."""
    return {
        "source": source,
        "s3": S3Options(endpoint_url=endpoint_url or None, anonymous=anonymous),
        "file_list": file_list or None,
        "limit": limit or None,
    }


@dataclass(frozen=True, kw_only=True)
class IngestSettings(BinSelection):
    """Settings of ingest."""

    out: str = setting(help="output folder")
    workers: int = setting(32, help="requests in flight", minimum=1)
    part: str | None = setting(
        None,
        help="copy one part only: START:STOP (bin ids; either may be empty) or a part "
        "printed by ingest-plan",
    )
    verify: str = setting(
        "size",
        choices=VERIFY_MODES,
        help="what makes a file already on disk count as copied (etag also compares its MD5)",
    )
    # Set by code: the KFP component keeps the report in its artifact when the bins go to the
    # workspace, and tests retry with short waits.
    report_to: str | None = setting(None, help="where the report goes (default: out)", cli=False)
    retry: RetryPolicy | None = setting(None, help="how failed requests are retried", cli=False)

    def __post_init__(self):
        super().__post_init__()
        self.selected_part()  # a --part that does not parse is named now

    def selected_part(self) -> Part:
        """The part to copy (all bins when no part is given)."""
        return Part.parse(self.part) if self.part else WHOLE


@dataclass(frozen=True, kw_only=True)
class PlanSettings(BinSelection):
    """Settings of ingest-plan."""

    parts: int = setting(help="number of parts", minimum=1)


@dataclass(frozen=True)
class MergeSettings(Settings):
    """Settings of ingest-merge."""

    parts: tuple[str, ...] = setting(help="the parts' output folders", positional=True)
    out: str = setting(help="output folder")


def run(settings: IngestSettings) -> IngestReport:
    """Copy the selected bins (or one part of them) into ``settings.out``; return the report.

    See :func:`invmon.data.bucket_copy.copy_bins` for what is skipped, retried and refused.
    """
    return copy_bins(
        settings.source,
        settings.out,
        settings.s3,
        workers=settings.workers,
        verify=settings.verify,
        part=settings.selected_part(),
        file_list=settings.file_list,
        limit=settings.limit,
        retry=settings.retry,
        report_to=settings.report_to,
    )


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


def plan_parts(settings: PlanSettings) -> list[Part]:
    """Cut the selected bins into ``settings.parts`` contiguous key ranges of about equal size.

    The image keys are listed once (one request per 1,000 keys); only an evenly spaced sample of
    at most a few thousand ids is kept, so memory does not grow with the bucket. With a file list
    nothing is listed: part ``i`` takes the ``i``-th slice of its ids. Raises ValueError when no
    bin matched.
    """
    if settings.file_list:
        ids = abid.read_file_list(settings.file_list, settings.limit, settings.s3)
        if not ids:
            raise ValueError(f"--file-list {settings.file_list!r} names no bins")
        count = min(settings.parts, len(ids))
        return [Part(i, count, objects=2 * len(Part(i, count).slice(ids))) for i in range(count)]
    uri = S3Uri.parse(settings.source)
    s3, limit = settings.s3, settings.limit
    reader = ObjectReader.open(s3, uri.bucket)
    plan = cut_parts(_image_ids(reader, uri, limit), settings.parts, limit)
    if not plan:
        raise ValueError(f"no bin images matched under {uri}")
    return plan


def cut_parts(ids: Iterable[str], parts: int, limit: int | None = None) -> list[Part]:
    """Cut bin ids in key order (the first ``limit`` of them) into ``parts`` contiguous key
    ranges of about equal size; none when there is no id.

    Only an evenly spaced sample of at most a few thousand ids is kept, so memory does not grow
    with the bucket. The first range starts open and, without a limit, the last ends open, so
    every bin id falls in exactly one range.
    """
    sample: list[str] = []
    step, total, after_limit = 1, 0, ""
    for bin_id in ids:
        if limit and total == limit:
            after_limit = bin_id  # the first bin past the limit ends the last part
            break
        if total % step == 0:
            sample.append(bin_id)
            if len(sample) > _PLAN_SAMPLE:
                sample, step = sample[::2], step * 2
        total += 1
    if total == 0:
        return []
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


def merge_parts(settings: MergeSettings) -> IngestReport:
    """Join the folders that the parts of a copy wrote into ``settings.out``; merge their reports.

    Files are hard-linked where ``out`` shares a file system with the parts (no copy), copied
    otherwise. Parts that wrote into a shared workspace folder (their output is a pointer to it)
    are not moved: ``out`` becomes a pointer to that folder too.
    """
    parts, out = list(settings.parts), Path(settings.out)
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


INGEST = Command(
    IngestSettings,
    run,
    description="Copy bin-images/ and metadata/ from S3 into a folder, many requests at once, "
    "retrying throttled and failed requests; a re-run resumes.",
    show=lambda report, settings: f"ingest: {report.summary()} -> {settings.out}",
)
PLAN = Command(
    PlanSettings,
    plan_parts,
    description="List the image keys once and print one JSON line per part (a key range of "
    "about equal size), for `invmon ingest --part`.",
    show=show_plan,
)
MERGE = Command(
    MergeSettings,
    merge_parts,
    description="Join the folders written by `invmon ingest --part` (hard links where possible) "
    "and merge their reports.",
    show=lambda report, settings: f"ingest: {report.summary()} -> {settings.out}",
)
