"""Arrange: label each bin with its item count and lay the data out by class and split.

Input is a folder in the bucket's layout (``bin-images/<id>.jpg`` + ``metadata/<id>.json``, as
ingest writes it). Output is the original project's layout, one folder per count under
``train/``, ``val/`` and ``test/``, plus ``manifest.csv`` (bin_id, count, split) and
``dataset.json`` (classes, split, counts, and every dropped bin with its reason).

The split is stratified by count and seeded; it depends only on the set of usable bins, the
fractions and the seed, never on file-system order.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from invmon import abid

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.csv"
DATASET_FILE = "dataset.json"


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


def scan_raw(raw: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Return ``{bin_id: path}`` for the images and the metadata documents under ``raw``."""
    found: dict[str, dict[str, Path]] = {"image": {}, "metadata": {}}
    for folder in (abid.IMAGE_DIR, abid.METADATA_DIR):
        directory = raw / folder
        if not directory.is_dir():
            continue
        for entry in os.scandir(directory):
            parsed = abid.split_key(f"{folder}/{entry.name}")
            if parsed and entry.is_file():
                found[parsed[0]][parsed[1]] = Path(entry.path)
    return found["image"], found["metadata"]


def label_bins(
    images: dict[str, Path], metadata: dict[str, Path], classes: list[int]
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Return ``({bin_id: count}, {reason: [bin_id, ...]})`` for bins usable in ``classes``."""
    labels: dict[str, int] = {}
    dropped: dict[str, list[str]] = {}
    wanted = set(classes)
    for bin_id in sorted(images.keys() | metadata.keys()):
        if bin_id not in metadata:
            dropped.setdefault("image without metadata", []).append(bin_id)
            continue
        if bin_id not in images:
            dropped.setdefault("metadata without image", []).append(bin_id)
            continue
        try:
            count = abid.expected_quantity(metadata[bin_id].read_bytes())
        except abid.MetadataError as err:
            log.warning("bin %s: %s", bin_id, err)
            dropped.setdefault("invalid metadata", []).append(bin_id)
            continue
        if count not in wanted:
            dropped.setdefault("count outside classes", []).append(bin_id)
            continue
        labels[bin_id] = count
    return labels, dropped


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


def write_layout(
    out: Path, images: dict[str, Path], labels: dict[str, int], assignment: dict[str, str]
) -> None:
    """Write ``out/<split>/<count>/<id>.jpg`` and the manifest."""
    for split in SPLITS:
        # Only the folders arrange owns are cleared, so a re-run does not mix two layouts.
        shutil.rmtree(out / split, ignore_errors=True)
    for bin_id in sorted(labels):
        folder = out / assignment[bin_id] / str(labels[bin_id])
        folder.mkdir(parents=True, exist_ok=True)
        _link_or_copy(images[bin_id], folder / f"{bin_id}{abid.IMAGE_SUFFIX}")
    with open(out / MANIFEST_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["bin_id", "count", "split"])
        for bin_id in sorted(labels):
            writer.writerow([bin_id, labels[bin_id], assignment[bin_id]])


def arrange(
    raw: str | Path,
    out: str | Path,
    classes: list[int] | str = "0-5",
    split: dict[str, float] | str = "0.8,0.1,0.1",
    seed: int = 0,
) -> ArrangeReport:
    """Label, filter and split the bins under ``raw`` into the class-folder layout under ``out``.

    Raises ValueError when no usable bin remains: an empty dataset is never a success.
    """
    classes = parse_classes(classes) if isinstance(classes, str) else sorted(classes)
    fractions = parse_split(split) if isinstance(split, str) else split
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise ValueError(f"--raw {str(raw)!r} is not a folder")
    images, metadata = scan_raw(raw)
    labels, dropped = label_bins(images, metadata, classes)
    if not labels:
        raise ValueError(
            f"no usable bins under {str(raw)!r}: found {len(images)} images and "
            f"{len(metadata)} metadata files; dropped { ({k: len(v) for k, v in dropped.items()}) }"
        )
    assignment = stratified_split(labels, fractions, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_layout(out, images, labels, assignment)
    counts = {s: {c: 0 for c in classes} for s in SPLITS}
    for bin_id, split_name in assignment.items():
        counts[split_name][labels[bin_id]] += 1
    report = ArrangeReport(
        classes=classes,
        split=fractions,
        seed=seed,
        kept=len(labels),
        counts=counts,
        dropped={reason: len(ids) for reason, ids in sorted(dropped.items())},
        dropped_bins=dropped,
    )
    (out / DATASET_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def read_manifest(data: str | Path) -> list[tuple[str, int, str]]:
    """Return ``(bin_id, count, split)`` rows of an arranged folder's manifest."""
    path = Path(data) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"{str(data)!r} is not an arranged dataset: {MANIFEST_FILE} is missing")
    with open(path, newline="") as handle:
        return [(r["bin_id"], int(r["count"]), r["split"]) for r in csv.DictReader(handle)]


def read_classes(data: str | Path) -> list[int]:
    """Return the classes an arranged folder was made for."""
    return [int(c) for c in json.loads((Path(data) / DATASET_FILE).read_text())["classes"]]


def summarize(report: ArrangeReport) -> str:
    """A short human-readable summary for the command line."""
    per_split = ", ".join(f"{s} {sum(report.counts[s].values())}" for s in SPLITS)
    text = f"arranged {report.kept} bins ({per_split}) into classes {report.classes}"
    if report.dropped:
        text += "; dropped " + ", ".join(f"{n} ({r})" for r, n in report.dropped.items())
    return text
