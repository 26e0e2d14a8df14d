"""Recounts: flagged bins out to the people who count them, their counts back in one format.

Out (:func:`export_recounts`): the top K flagged bins of an audit become

- ``tasks.json``: Label Studio tasks (its JSON import format), one per bin. The reviewer sees the
  photo and the bin id, not the recorded or predicted count, so the recount is blind; those
  counts travel in the task's data for whoever looks later.
- ``label_config.xml``: the labeling config: the count as one choice over the model's classes,
  plus "cannot tell".
- ``cycle_count.csv``: the work list for a physical count (bin id, recorded count, predicted count)
  with empty ``counted_quantity``, ``counted_at`` and ``counter`` columns to fill in, so the
  filled-in sheet imports as it is.

Images are referenced where Label Studio reads them: an audit of ``s3://`` bins gives ``s3://``
URIs (Label Studio's S3 storage resolves them) or, with ``presign``, presigned HTTPS URLs whose
expiry ``export.json`` and each task state. An audit of a local folder embeds each photo in its
task as a data URI: a local Label Studio shows them with no storage to configure and no file
server to run, at the cost of a larger tasks.json (about 75 kB a bin for ABID's photos).

In (:func:`import_recounts`): a Label Studio JSON export or a cycle-count CSV
(``bin_id,counted_quantity[,counted_at,counter]``) becomes one ``bin_id,true_count,source,
counted_at`` CSV, written to a temporary file and renamed, so a failed import leaves nothing
behind. A bad row is skipped and reported with its reason (an unknown bin, a count outside the
classes, "cannot tell", nothing counted); when a bin was counted more than once with different
results, the latest count wins and the conflict is listed.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import quoteattr

from invmon.data import abid
from invmon.data.s3 import S3Uri, is_s3_uri, make_client

CANNOT_TELL = "cannot tell"
# The names our labeling config gives its tags: an export whose results use other names comes
# from another project.
CHOICE_NAME, IMAGE_NAME = "count", "image"
RECOUNT_COLUMNS = ("bin_id", "true_count", "source", "counted_at")
TASKS_FILE, CONFIG_FILE, WORK_LIST_FILE = "tasks.json", "label_config.xml", "cycle_count.csv"
EXPORT_FILE = "export.json"
WORK_LIST_COLUMNS = (
    "bin_id",
    "recorded_count",
    "predicted_count",
    "counted_quantity",
    "counted_at",
    "counter",
)


# -- out -------------------------------------------------------------------------------------


def label_config(classes: list[int]) -> str:
    """The Label Studio labeling config: the photo, its bin id, the count as one choice."""
    choices = "".join(f'    <Choice value="{c}"/>\n' for c in classes)
    return (
        "<View>\n"
        '  <Header value="How many items are in this bin? Bin $bin_id"/>\n'
        f'  <Image name="{IMAGE_NAME}" value="$image" zoom="true"/>\n'
        f'  <Choices name="{CHOICE_NAME}" toName="{IMAGE_NAME}" choice="single" required="true" '
        'showInline="true">\n'
        f"{choices}"
        f"    <Choice value={quoteattr(CANNOT_TELL)}/>\n"
        "  </Choices>\n"
        "</View>\n"
    )


@dataclass
class ExportReport:
    """What an export wrote and how its images are reached."""

    audit: str
    out: str
    bins: int
    classes: list[int]
    images: str  # "s3", "presigned" or "embedded"
    expires_at: str | None = None

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


def _read_audit(audit: Path) -> tuple[dict, list[dict]]:
    summary_path, flagged_path = audit / "summary.json", audit / "flagged.csv"
    for path in (summary_path, flagged_path):
        if not path.is_file():
            raise FileNotFoundError(f"--audit {str(audit)!r} has no {path.name} (run invmon audit)")
    summary = json.loads(summary_path.read_text())
    if not summary.get("classes"):
        raise ValueError(
            f"--audit {str(audit)!r}: summary.json names no classes (an audit from before "
            "recounts; run invmon audit again)"
        )
    with open(flagged_path, newline="") as handle:
        return summary, list(csv.DictReader(handle))


class _Images:
    """How a task references a bin's photo, decided once per export from the audit's source."""

    def __init__(self, source: str, presign: int, endpoint_url: str | None, anonymous: bool):
        self.source, self.presign = source, presign
        self.expires_at = None
        if not is_s3_uri(source):
            if presign:
                raise ValueError(f"--presign needs an audit of s3:// bins, got {source!r}")
            self.kind = "embedded"
            return
        self.uri = S3Uri.parse(source)
        self.kind = "presigned" if presign else "s3"
        if presign:
            if anonymous:
                raise ValueError("--presign signs URLs: it needs S3 credentials, not --anonymous")
            self.client = make_client(endpoint_url, anonymous=False)
            expiry = datetime.now(UTC) + timedelta(seconds=presign)
            self.expires_at = expiry.isoformat(timespec="seconds")

    def reference(self, bin_id: str) -> str:
        """Where Label Studio finds the photo of ``bin_id``."""
        if self.kind == "embedded":
            path = Path(self.source) / abid.image_key(bin_id)
            return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
        key = self.uri.key(abid.image_key(bin_id))
        if self.kind == "s3":
            return f"s3://{self.uri.bucket}/{key}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.uri.bucket, "Key": key}, ExpiresIn=self.presign
        )


def export_recounts(
    audit: str | Path,
    out: str | Path,
    top: int,
    presign: int = 0,
    endpoint_url: str | None = None,
    anonymous: bool = False,
) -> ExportReport:
    """Write the ``top`` most suspicious flagged bins of ``audit`` as recount work to ``out``."""
    audit, out = Path(audit), Path(out)
    summary, flagged = _read_audit(audit)
    images = _Images(summary["source"], presign, endpoint_url, anonymous)
    chosen = flagged[:top]
    tasks = []
    for rank, row in enumerate(chosen, start=1):
        data = {
            IMAGE_NAME: images.reference(row["bin_id"]),
            "bin_id": row["bin_id"],
            "recorded_count": int(row["recorded_count"]),
            "predicted_count": int(row["predicted_count"]),
            "recorded_probability": float(row["recorded_probability"]),
            "rank": rank,
        }
        if images.expires_at:
            data["image_expires_at"] = images.expires_at
        tasks.append({"data": data})
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / TASKS_FILE, json.dumps(tasks, indent=1) + "\n")
    _write_atomic(out / CONFIG_FILE, label_config(summary["classes"]))
    rows = [[r["bin_id"], r["recorded_count"], r["predicted_count"], "", "", ""] for r in chosen]
    _write_atomic(out / WORK_LIST_FILE, _csv_text(WORK_LIST_COLUMNS, rows))
    report = ExportReport(
        str(audit), str(out), len(chosen), summary["classes"], images.kind, images.expires_at
    )
    _write_atomic(out / EXPORT_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
    return report


# -- in --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recount:
    """One counted bin, from whichever source."""

    bin_id: str
    true_count: int
    source: str
    counted_at: str  # ISO 8601, or "" when the source did not say


@dataclass
class ImportReport:
    """What an import read, wrote, skipped (by reason) and found in conflict."""

    source: str
    kind: str  # "label-studio" or "cycle-count"
    out: str = ""
    read: int = 0
    written: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    conflicts: dict[str, list[int]] = field(default_factory=dict)  # bin: counts, latest last

    def skip(self, reason: str, what: str) -> None:
        """Record that one count was not taken, and why."""
        self.skipped.setdefault(reason, []).append(what)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


class _Checks:
    """The classes a count must be one of and, when known, the bins that exist."""

    def __init__(self, classes: list[int], known_bins: set[str] | None):
        self.classes, self.known_bins = classes, known_bins

    def take(self, bin_id: str, count: str, report: ImportReport) -> int | None:
        """The count as an int, or None after reporting why it is skipped."""
        if self.known_bins is not None and bin_id not in self.known_bins:
            report.skip("unknown bin id", bin_id)
            return None
        if not abid.is_valid_bin_id(bin_id):
            report.skip("invalid bin id", repr(bin_id))
            return None
        text = count.strip()
        if text.lower() == CANNOT_TELL:
            report.skip(CANNOT_TELL, bin_id)
            return None
        if not text:
            report.skip("not counted", bin_id)
            return None
        try:
            value = int(text)
        except ValueError:
            value = None
        if value not in self.classes:
            report.skip("count outside the classes", f"{bin_id}: {text!r} (allowed {self.classes})")
            return None
        return value


def _label_studio_counts(tasks: list, checks: _Checks, report: ImportReport) -> list[Recount]:
    _check_project(tasks, report.source)
    counts = []
    for task in tasks:
        bin_id = str(task["data"]["bin_id"])
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                report.skip("skipped by the reviewer", bin_id)
                continue
            report.read += 1
            choices = [
                choice
                for item in annotation.get("result") or []
                if item.get("from_name") == CHOICE_NAME
                for choice in item.get("value", {}).get("choices", [])
            ]
            if len(choices) != 1:
                report.skip("no single count chosen", bin_id)
                continue
            value = checks.take(bin_id, choices[0], report)
            if value is not None:
                when = annotation.get("updated_at") or annotation.get("created_at") or ""
                who = annotation.get("completed_by")
                who = who.get("email", who.get("id")) if isinstance(who, dict) else who
                source = "label-studio" + (f":{who}" if who not in (None, "") else "")
                counts.append(Recount(bin_id, value, source, when))
    return counts


def _check_project(tasks: list, path: str) -> None:
    """Refuse an export of another project: our tasks carry data.bin_id and our result names."""
    names = {
        (item.get("from_name"), item.get("to_name"), item.get("type"))
        for task in tasks
        for annotation in (task.get("annotations") or [])
        if isinstance(task, dict)
        for item in annotation.get("result") or []
    }
    ours = (CHOICE_NAME, IMAGE_NAME, "choices")
    if any(not isinstance(t, dict) or "bin_id" not in t.get("data", {}) for t in tasks) or (
        names - {ours}
    ):
        seen = ", ".join(sorted(f"{f}->{t} ({k})" for f, t, k in names if (f, t, k) != ours))
        raise ValueError(
            f"--from {path!r} is not an export of an invmon recount project: expected tasks with "
            f"data.bin_id and results of {CHOICE_NAME!r} choices on {IMAGE_NAME!r}"
            + (f", found {seen}" if seen else ", found tasks without data.bin_id")
            + " (export the project made from the label_config.xml of invmon recount export)"
        )


def table_reader(lines, columns: tuple[str, ...], refusal: str) -> csv.DictReader:
    """A CSV reader over ``lines`` whose header has every one of ``columns``.

    Otherwise ValueError: ``refusal`` (what the file is and what it needs), then the header found.
    Recount files, cycle counts and true-count labels are all read through it.
    """
    reader = csv.DictReader(lines)
    if not reader.fieldnames or not set(columns) <= set(reader.fieldnames):
        raise ValueError(f"{refusal}, got {reader.fieldnames}")
    return reader


def _cycle_counts(path: Path, checks: _Checks, report: ImportReport) -> list[Recount]:
    counts = []
    with open(path, newline="") as handle:
        reader = table_reader(
            handle,
            ("bin_id", "counted_quantity"),
            f"--from {str(path)!r} needs a header with bin_id and counted_quantity columns "
            "(and optionally counted_at, counter)",
        )
        for row in reader:
            report.read += 1
            bin_id = (row["bin_id"] or "").strip()
            value = checks.take(bin_id, row["counted_quantity"] or "", report)
            if value is not None:
                counter = (row.get("counter") or "").strip()
                source = "cycle-count" + (f":{counter}" if counter else "")
                counts.append(Recount(bin_id, value, source, (row.get("counted_at") or "").strip()))
    return counts


def parse_moment(text: str) -> datetime | None:
    """An ISO 8601 time (a trailing Z included), or None when there is none to read."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def latest_per_bin(counts: list[Recount], report: ImportReport) -> list[Recount]:
    """One count per bin: the latest by ``counted_at`` (a count without a time ranks before any
    with one; among equals, the later in the file). Different counts of one bin are listed in
    ``report.conflicts``, oldest first."""
    oldest = datetime.min.replace(tzinfo=UTC)
    order = sorted(
        enumerate(counts), key=lambda pair: (parse_moment(pair[1].counted_at) or oldest, pair[0])
    )
    per_bin: dict[str, list[Recount]] = {}
    for _, recount in order:
        per_bin.setdefault(recount.bin_id, []).append(recount)
    for bin_id, seen in per_bin.items():
        if len({r.true_count for r in seen}) > 1:
            report.conflicts[bin_id] = [r.true_count for r in seen]
    return [seen[-1] for seen in per_bin.values()]


def import_recounts(
    path: str | Path,
    out: str | Path,
    classes: list[int],
    known_bins: set[str] | None = None,
) -> ImportReport:
    """Read a Label Studio JSON export or a cycle-count CSV into ``out/recounts-<name>.csv``.

    ``classes`` are the counts allowed; ``known_bins``, when given, the bins that exist (from
    the audit). Returns the report, also written beside the CSV as ``recounts-<name>.json``.
    """
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise FileNotFoundError(f"--from {str(path)!r} does not exist")
    checks = _Checks(classes, known_bins)
    if path.suffix.lower() == ".json":
        report = ImportReport(str(path), "label-studio")
        tasks = _load_json(path)
        counts = _label_studio_counts(tasks, checks, report)
    elif path.suffix.lower() == ".csv":
        report = ImportReport(str(path), "cycle-count")
        counts = _cycle_counts(path, checks, report)
    else:
        raise ValueError(
            f"--from {str(path)!r}: expected a Label Studio JSON export (.json) or a cycle-count "
            "CSV (.csv)"
        )
    kept = sorted(latest_per_bin(counts, report), key=lambda r: r.bin_id)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"recounts-{path.stem}.csv"
    rows = [[getattr(r, c) for c in RECOUNT_COLUMNS] for r in kept]
    _write_atomic(target, _csv_text(RECOUNT_COLUMNS, rows))
    report.out, report.written = str(target), len(kept)
    _write_atomic(target.with_suffix(".json"), json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _load_json(path: Path) -> list:
    try:
        tasks = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--from {str(path)!r} is not JSON: {err}") from None
    if not isinstance(tasks, list):
        raise ValueError(
            f"--from {str(path)!r}: expected Label Studio's JSON export (a list of tasks), got "
            f"a {type(tasks).__name__}"
        )
    return tasks


def read_classes(audit: str | Path) -> tuple[list[int], set[str]]:
    """The model's classes and every scored bin of an audit folder."""
    summary, _ = _read_audit(Path(audit))
    with open(Path(audit) / "audit.csv", newline="") as handle:
        bins = {row["bin_id"] for row in csv.DictReader(handle)}
    return list(summary["classes"]), bins


# -- files -----------------------------------------------------------------------------------


def _csv_text(header, rows) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it: all or nothing."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
