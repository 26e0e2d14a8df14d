"""Recount: send an audit's flagged bins to be counted by people, and bring their counts back.

``invmon recount export`` writes the top K flagged bins of an audit as Label Studio tasks (with
the labeling config) and as a cycle-count work list; ``invmon recount import`` reads a Label
Studio JSON export or a filled-in cycle-count CSV into one recount format
(``bin_id,true_count,source,counted_at``). The logic is :mod:`invmon.data.recounts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from invmon.core.command import Command, Verbs
from invmon.core.settings import Settings, setting
from invmon.data.s3 import S3Options

if TYPE_CHECKING:
    from invmon.data.recounts import ExportReport, ImportReport


@dataclass(frozen=True)
class ExportSettings(Settings):
    """Settings of recount export."""

    audit: str = setting(help="audit output folder (summary.json, flagged.csv)")
    out: str = setting(help="output folder")
    top: int = setting(100, help="most suspicious flagged bins to recount", minimum=1)
    presign: int = setting(
        0,
        help="for s3:// bins: presigned HTTPS URLs valid this many seconds instead of s3:// "
        "URIs (0 = s3:// URIs for Label Studio's S3 storage)",
        minimum=0,
        maximum=7 * 24 * 3600,  # S3's longest signature validity
    )
    s3: S3Options = setting(default_factory=S3Options, help="S3 access (for --presign)")


@dataclass(frozen=True)
class ImportSettings(Settings):
    """Settings of recount import."""

    source: str = setting(
        help="Label Studio JSON export (.json) or cycle-count CSV (.csv: "
        "bin_id,counted_quantity[,counted_at,counter])",
        flag="--from",
    )
    out: str = setting(help="output folder (gets recounts-<name>.csv and its report)")
    audit: str | None = setting(
        None, help="audit folder: take its classes and refuse bins it did not score"
    )
    classes: str = setting("0-5", help="counts allowed when --audit is not given")


def export(settings: ExportSettings) -> ExportReport:
    """Write the top flagged bins of an audit as Label Studio tasks and a cycle-count list."""
    from invmon.data.recounts import export_recounts

    return export_recounts(
        settings.audit,
        settings.out,
        settings.top,
        presign=settings.presign,
        endpoint_url=settings.s3.endpoint_url,
        anonymous=settings.s3.anonymous,
    )


def import_(settings: ImportSettings) -> ImportReport:
    """Read recounts from Label Studio or a cycle count into the one recount format."""
    from invmon.data.recounts import import_recounts, read_classes
    from invmon.stages.arrange import parse_classes

    if settings.audit:
        classes, known = read_classes(settings.audit)
    else:
        classes, known = parse_classes(settings.classes), None
    return import_recounts(settings.source, settings.out, classes, known)


def show_export(report: ExportReport, settings: ExportSettings) -> str:
    """What was written and how Label Studio reaches the photos."""
    how = {
        "embedded": "photos embedded in the tasks",
        "s3": "photos as s3:// URIs (connect the bucket as Label Studio S3 storage)",
        "presigned": f"photos as presigned URLs, valid until {report.expires_at}",
    }[report.images]
    return (
        f"recount export: {report.bins} bins -> {settings.out} (tasks.json, label_config.xml, "
        f"cycle_count.csv); {how}"
    )


def show_import(report: ImportReport, settings: ImportSettings) -> str:
    """Counts written, skipped by reason, and conflicts."""
    lines = [
        f"recount import: {report.written} bins from {report.read} {report.kind} counts -> "
        f"{report.out}"
    ]
    for reason, items in sorted(report.skipped.items()):
        lines.append(f"  skipped, {reason}: {len(items)} ({', '.join(items[:5])})")
    for bin_id, counts in sorted(report.conflicts.items()):
        lines.append(f"  conflict, bin {bin_id}: counted {counts}; kept the latest, {counts[-1]}")
    return "\n".join(lines)


EXPORT = Command(
    ExportSettings,
    export,
    description="Write the top flagged bins of an audit as Label Studio tasks (tasks.json and "
    "label_config.xml) and as a cycle-count work list (cycle_count.csv).",
    show=show_export,
)
IMPORT = Command(
    ImportSettings,
    import_,
    description="Read a Label Studio JSON export or a filled-in cycle-count CSV into "
    "recounts-<name>.csv (bin_id,true_count,source,counted_at). Unknown bins, counts outside "
    "the classes and 'cannot tell' are skipped and reported; for a bin counted twice the latest "
    "count wins.",
    show=show_import,
)
RECOUNT = Verbs(
    {
        "export": (EXPORT, "write flagged bins as Label Studio tasks and a cycle-count list"),
        "import": (IMPORT, "read recounts from a Label Studio export or a cycle-count CSV"),
    },
    description="Send an audit's flagged bins to be recounted, and bring the counts back.",
)
