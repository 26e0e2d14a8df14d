"""Recounted labels over recorded ones: what arrange does with ``--recounts``.

A recount file is the one format ``invmon recount import`` writes
(``bin_id,true_count,source,counted_at``). :func:`read_recount_files` reads them from a file, a
folder (its ``*.csv`` files) or an ``s3://`` URI (one object, or the ``.csv`` objects under a
prefix); :func:`overlay` puts their counts over the recorded ``EXPECTED_QUANTITY`` of the bins
arrange keeps. The source metadata is only read, never written: the recount files are the record
of what changed, and the arranged dataset says which bins each file confirmed or changed.

Across files, the latest ``counted_at`` wins (a count without a time ranks first, then the order
of the files and of their rows), as ``recount import`` resolves one file.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from invmon.data.recounts import RECOUNT_COLUMNS, Recount, parse_moment, table_reader
from invmon.data.s3 import S3Uri, is_s3_uri, make_client

# Bins named per kind in the data report; every one is in dataset.json.
_EXAMPLES = 5


@dataclass
class RecountFileReport:
    """What one recount file did to the labels."""

    file: str
    rows: int = 0
    confirmed: int = 0  # the recount equals the recorded count
    changed: int = 0  # the recount replaced the recorded count
    not_in_data: list[str] = field(default_factory=list)  # bins arrange did not keep
    outside_classes: list[str] = field(default_factory=list)  # recounted to a count not kept
    bad_rows: list[str] = field(default_factory=list)
    superseded: int = 0  # a later count in another file won

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


def split_uris(text: str) -> list[str]:
    """``URI[,URI...]`` as a list (empty text: none)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def read_recount_files(
    uris: str, endpoint_url: str | None = None, anonymous: bool = False
) -> list[tuple[str, str]]:
    """``(name, text)`` of every recount file the comma-separated ``uris`` name, in order.

    A folder or an S3 prefix gives its ``.csv`` files in name order; one that holds none is an
    error naming it, as is a path that does not exist.
    """
    found: list[tuple[str, str]] = []
    client = None
    for uri in split_uris(uris):
        if is_s3_uri(uri):
            client = client or make_client(endpoint_url, anonymous=anonymous)
            files = _s3_files(client, S3Uri.parse(uri))
        else:
            files = _local_files(Path(uri))
        if not files:
            raise ValueError(f"--recounts {uri!r} holds no .csv recount file")
        found.extend(files)
    return found


def _local_files(path: Path) -> list[tuple[str, str]]:
    if path.is_file():
        return [(str(path), path.read_text(encoding="utf-8"))]
    if path.is_dir():
        return [(str(p), p.read_text(encoding="utf-8")) for p in sorted(path.glob("*.csv"))]
    raise ValueError(f"--recounts {str(path)!r} does not exist (a recount file or folder)")


def _s3_files(client, uri: S3Uri) -> list[tuple[str, str]]:
    def get(key: str) -> str:
        return client.get_object(Bucket=uri.bucket, Key=key)["Body"].read().decode("utf-8")

    if uri.prefix.endswith(".csv"):
        return [(str(uri), get(uri.prefix))]
    prefix = f"{uri.prefix}/" if uri.prefix else ""
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".csv")]
    return [(f"s3://{uri.bucket}/{key}", get(key)) for key in sorted(keys)]


def parse_recount_file(name: str, text: str, report: RecountFileReport) -> list[Recount]:
    """The rows of one recount file; a row that does not parse is listed in ``report``.

    A file without the recount columns is refused, naming it and the columns it needs.
    """
    reader = table_reader(
        io.StringIO(text),
        RECOUNT_COLUMNS,
        f"--recounts: {name!r} is not a recount file: expected the columns "
        f"{','.join(RECOUNT_COLUMNS)} (invmon recount import writes them)",
    )
    rows = []
    for number, row in enumerate(reader, start=2):
        report.rows += 1
        bin_id = (row["bin_id"] or "").strip()
        try:
            count = int((row["true_count"] or "").strip())
        except ValueError:
            report.bad_rows.append(f"line {number}: true_count {row['true_count']!r}")
            continue
        when = (row["counted_at"] or "").strip()
        rows.append(Recount(bin_id, count, (row["source"] or "").strip(), when))
    return rows


@dataclass
class Overlay:
    """The labels after the recounts, and what each file did."""

    recorded: dict[str, int]  # every kept bin with its recorded count
    counts: dict[str, int]  # every kept bin with its label, recounted where a recount says so
    applied: dict[str, tuple[Recount, str]]  # bin -> the recount that won, and its file
    dropped: list[str]  # bins recounted to a count outside the classes
    files: list[RecountFileReport]


def overlay(recorded: dict[str, int], files: list[tuple[str, str]], classes: list[int]) -> Overlay:
    """Put the recounts of ``files`` over the ``recorded`` counts of the kept bins.

    A bin that is not in ``recorded`` is listed and skipped; a bin recounted to a count outside
    ``classes`` leaves the data (its recorded label is known to be wrong, and its true count is
    not one the model learns).
    """
    reports, winners = [], {}
    oldest = datetime.min.replace(tzinfo=UTC)
    order = []
    for position, (name, text) in enumerate(files):
        report = RecountFileReport(name)
        reports.append(report)
        for row, recount in enumerate(parse_recount_file(name, text, report)):
            order.append(
                ((parse_moment(recount.counted_at) or oldest, position, row), recount, report)
            )
    for _, recount, report in sorted(order, key=lambda item: item[0]):
        if recount.bin_id not in recorded:
            report.not_in_data.append(recount.bin_id)
            continue
        if recount.bin_id in winners:
            winners[recount.bin_id][1].superseded += 1
        winners[recount.bin_id] = (recount, report)
    counts, applied, dropped = dict(recorded), {}, []
    for bin_id, (recount, report) in sorted(winners.items()):
        if recount.true_count not in classes:
            report.outside_classes.append(bin_id)
            dropped.append(bin_id)
            del counts[bin_id]
            continue
        same = recount.true_count == recorded[bin_id]
        report.confirmed += same
        report.changed += not same
        counts[bin_id] = recount.true_count
        applied[bin_id] = (recount, report.file)
    return Overlay(dict(recorded), counts, applied, dropped, reports)


def verified_by_split(applied: dict, assignment: dict[str, str]) -> dict[str, list[str]]:
    """The recount-verified bins of each split, sorted."""
    verified: dict[str, list[str]] = {}
    for bin_id in sorted(applied):
        verified.setdefault(assignment[bin_id], []).append(bin_id)
    return verified


def recounts_table(result: Overlay, assignment: dict[str, str]) -> str:
    """``recounts.csv`` of an arranged folder: every applied recount beside the recorded count."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["bin_id", "split", "recorded_count", "true_count", "source", "counted_at"])
    for bin_id, (recount, _file) in sorted(result.applied.items()):
        writer.writerow(
            [
                bin_id,
                assignment[bin_id],
                result.recorded[bin_id],
                recount.true_count,
                recount.source,
                recount.counted_at,
            ]
        )
    return buffer.getvalue()


def report_lines(files: list[dict], verified: dict[str, list[str]]) -> list[str]:
    """The data report's section on recounts (empty when none were given)."""
    if not files:
        return []
    lines = [
        "",
        "## Recounts",
        "",
        "| file | rows | confirmed | changed | not in the data | outside the classes | bad rows |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in files:
        lines.append(
            f"| `{f['file']}` | {f['rows']} | {f['confirmed']} | {f['changed']} | "
            f"{len(f['not_in_data'])} | {len(f['outside_classes'])} | {len(f['bad_rows'])} |"
        )
    for f in files:
        for kind, title in (("not_in_data", "not in the data, skipped"), ("bad_rows", "bad rows")):
            if f[kind]:
                named = ", ".join(f"`{b}`" for b in f[kind][:_EXAMPLES])
                lines.append(f"\n`{f['file']}`, {title}: {named}")
    counts = " / ".join(f"{s} {len(verified.get(s, []))}" for s in ("train", "val", "test"))
    lines += ["", f"Recount-verified bins: {counts} (listed in `recounts.csv`)."]
    return lines
