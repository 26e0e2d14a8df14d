"""Drift of the predicted counts: the reference evaluate stores with the model, and the tests.

The reference is what the model answered on the test split: how many images it gave each count,
and its mean confidence (the top class probability). evaluate writes it as ``reference.json``
in the model folder (:func:`write_reference`); ``invmon monitor`` compares every closed window of
live predictions with it by two measures:

- Pearson's chi-squared test of the window's count histogram against the reference shares
  (``scipy.stats.chisquare``): a p-value, small when the window is unlikely under the reference;
- the population stability index, sum over counts of ``(live - ref) * ln(live / ref)`` on the
  shares: 0.1 is usually read as a moderate shift, 0.2 and above as a significant one.

Both get the same add-half smoothing of zero cells, so a count the test split never produced does
not make either infinite.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REFERENCE_FILE = "reference.json"
# Added to every cell of both histograms before taking shares (Jeffreys' add-half smoothing).
SMOOTHING = 0.5


@dataclass(frozen=True)
class Reference:
    """The predicted-count distribution and mean confidence of a model on its test split."""

    classes: list[int]
    counts: list[int]  # images the model gave each class, in the order of ``classes``
    mean_confidence: float
    images: int
    split: str = "test"

    def __post_init__(self):
        if len(self.classes) != len(self.counts) or len(self.classes) < 2:
            raise ValueError(
                f"a reference needs one image count per class (at least two classes), got "
                f"classes {self.classes} and counts {self.counts}"
            )
        if any(c < 0 for c in self.counts) or sum(self.counts) != self.images:
            raise ValueError(
                f"reference counts {self.counts} must be non-negative and sum to its {self.images} "
                "images"
            )

    @property
    def shares(self) -> np.ndarray:
        """The smoothed share of each class."""
        return shares(np.asarray(self.counts, dtype=np.float64))

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Reference:
        """Read a reference; ValueError naming what is missing or wrong."""
        try:
            return cls(
                classes=[int(c) for c in data["classes"]],
                counts=[int(c) for c in data["counts"]],
                mean_confidence=float(data["mean_confidence"]),
                images=int(data["images"]),
                split=str(data.get("split", "test")),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a reference distribution ({err!r} missing or wrong)") from None


def reference_from_predictions(
    classes: list[int], counts: np.ndarray, confidence: np.ndarray, split: str = "test"
) -> Reference:
    """The reference of predicted ``counts`` and their ``confidence`` (top probability)."""
    position = {c: i for i, c in enumerate(classes)}
    histogram = [0] * len(classes)
    for count in counts:
        histogram[position[int(count)]] += 1
    return Reference(
        classes=list(classes),
        counts=histogram,
        mean_confidence=round(float(np.mean(confidence)), 6) if len(confidence) else 0.0,
        images=len(counts),
        split=split,
    )


def write_reference(reference: Reference, folder: str | Path) -> Path:
    """Write ``reference.json`` into ``folder`` atomically (a reader never sees half a file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(reference.to_dict(), indent=2) + "\n"
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".reference-", suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    target = folder / REFERENCE_FILE
    os.replace(temporary, target)
    return target


def read_reference_text(text: str, where: str) -> Reference:
    """A reference from the text of a reference.json; ValueError naming ``where``."""
    try:
        return Reference.from_dict(json.loads(text))
    except (json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def shares(histogram: np.ndarray) -> np.ndarray:
    """Smoothed shares of a histogram (no zero cell)."""
    smoothed = np.asarray(histogram, dtype=np.float64) + SMOOTHING
    return smoothed / smoothed.sum()


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """The population stability index of the ``live`` histogram against ``reference`` shares."""
    observed = shares(live)
    return float(np.sum((observed - reference) * np.log(observed / reference)))


def chi_squared(reference: np.ndarray, live: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-squared statistic and p-value of ``live`` counts against ``reference``
    shares (smoothed like :func:`psi`, so the expected counts sum to the smoothed total)."""
    from scipy.stats import chisquare

    observed = np.asarray(live, dtype=np.float64) + SMOOTHING
    result = chisquare(observed, f_exp=reference * observed.sum())
    return float(result.statistic), float(result.pvalue)
