"""Audit: find the bins whose photo disagrees with their recorded item count.

This is what the product is for. Every bin of a source in ABID's layout (a folder or
``s3://BUCKET/PREFIX`` with ``bin-images/`` and ``metadata/``) is scored by the model, either in
process in batches (``model``) or through a running predictor (``url``). A bin is flagged as a
likely mismatch when the model gives its recorded count (``EXPECTED_QUANTITY``) a probability below
``threshold``: a confident model that sees another count flags it, an unsure one does not.

Outputs in ``out``:

- ``audit.csv``: one row per bin (recorded and predicted count, confidence, probability of the
  recorded count, expected count, flag), written as bins are scored, so an interrupted audit keeps
  what it did;
- ``flagged.csv``: the flagged bins, most suspicious first (the work list for a recount);
- ``summary.json``: counts, the model's classes, skipped bins by reason, and, when true counts
  are given (``labels``, for example from a physical recount), the precision and recall of the flag;
- ``review.html``: the review page (:mod:`invmon.data.review`): the summary and the flagged bins,
  ranked, with photos for the first ``thumbnails`` of them.

A bin that cannot be scored (no image, invalid metadata, an undecodable image, a count outside the
model's classes) is reported with its reason and skipped; it never stops the audit.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from invmon.core.command import Command
from invmon.core.settings import Settings, from_args, help_of, setting, share
from invmon.data import abid
from invmon.data.bin_source import Bin as _Bin
from invmon.data.bin_source import BinSource as _Source
from invmon.data.bin_source import load_bin as _load_bin
from invmon.data.bucket_copy import WHOLE, Part
from invmon.data.recounts import table_reader
from invmon.data.s3 import S3Options
from invmon.serving.client import DEFAULT_MODEL_NAME

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

AUDIT_FILE, FLAGGED_FILE, SUMMARY_FILE = "audit.csv", "flagged.csv", "summary.json"
REVIEW_FILE = "review.html"
# What a part writes for audit-merge instead of flagged.csv, summary.json and review.html.
PART_FILE = "audit_part.json"
COLUMNS = (
    "bin_id",
    "recorded_count",
    "predicted_count",
    "confidence",
    "recorded_probability",
    "expected_count",
    "flagged",
)


@dataclass(frozen=True)
class AuditSettings(Settings):
    """Settings of audit: the bins, the scorer (a model folder or a predictor) and the flag."""

    source: str = setting(help="folder or s3://BUCKET[/PREFIX] in ABID layout")
    out: str = setting(help="output folder")
    s3: S3Options = setting(default_factory=S3Options, help="S3 access")
    # Exactly one of model and url: their options are a required mutually exclusive pair, which
    # AUDIT adds (see _scorer_options).
    model: str | None = setting(None, help="model folder: score in this process", cli=False)
    url: str | None = setting(None, help="predictor base URL: score through it", cli=False)
    name: str = setting(DEFAULT_MODEL_NAME, help="model name at --url")
    threshold: float = share(
        0.1,
        help="flag when the model gives the recorded count a probability below this",
        zero=False,
    )
    labels: str | None = setting(
        None, help="CSV of bin_id,true_count: report the flag's precision and recall"
    )
    batch_size: int = setting(32, help="bins scored per batch", minimum=1)
    workers: int = setting(16, help="reading threads", minimum=1)
    limit: int = setting(0, help="most bins (0 = all)", minimum=0)
    thumbnails: int = setting(
        200,
        help="flagged bins shown with their photo on review.html (the rest are listed)",
        minimum=0,
    )
    device: str = setting("auto", help="auto, cpu or cuda")
    part: str | None = setting(
        None,
        help="score one part only (START:STOP in bin ids, or a part printed by audit-plan) and "
        f"write {PART_FILE} for audit-merge",
    )

    def __post_init__(self):
        if (self.model is None) == (self.url is None):
            raise ValueError("give exactly one of --model DIR and --url URL")
        super().__post_init__()
        self.selected_part()  # a --part that does not parse is named now
        if self.part and self.labels:
            # One part's flags are not the audit's: audit-merge measures them over all parts.
            raise ValueError("--labels goes with a whole audit or audit-merge, not with --part")

    def selected_part(self) -> Part:
        """The part to score (all bins when no part is given)."""
        return Part.parse(self.part) if self.part else WHOLE


@dataclass
class BinScore:
    """The model's view of one bin beside its record."""

    bin_id: str
    recorded_count: int
    predicted_count: int
    confidence: float
    recorded_probability: float
    expected_count: float
    flagged: bool
    probabilities: tuple[float, ...] = ()  # over the model's classes; not in the CSV files


@dataclass
class FlagQuality:
    """How well the flag finds the truly mismatched bins (needs true counts)."""

    labelled_bins: int
    mismatched: int
    flagged_mismatched: int
    precision: float | None
    recall: float | None


@dataclass
class AuditSummary:
    """What an audit scored, flagged and skipped."""

    source: str
    scorer: str
    threshold: float
    classes: list[int] = field(default_factory=list)
    bins: int = 0
    scored: int = 0
    flagged: int = 0
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    quality: FlagQuality | None = None
    seconds: float = 0.0

    def skip(self, reason: str, bin_id: str, detail: str = "") -> None:
        """Record that ``bin_id`` was not scored, and why."""
        self.skipped.setdefault(reason, {})[bin_id] = detail
        log.warning("bin %s skipped: %s %s", bin_id, reason, detail)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        data = asdict(self)
        data["skipped_counts"] = {reason: len(ids) for reason, ids in self.skipped.items()}
        return data


# -- scoring ---------------------------------------------------------------------------------


class _LocalScorer:
    """The model run in this process: images decoded on threads, then one forward per batch."""

    def __init__(self, model_dir: str | Path, pool: ThreadPoolExecutor, device: str = "auto"):
        from invmon.serving.counter import Counter

        self.counter = Counter.from_model_dir(model_dir, device=device, freeze=True)
        self.classes = list(self.counter.config.classes)
        self.pool = pool
        self.name = f"model {model_dir}"

    def score(self, bins: list[_Bin]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        import numpy as np

        from invmon.data.transforms import InvalidImage, prepare

        def decode(b: _Bin):
            try:
                return prepare(b.image, self.counter.image_size)
            except InvalidImage as err:
                return err

        arrays, failed = {}, {}
        for b, result in zip(bins, self.pool.map(decode, bins), strict=True):
            if isinstance(result, Exception):
                failed[b.bin_id] = str(result)
            else:
                arrays[b.bin_id] = result
        if not arrays:
            return {}, failed
        predictions = self.counter.predict_uint8(np.stack(list(arrays.values())))
        return dict(zip(arrays, predictions.probabilities, strict=True)), failed


class _RemoteScorer:
    """A running predictor, asked through V2 with binary data."""

    def __init__(self, url: str, name: str, batch_size: int):
        from invmon.serving.client import PredictorClient

        self.client = PredictorClient(url, name=name, protocol="v2")
        self.batch_size = batch_size
        self.classes: list[int] | None = None
        self.name = f"predictor {url}"

    def score(self, bins: list[_Bin]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        import numpy as np

        from invmon.serving.client import predict_all

        report = predict_all(self.client, {b.bin_id: b.image for b in bins}, self.batch_size)
        probabilities = {}
        for bin_id, answer in report.answers.items():
            if self.classes is None:
                self.classes = sorted(answer.probabilities)
            probabilities[bin_id] = np.array([answer.probabilities[c] for c in self.classes])
        return probabilities, report.failed


def score_bin(b: _Bin, probabilities: np.ndarray, classes: list[int], threshold: float) -> BinScore:
    """Compare the model's probabilities for a bin with its recorded count."""
    import numpy as np

    top = int(np.argmax(probabilities))
    recorded_probability = float(probabilities[classes.index(b.recorded)])
    return BinScore(
        bin_id=b.bin_id,
        recorded_count=b.recorded,
        predicted_count=classes[top],
        confidence=round(float(probabilities[top]), 4),
        recorded_probability=round(recorded_probability, 4),
        expected_count=round(float(probabilities @ np.asarray(classes, dtype=np.float64)), 3),
        flagged=recorded_probability < threshold,
        probabilities=tuple(round(float(p), 4) for p in probabilities),
    )


# -- the stage -------------------------------------------------------------------------------


def run(settings: AuditSettings) -> AuditSummary:
    """Score every bin of the source, flag likely mismatches and write the results to ``out``.

    The scorer is the model folder (``model``, in this process) or a running predictor
    (``url``). ``labels``, an optional CSV of ``bin_id,true_count``, measures the flag's
    precision and recall.
    """
    truth = read_labels(settings.labels) if settings.labels else None
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    s3 = settings.s3
    reader = _Source(settings.source, s3.endpoint_url, s3.anonymous, settings.workers)
    with ThreadPoolExecutor(settings.workers) as pool:
        if settings.model is not None:
            scorer = _LocalScorer(settings.model, pool, settings.device)
        else:
            scorer = _RemoteScorer(settings.url, settings.name, settings.batch_size)
        summary = AuditSummary(
            source=settings.source, scorer=scorer.name, threshold=settings.threshold
        )
        scores = _run(reader, scorer, pool, settings, summary, out / AUDIT_FILE)
        summary.classes = list(scorer.classes or [])
    summary.seconds = round(time.monotonic() - start, 1)
    if settings.part:
        _write_part(scores, summary, settings.selected_part(), out / PART_FILE)
        return summary
    if summary.bins == 0:
        raise ValueError(
            f"--source {settings.source!r} holds no bin metadata ({abid.METADATA_DIR}/<id>.json)"
        )
    if truth is not None:
        summary.quality = flag_quality(scores, truth)
    finish(scores, summary, reader, settings.thumbnails, out)
    return summary


def finish(scores: list[BinScore], summary: AuditSummary, reader, thumbnails: int, out: Path):
    """Write flagged.csv, review.html and summary.json (an audit's or audit-merge's)."""
    _write_flagged(scores, out / FLAGGED_FILE)
    _write_review(scores, summary, reader, thumbnails, out / REVIEW_FILE)
    (out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")


def _write_part(scores: list[BinScore], summary: AuditSummary, part: Part, path: Path) -> None:
    # The flagged bins in scoring order, with their probabilities: the merge ranks them all.
    flagged = [asdict(s) for s in scores if s.flagged]
    data = {"part": part.to_dict(), "summary": summary.to_dict(), "flagged": flagged}
    path.with_suffix(".tmp").write_text(json.dumps(data) + "\n")
    path.with_suffix(".tmp").replace(path)  # a merge never reads a half-written part


def _run(reader, scorer, pool, settings, summary, csv_path: Path) -> list[BinScore]:
    scores: list[BinScore] = []
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        part = settings.selected_part()
        # Every key of the part sorts after its start (see Part), where its listing begins.
        ids = _in_part(reader.bin_ids(start_after=part.start), part)
        for chunk in _chunks(_limited(ids, settings.limit), settings.batch_size):
            summary.bins += len(chunk)
            bins = []
            for loaded in pool.map(lambda i: _load_bin(reader, i), chunk):
                if isinstance(loaded, tuple):
                    summary.skip(*loaded)
                else:
                    bins.append(loaded)
            for score in _score_chunk(bins, scorer, settings.threshold, summary):
                writer.writerow([getattr(score, c) for c in COLUMNS])
                scores.append(score)
            handle.flush()
    return scores


def _score_chunk(bins: list[_Bin], scorer, threshold: float, summary) -> Iterator[BinScore]:
    if not bins:
        return
    probabilities, failed = scorer.score(bins)
    for bin_id, reason in failed.items():
        summary.skip("image not scorable", bin_id, reason)
    for b in bins:
        if b.bin_id not in probabilities:
            continue
        if b.recorded not in scorer.classes:
            summary.skip(
                "recorded count outside the model's classes", b.bin_id, f"recorded {b.recorded}"
            )
            continue
        score = score_bin(b, probabilities[b.bin_id], scorer.classes, threshold)
        summary.scored += 1
        summary.flagged += score.flagged
        yield score


def _in_part(ids: Iterator[str], part: Part) -> Iterator[str]:
    for bin_id in ids:  # in key order: a listing stops past the part
        if part.past(f"{bin_id}.json"):
            return
        if part.holds(f"{bin_id}.json"):
            yield bin_id


def _limited(ids: Iterator[str], limit: int) -> Iterator[str]:
    for position, bin_id in enumerate(ids):
        if limit and position >= limit:
            return
        yield bin_id


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_flagged(scores: list[BinScore], path: Path) -> None:
    flagged = sorted((s for s in scores if s.flagged), key=lambda s: s.recorded_probability)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for score in flagged:
            writer.writerow([getattr(score, c) for c in COLUMNS])


def _write_review(scores, summary: AuditSummary, reader, thumbnails: int, path: Path) -> None:
    from invmon.data import review

    skipped = {reason: len(ids) for reason, ids in summary.skipped.items()}
    totals = review.ReviewSummary(
        summary.source, summary.scorer, summary.scored, summary.flagged, summary.threshold, skipped
    )
    flagged = [s for s in scores if s.flagged]  # a BinScore has every field of a FlaggedRow
    read = lambda bin_id: reader.read(abid.image_key(bin_id))  # noqa: E731
    path.write_text(review.build_page(totals, flagged, summary.classes, read, thumbnails), "utf-8")


def read_labels(path: str | Path) -> dict[str, int]:
    """True counts from a CSV with ``bin_id`` and ``true_count`` columns."""
    with open(path, newline="") as handle:
        reader = table_reader(
            handle,
            ("bin_id", "true_count"),
            f"--labels {str(path)!r} needs a header with bin_id and true_count columns",
        )
        labels = {}
        for line, row in enumerate(reader, start=2):
            try:
                labels[row["bin_id"]] = int(row["true_count"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"--labels {str(path)!r} line {line}: true_count {row['true_count']!r} is not "
                    "an integer"
                ) from None
    return labels


def flag_quality(scores: list[BinScore], truth: dict[str, int]) -> FlagQuality:
    """Precision and recall of the flag against true counts (bins without one are left out)."""
    labelled = [s for s in scores if s.bin_id in truth]
    mismatched = [s for s in labelled if truth[s.bin_id] != s.recorded_count]
    flagged = [s for s in labelled if s.flagged]
    hits = [s for s in mismatched if s.flagged]
    return FlagQuality(
        labelled_bins=len(labelled),
        mismatched=len(mismatched),
        flagged_mismatched=len(hits),
        precision=round(len(hits) / len(flagged), 4) if flagged else None,
        recall=round(len(hits) / len(mismatched), 4) if mismatched else None,
    )


# -- the command -----------------------------------------------------------------------------


def _scorer_options(parser: argparse.ArgumentParser) -> None:
    """--model or --url, exactly one: a required mutually exclusive pair (fields cannot say so)."""
    scorer = parser.add_mutually_exclusive_group(required=True)
    for name in ("model", "url"):
        scorer.add_argument(f"--{name}", help=help_of(AuditSettings, name))


def show(summary: AuditSummary, settings: AuditSettings) -> str:
    """What was scored, flagged and skipped, and the flag's quality against the labels."""
    skipped = sum(len(v) for v in summary.skipped.values())
    line = (
        f"audit: {summary.scored} bins scored, {summary.flagged} flagged as likely mismatches, "
        f"{skipped} skipped, in {summary.seconds:.1f}s -> {settings.out}"
    )
    if summary.quality and summary.quality.mismatched:
        q = summary.quality
        line += (
            f"\nagainst the labels: {q.flagged_mismatched} of {q.mismatched} mismatched bins "
            f"flagged (recall {q.recall}), precision {q.precision}"
        )
    return line


AUDIT = Command(
    AuditSettings,
    run,
    description="Score every bin of a source in ABID's layout with the model (in process, or "
    "through a running predictor) and flag the bins whose recorded count the model finds "
    "unlikely. Writes audit.csv, flagged.csv, summary.json and review.html (the flagged bins "
    "with their photos, for people to review).",
    show=show,
    extend=_scorer_options,
    build=lambda args: from_args(AuditSettings, args, model=args.model, url=args.url),
)
