"""Audit in parallel parts: plan the parts, score each on its own, merge the scores.

:func:`plan_parts` (``invmon audit-plan``) lists the bins' metadata once and cuts them into
contiguous key ranges of about equal size (the cut that ingest uses,
:func:`invmon.stages.ingest.cut_parts`), so that every bin falls in exactly one part. Each part
runs ``invmon audit --part`` (in the pipeline, one task per part under ``dsl.ParallelFor``) and
writes its counts, skipped bins and flagged scores; :func:`merge_parts` (``invmon audit-merge``)
ranks all the flags together and writes the one audit.csv, flagged.csv, summary.json and
review.html that a single audit of the same bins writes.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from invmon.core.command import Command
from invmon.core.settings import Settings, setting
from invmon.data.bin_source import BinSource
from invmon.data.bucket_copy import Part, show_plan
from invmon.data.bucket_copy import plan_outputs as plan_outputs  # the plan task's result
from invmon.data.s3 import S3Options
from invmon.stages import audit
from invmon.stages.audit import AUDIT_FILE, PART_FILE, AuditSummary, BinScore
from invmon.stages.ingest import cut_parts


@dataclass(frozen=True)
class AuditPlanSettings(Settings):
    """Settings of audit-plan."""

    source: str = setting(help="folder or s3://BUCKET[/PREFIX] in ABID layout")
    parts: int = setting(help="number of parts", minimum=1)
    s3: S3Options = setting(default_factory=S3Options, help="S3 access")
    limit: int = setting(0, help="most bins (0 = all)", minimum=0)


@dataclass(frozen=True)
class AuditMergeSettings(Settings):
    """Settings of audit-merge."""

    parts: tuple[str, ...] = setting(help="the parts' output folders", positional=True)
    source: str = setting(help="the audited source (for the photos on review.html)")
    out: str = setting(help="output folder")
    s3: S3Options = setting(default_factory=S3Options, help="S3 access")
    labels: str | None = setting(
        None, help="CSV of bin_id,true_count: report the flag's precision and recall"
    )
    thumbnails: int = setting(
        200, help="flagged bins shown with their photo on review.html", minimum=0
    )


def plan_parts(settings: AuditPlanSettings) -> list[Part]:
    """Cut the source's bins into ``settings.parts`` key ranges; ValueError when it has none."""
    reader = BinSource(settings.source, settings.s3.endpoint_url, settings.s3.anonymous, 1)
    plan = cut_parts(reader.bin_ids(), settings.parts, settings.limit or None)
    if not plan:
        raise ValueError(f"--source {settings.source!r} holds no bin metadata")
    return plan


def read_part(folder: str | Path) -> tuple[Part, AuditSummary, list[BinScore]]:
    """The part, its summary and its flagged scores, as ``audit --part`` wrote them."""
    path = Path(folder) / PART_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} holds no {PART_FILE}: not an `audit --part`")
    data = json.loads(path.read_text())
    fields = {k: v for k, v in data["summary"].items() if k not in ("skipped_counts", "quality")}
    flagged = [
        BinScore(**{**s, "probabilities": tuple(s["probabilities"])}) for s in data["flagged"]
    ]
    return Part.from_dict(data["part"]), AuditSummary(**fields), flagged


def _check_cover(parts: list[Part], folders: list[str]) -> None:
    """Refuse parts that are not one plan's, each exactly once, or that leave a gap."""
    count = max(p.count for p in parts)
    if count > 1 and sorted((p.index, p.count) for p in parts) != [
        (i, count) for i in range(count)
    ]:
        raise ValueError(
            f"audit parts {[p.describe() for p in parts]} ({folders}) are not every part of one "
            "plan, each once"
        )
    for before, after in itertools.pairwise(parts):
        if before.stop != after.start:
            raise ValueError(f"audit parts leave a gap: {before.describe()}, {after.describe()}")
    if parts[0].start:
        raise ValueError(f"no audit part holds the bins before {parts[0].start!r}")


def merge_summaries(summaries: list[AuditSummary], source: str) -> AuditSummary:
    """One summary for an audit run in parts (side by side: seconds is the longest)."""
    first = summaries[0]
    for s in summaries[1:]:
        if (s.scorer, s.threshold) != (first.scorer, first.threshold):
            raise ValueError(
                f"audit parts scored differently: {first.scorer} at {first.threshold}, "
                f"{s.scorer} at {s.threshold}"
            )
    merged = AuditSummary(source=source, scorer=first.scorer, threshold=first.threshold)
    merged.classes = next((s.classes for s in summaries if s.classes), [])
    for s in summaries:
        merged.bins, merged.scored = merged.bins + s.bins, merged.scored + s.scored
        merged.flagged += s.flagged
        for reason, ids in s.skipped.items():
            merged.skipped.setdefault(reason, {}).update(ids)
        merged.seconds = max(merged.seconds, s.seconds)
    return merged


def merge_parts(settings: AuditMergeSettings) -> AuditSummary:
    """Rank the flags of every part together; write flagged.csv, summary.json and review.html."""
    if not settings.parts:
        raise ValueError("no audit parts to merge")
    # In key order, the order in which one audit scores the bins (and ranks ties).
    read = sorted(
        ((*read_part(f), f) for f in settings.parts), key=lambda r: (r[0].index, r[0].start)
    )
    _check_cover([r[0] for r in read], [r[3] for r in read])
    summary = merge_summaries([r[1] for r in read], settings.source)
    if summary.bins == 0:
        raise ValueError(f"--source {settings.source!r} holds no bin metadata")
    flagged = [score for r in read for score in r[2]]
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    _join_csv([Path(r[3]) / AUDIT_FILE for r in read], out / AUDIT_FILE)
    if settings.labels:
        truth = audit.read_labels(settings.labels)
        summary.quality = audit.flag_quality(_labelled(out / AUDIT_FILE, truth), truth)
    s3 = settings.s3
    reader = BinSource(settings.source, s3.endpoint_url, s3.anonymous, 4)
    audit.finish(flagged, summary, reader, settings.thumbnails, out)
    return summary


def _join_csv(paths: list[Path], out: Path) -> None:
    """One audit.csv of every bin, in key order, as one audit writes it (streamed: a part's
    file can hold hundreds of thousands of rows)."""
    with open(out.with_suffix(".tmp"), "w", newline="") as whole:
        for index, path in enumerate(paths):
            with open(path, newline="") as handle:
                if index:
                    next(handle, None)  # the header, written once
                shutil.copyfileobj(handle, whole)
    out.with_suffix(".tmp").replace(out)


def _labelled(path: Path, truth: dict[str, int]) -> list[BinScore]:
    """The scores in the joined audit.csv of the bins that have a true count."""
    with open(path, newline="") as handle:
        return [_score_row(row) for row in csv.DictReader(handle) if row["bin_id"] in truth]


def _score_row(row: dict) -> BinScore:
    return BinScore(
        bin_id=row["bin_id"],
        recorded_count=int(row["recorded_count"]),
        predicted_count=int(row["predicted_count"]),
        confidence=float(row["confidence"]),
        recorded_probability=float(row["recorded_probability"]),
        expected_count=float(row["expected_count"]),
        flagged=row["flagged"] == "True",
    )


PLAN = Command(
    AuditPlanSettings,
    plan_parts,
    description="List the bins once and print one JSON line per part (a key range of about "
    "equal size), for `invmon audit --part`.",
    show=show_plan,
)
MERGE = Command(
    AuditMergeSettings,
    merge_parts,
    description="Rank the flags of the parts written by `invmon audit --part` together and write "
    "the one flagged.csv, summary.json and review.html of the whole audit.",
    show=lambda summary, settings: audit.show(summary, settings),
)
