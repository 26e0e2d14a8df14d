"""Arrange: label each bin with its item count and lay the data out by class and split.

Input is a folder in the bucket's layout (``bin-images/<id>.jpg`` + ``metadata/<id>.json``, as
ingest writes it). Output is the original project's layout, one folder per count under
``train/``, ``val/`` and ``test/``, plus ``manifest.csv`` (bin_id, count, split), ``dataset.json``
(classes, split, counts, and every dropped bin with its reason) and ``data_report.md`` (counts per
class and split, drops by reason, image size statistics, and the check that no bin is in two
splits).

Each bin is checked before it is kept: its metadata must give ``EXPECTED_QUANTITY`` (dimensions,
weights and SKU keys do not matter for the count), and its image must be a JPEG or PNG whose
header reads and, for a JPEG, whose data ends with the end-of-image marker (a cut-off download
does not). Decoding every pixel is left to preprocess, which skips and names what still fails.

The split is stratified by count and seeded; it depends only on the set of usable bins, the
fractions and the seed, never on file-system order.

``--recounts`` puts recounted counts (:mod:`invmon.data.relabel`) over the recorded ones after the
split, so a bin keeps its split round after round; the source metadata is only read. The
arranged folder lists the applied recounts in ``recounts.csv`` and the recount-verified bins of
each split in ``dataset.json``, which preprocess hands on to evaluate.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from invmon.core.command import Command
from invmon.core.progress import Progress
from invmon.core.settings import Settings, setting
from invmon.data import abid, relabel, workspace
from invmon.data.layout import DATASET_FILE, MANIFEST_FILE, SPLITS, read_manifest
from invmon.data.s3 import S3Options
from invmon.data.transforms import ImageProblem, check_image

log = logging.getLogger(__name__)

REPORT_FILE = "data_report.md"
RECOUNTS_FILE = "recounts.csv"
# How the class folders get their images: hard links (copies across file systems), copies, none
# (preprocess reads the raw folder), or hard links with none as the fallback (pipeline workspace).
IMAGE_MODES = ("link", "copy", "refer", "link-or-refer")
# Bins named per drop reason in the report; the full lists are in dataset.json.
_EXAMPLES = 5


@dataclass(frozen=True)
class ArrangeSettings(Settings):
    """Settings of arrange."""

    raw: str = setting(help="folder in the bucket's layout (from ingest)")
    out: str = setting(help="output folder")
    classes: str = setting("0-5", help="counts to keep: a range or list (1-5 as the original)")
    split: str = setting("0.8,0.1,0.1", help="train,val,test fractions")
    seed: int = setting(0, help="seed of the split")
    images: str = setting(
        "link",
        choices=IMAGE_MODES,
        help="how class folders get their images: link (hard links; copies across file "
        "systems), copy, refer (none: preprocess reads the raw folder) or link-or-refer",
    )
    recounts: str = setting(
        "",
        help="recount files (bin_id,true_count,source,counted_at, as invmon recount import "
        "writes them) whose counts replace the recorded ones: files, folders or s3:// URIs, "
        "comma-separated (empty: none)",
    )
    s3: S3Options = setting(default_factory=S3Options, help="S3 access for s3:// recounts")
    workers: int = setting(8, help="threads reading the bins", minimum=1, cli=False)

    def __post_init__(self):
        super().__post_init__()
        parse_classes(self.classes)  # --classes and --split that do not parse are named now
        parse_split(self.split)


@dataclass(frozen=True)
class ImageStats:
    """Width, height and file size of the kept images: min, median, mean, max."""

    width: tuple[float, float, float, float]
    height: tuple[float, float, float, float]
    kilobytes: tuple[float, float, float, float]

    @classmethod
    def of(cls, sizes: np.ndarray) -> ImageStats:
        """From an (N, 3) array of width, height and bytes."""

        def four(values: np.ndarray) -> tuple[float, float, float, float]:
            if len(values) == 0:
                return (0.0, 0.0, 0.0, 0.0)
            return tuple(round(float(f(values)), 1) for f in (np.min, np.median, np.mean, np.max))

        return cls(four(sizes[:, 0]), four(sizes[:, 1]), four(sizes[:, 2] / 1000))


@dataclass(frozen=True)
class ArrangeReport:
    """What arrange kept and dropped, per class and split."""

    classes: list[int]
    split: dict[str, float]
    seed: int
    kept: int
    counts: dict[str, dict[int, int]]
    dropped: dict[str, int]
    dropped_bins: dict[str, list[str]] = field(repr=False)
    problems: dict[str, str] = field(default_factory=dict, repr=False)
    images: ImageStats | None = None
    layout: str = "folders"
    raw: str = ""
    splits_disjoint: bool = True
    recounts: list[dict] = field(default_factory=list)  # per recount file, what it did
    recount_verified: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


def parse_classes(text: str) -> list[int]:
    """Parse ``"0-5"`` or ``"1,2,3"`` into a sorted list of counts."""
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-", 1))
            values = list(range(low, high + 1))
        else:
            values = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise ValueError(f"--classes must look like 0-5 or 1,2,3, got {text!r}") from None
    if len(values) < 2 or values[0] < 0:
        raise ValueError(f"--classes needs at least two non-negative counts, got {text!r}")
    return values


def parse_split(text: str) -> dict[str, float]:
    """Parse ``"0.8,0.1,0.1"`` into train/val/test fractions that sum to 1."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--split must be three fractions like 0.8,0.1,0.1, got {text!r}"
        ) from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise ValueError(f"--split must be three non-negative fractions summing to 1, got {text!r}")
    if parts[0] == 0 or parts[2] == 0:
        raise ValueError(f"--split needs non-zero train and test fractions, got {text!r}")
    return dict(zip(SPLITS, parts, strict=True))


def scan_raw(raw: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Return ``{bin_id: path}`` for the images and the metadata documents under ``raw``.

    Paths are plain strings: a million ``Path`` objects would cost hundreds of megabytes.
    """
    found: dict[str, dict[str, str]] = {"image": {}, "metadata": {}}
    for folder in (abid.IMAGE_DIR, abid.METADATA_DIR):
        directory = raw / folder
        if not directory.is_dir():
            continue
        for entry in os.scandir(directory):
            parsed = abid.split_key(f"{folder}/{entry.name}")
            if parsed and entry.is_file():
                found[parsed[0]][parsed[1]] = entry.path
    return found["image"], found["metadata"]


@dataclass(frozen=True)
class _Verdict:
    bin_id: str
    count: int | None = None
    reason: str | None = None
    detail: str | None = None
    size: tuple[int, int, int] | None = None


def _inspect(bin_id: str, image: str | None, metadata: str | None, wanted: set[int]) -> _Verdict:
    if metadata is None:
        return _Verdict(bin_id, reason="image without metadata")
    if image is None:
        return _Verdict(bin_id, reason="metadata without image")
    try:
        count = abid.expected_quantity(Path(metadata).read_bytes())
    except abid.MetadataError as err:
        return _Verdict(bin_id, reason="invalid metadata", detail=str(err))
    if count not in wanted:
        return _Verdict(bin_id, reason="count outside classes")
    try:
        size = check_image(Path(image))
    except ImageProblem as err:
        reason = "truncated image" if "truncated" in str(err) else "unreadable image"
        return _Verdict(bin_id, reason=reason, detail=str(err))
    return _Verdict(bin_id, count=count, size=size)


def _in_blocks(pool, items: list, function, block: int = 4096):
    """``pool.map`` a block at a time, so that pending work does not grow with the dataset."""
    for first in range(0, len(items), block):
        yield from pool.map(function, items[first : first + block])


@dataclass
class Labels:
    """The outcome of checking every bin: usable bins with their counts, and the rest by reason."""

    counts: dict[str, int]
    dropped: dict[str, list[str]]
    problems: dict[str, str]
    sizes: np.ndarray  # (kept, 3): width, height, bytes


def label_bins(
    images: dict[str, str],
    metadata: dict[str, str],
    classes: list[int],
    workers: int = 8,
) -> Labels:
    """Check every bin and label the usable ones with their count.

    Files are read by ``workers`` threads (on network volumes the latency, not the CPU, bounds
    this); one bad bin is dropped with its reason and never stops the others.
    """
    wanted = set(classes)
    ids = sorted(images.keys() | metadata.keys())
    progress = Progress("arrange", total=len(ids), unit="bins")
    labels = Labels({}, {}, {}, np.zeros((0, 3), dtype=np.int64))
    sizes = []
    with ThreadPoolExecutor(workers, thread_name_prefix="arrange") as pool:
        for verdict in _in_blocks(
            pool, ids, lambda b: _inspect(b, images.get(b), metadata.get(b), wanted)
        ):
            progress.advance()
            if verdict.reason is not None:
                labels.dropped.setdefault(verdict.reason, []).append(verdict.bin_id)
                if verdict.detail:
                    labels.problems[verdict.bin_id] = verdict.detail
                    log.warning("dropping bin %s: %s", verdict.bin_id, verdict.detail)
                continue
            labels.counts[verdict.bin_id] = verdict.count
            sizes.append(verdict.size)
    progress.close()
    if sizes:
        labels.sizes = np.asarray(sizes, dtype=np.int64)
    return labels


def stratified_split(
    labels: dict[str, int], fractions: dict[str, float], seed: int
) -> dict[str, str]:
    """Assign each bin to a split, class by class, with a seeded shuffle."""
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    by_class: dict[int, list[str]] = {}
    for bin_id, count in sorted(labels.items()):
        by_class.setdefault(count, []).append(bin_id)
    for count in sorted(by_class):
        ids = by_class[count]
        order = rng.permutation(len(ids))
        n_val = round(len(ids) * fractions["val"])
        n_test = round(len(ids) * fractions["test"])
        for rank, index in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            assignment[ids[index]] = split
    return assignment


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link costs no space when both folders share a file system (local runs); pipeline
    # volumes often do not, and then the file is copied.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _same_file_system(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def resolve_image_mode(images: str, raw: Path, out: Path) -> str:
    """Turn ``link-or-refer`` into ``link`` or ``refer`` for these two folders."""
    if images not in IMAGE_MODES:
        raise ValueError(f"--images must be one of {', '.join(IMAGE_MODES)}, got {images!r}")
    if images == "link-or-refer":
        return "link" if _same_file_system(raw, out) else "refer"
    return images


def write_layout(
    out: Path,
    images: dict[str, str],
    labels: dict[str, int],
    assignment: dict[str, str],
    mode: str = "link",
) -> None:
    """Write ``out/<split>/<count>/<id>.jpg`` (unless ``mode`` is ``refer``) and the manifest."""
    for split in SPLITS:
        # Only the folders arrange owns are cleared, so a re-run does not mix two layouts.
        shutil.rmtree(out / split, ignore_errors=True)
    if mode != "refer":
        place = shutil.copyfile if mode == "copy" else _link_or_copy
        made: set[Path] = set()
        for bin_id in sorted(labels):
            folder = out / assignment[bin_id] / str(labels[bin_id])
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            place(images[bin_id], folder / f"{bin_id}{abid.IMAGE_SUFFIX}")
    with open(out / MANIFEST_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["bin_id", "count", "split"])
        for bin_id in sorted(labels):
            writer.writerow([bin_id, labels[bin_id], assignment[bin_id]])


def splits_overlap(out: Path) -> dict[str, list[str]]:
    """Bins found in more than one place of an arranged folder (manifest rows and class folders).

    Empty when every bin is in exactly one split, which is what a leak-free evaluation needs.
    """
    places: dict[str, set[str]] = {}
    rows = read_manifest(out)
    for bin_id, count, split in rows:
        places.setdefault(bin_id, set()).add(f"manifest:{split}/{count}")
    for split in SPLITS:
        if not (out / split).is_dir():
            continue
        for folder in os.scandir(out / split):
            for entry in os.scandir(folder.path) if folder.is_dir() else ():
                bin_id = entry.name[: -len(abid.IMAGE_SUFFIX)]
                places.setdefault(bin_id, set()).add(f"{split}/{folder.name}")
    twice = {}
    for bin_id, where in places.items():
        splits = {w.split(":")[-1].split("/")[0] for w in where}
        if len(splits) > 1 or sum(w.startswith("manifest:") for w in where) > 1:
            twice[bin_id] = sorted(where)
    return twice


def run(settings: ArrangeSettings) -> ArrangeReport:
    """Label, filter and split the bins under ``raw`` into the class-folder layout under ``out``.

    ``raw`` may be an ingest output or a pointer to one in the pipeline workspace. ``images``
    says how the class folders get their files (see ``IMAGE_MODES``). Writes the manifest,
    ``dataset.json`` and ``data_report.md``. Raises ValueError when no usable bin remains: an
    empty dataset is never a success.
    """
    classes = parse_classes(settings.classes)
    raw, out = Path(settings.raw), Path(settings.out)
    if not raw.is_dir():
        raise ValueError(f"--raw {str(raw)!r} is not a folder")
    raw = workspace.resolve(raw)
    image_files, metadata = scan_raw(raw)
    labels = label_bins(image_files, metadata, classes, settings.workers)
    if not labels.counts:
        raise ValueError(
            f"no usable bins under {str(raw)!r}: found {len(image_files)} images and "
            f"{len(metadata)} metadata files; dropped "
            f"{ {k: len(v) for k, v in labels.dropped.items()} }"
        )
    fractions = parse_split(settings.split)
    # The split is made from the recorded counts, so that recounts never move a bin.
    assignment = stratified_split(labels.counts, fractions, settings.seed)
    recounted = _recount(labels, assignment, settings, classes)
    out.mkdir(parents=True, exist_ok=True)
    mode = resolve_image_mode(settings.images, raw, out)
    write_layout(out, image_files, labels.counts, assignment, mode)
    overlap = splits_overlap(out)
    if overlap:
        raise RuntimeError(
            f"bins in more than one split of {str(out)!r}: {dict(list(overlap.items())[:5])}"
        )
    counts = {s: {c: 0 for c in classes} for s in SPLITS}
    for bin_id, split_name in assignment.items():
        counts[split_name][labels.counts[bin_id]] += 1
    if recounted is not None:
        (out / RECOUNTS_FILE).write_text(relabel.recounts_table(recounted, assignment))
    report = ArrangeReport(
        classes=classes,
        split=fractions,
        seed=settings.seed,
        kept=len(labels.counts),
        counts=counts,
        dropped={reason: len(ids) for reason, ids in sorted(labels.dropped.items())},
        dropped_bins=labels.dropped,
        problems=labels.problems,
        images=ImageStats.of(labels.sizes),
        layout="folders" if mode != "refer" else "raw",
        raw=str(raw.resolve()),
        splits_disjoint=not overlap,
        recounts=[f.to_dict() for f in recounted.files] if recounted else [],
        recount_verified=relabel.verified_by_split(recounted.applied, assignment)
        if recounted
        else {},
    )
    (out / DATASET_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (out / REPORT_FILE).write_text(markdown_report(report))
    return report


def _recount(labels: Labels, assignment: dict, settings: ArrangeSettings, classes: list[int]):
    """Put the recounts over ``labels.counts`` (in place; a bin recounted outside the classes
    leaves ``assignment`` too); None when there are none."""
    if not settings.recounts:
        return None
    files = relabel.read_recount_files(
        settings.recounts, settings.s3.endpoint_url, settings.s3.anonymous
    )
    result = relabel.overlay(labels.counts, files, classes)
    labels.counts = result.counts
    for bin_id in result.dropped:
        del assignment[bin_id]
    if result.dropped:
        labels.dropped["recounted outside classes"] = result.dropped
    return result


def markdown_report(report: ArrangeReport) -> str:
    """The data report: bins per class and split, drops by reason, image sizes, checks."""
    lines = [
        "# Data report",
        "",
        f"{report.kept} usable bins, classes {report.classes}, split "
        + " / ".join(f"{s} {report.split[s]:g}" for s in SPLITS)
        + f" (seed {report.seed}).",
        "",
        "## Bins per class and split",
        "",
        "| count | " + " | ".join(SPLITS) + " | total |",
        "|---:|" + "---:|" * (len(SPLITS) + 1),
    ]
    for c in report.classes:
        row = [report.counts[s][c] for s in SPLITS]
        lines.append(f"| {c} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    totals = [sum(report.counts[s].values()) for s in SPLITS]
    lines.append("| **all** | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
    lines += ["", "## Dropped bins", ""]
    if report.dropped:
        lines += ["| reason | bins | for example |", "|---|---:|---|"]
        for reason, n in report.dropped.items():
            examples = ", ".join(f"`{b}`" for b in report.dropped_bins[reason][:_EXAMPLES])
            lines.append(f"| {reason} | {n} | {examples} |")
        named = list(report.problems.items())[:_EXAMPLES]
        if named:
            lines += ["", "Problems found:", ""]
            lines += [f"- `{bin_id}`: {problem}" for bin_id, problem in named]
        lines += ["", f"Every dropped bin is listed in `{DATASET_FILE}`."]
    else:
        lines.append("None.")
    lines += ["", "## Images of the usable bins", ""]
    if report.images is not None:
        lines += ["| | min | median | mean | max |", "|---|---:|---:|---:|---:|"]
        for name, values in (
            ("width (px)", report.images.width),
            ("height (px)", report.images.height),
            ("file size (KB)", report.images.kilobytes),
        ):
            lines.append(f"| {name} | " + " | ".join(f"{v:g}" for v in values) + " |")
    lines += [
        "",
        "## Checks",
        "",
        "- every bin is in exactly one split: " + ("yes" if report.splits_disjoint else "**no**"),
        "- images: "
        + ("in class folders" if report.layout == "folders" else f"read from `{report.raw}`"),
    ]
    lines += [*relabel.report_lines(report.recounts, report.recount_verified), ""]
    return "\n".join(lines)


def summarize(report: ArrangeReport) -> str:
    """A short human-readable summary for the command line."""
    per_split = ", ".join(f"{s} {sum(report.counts[s].values())}" for s in SPLITS)
    text = f"arranged {report.kept} bins ({per_split}) into classes {report.classes}"
    if report.dropped:
        text += "; dropped " + ", ".join(f"{n} ({r})" for r, n in report.dropped.items())
    return text


ARRANGE = Command(
    ArrangeSettings,
    run,
    description="Label each bin with EXPECTED_QUANTITY and write <split>/<count>/<id>.jpg plus "
    "manifest.csv.",
    show=lambda report, settings: (
        f"{summarize(report)} -> {settings.out} (report: {settings.out}/{REPORT_FILE})"
    ),
)
