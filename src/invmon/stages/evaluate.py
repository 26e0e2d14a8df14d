"""Evaluate: how well a trained model counts the bins of the test split.

Counting is ordinal, so beside exact accuracy it reports RMSE and MAE of the count, off-by-one
accuracy, per-class precision and recall, and the confusion matrix; and beside every figure, the
majority-class baseline (always answering the most frequent training count).

Where arrange took recounts, the accuracy on the recount-verified bins of the split (the only
labels known to be right) is reported apart. With ``init_model`` (the starting model of a retrain
round), that model is evaluated on the same split too, for the gate that keeps a round which made
the model worse from being deployed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from invmon.core import html as report
from invmon.core.command import Command
from invmon.core.progress import Progress
from invmon.core.settings import Settings, setting
from invmon.serving.drift import REFERENCE_FILE as REFERENCE_FILE  # the component names it
from invmon.serving.drift import reference_from_predictions, write_reference

if TYPE_CHECKING:
    from invmon.data.shards import DatasetIndex
    from invmon.serving.counter import Counter

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
PREDICTIONS_FILE = "predictions.csv"


@dataclass
class Evaluation:
    """Test-split results of a model, with the majority-class baseline."""

    split: str
    images: int
    classes: list[int]
    accuracy: float
    rmse: float
    mae: float
    off_by_one_accuracy: float
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    baseline_count: int
    baseline_accuracy: float
    baseline_rmse: float
    # What the model ran in: the precision a predictor on this device serves (auto).
    precision: str = "fp32"
    # On the recount-verified bins of the split alone (None: none were recounted).
    verified_images: int = 0
    verified_accuracy: float | None = None
    # The starting model of a retrain round on the same split (None: no starting model).
    init_model: str | None = None
    init_accuracy: float | None = None

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


def count_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, RMSE, MAE and off-by-one accuracy of predicted against true counts."""
    error = predicted.astype(np.float64) - true.astype(np.float64)
    return {
        "accuracy": float(np.mean(error == 0)),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "off_by_one_accuracy": float(np.mean(np.abs(error) <= 1)),
    }


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, classes: list[int]) -> np.ndarray:
    """Rows are true counts, columns predicted counts, in the order of ``classes``."""
    position = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        matrix[position[int(t)], position[int(p)]] += 1
    return matrix


def per_class_scores(matrix: np.ndarray, classes: list[int]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    scores = {}
    for i, c in enumerate(classes):
        tp = matrix[i, i]
        precision = tp / matrix[:, i].sum() if matrix[:, i].sum() else 0.0
        recall = tp / matrix[i, :].sum() if matrix[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[str(c)] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(matrix[i, :].sum()),
        }
    return scores


def majority_count(index: DatasetIndex) -> int:
    """The most frequent count of the training split (ties go to the smaller count)."""
    counts = index.split("train").counts
    values, frequency = np.unique(counts, return_counts=True)
    return int(values[np.argmax(frequency)])


def evaluate(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 128,
    reference_in_model: bool = True,
    init_model: str | None = None,
    endpoint_url: str | None = None,
) -> Evaluation:
    """Evaluate the model folder ``model`` on ``split`` of the preprocessed dataset ``data``.

    Writes metrics.json, predictions.csv, report.html (with the confusion matrix) and
    reference.json (the predicted-count distribution and mean confidence, which ``invmon
    monitor`` compares live predictions with) to ``out``; with ``reference_in_model``,
    reference.json also goes into the model folder. ``init_model`` (a model folder or s3:// URI,
    read through ``endpoint_url``) is evaluated on the same split as the starting model.
    """
    from invmon.data.shards import DatasetIndex
    from invmon.serving.counter import Counter

    counter = Counter.from_model_dir(model, device=device)
    index = DatasetIndex.read(data)
    _check_compatible(counter, index, model, data)
    test = index.split(split)
    if len(test) == 0:
        raise ValueError(f"split {split!r} of {str(data)!r} has no images")
    predicted_counts, expected, confidence = _predict(counter, test, batch_size, "evaluate")
    true_counts = test.counts
    classes = list(index.classes)
    matrix = confusion_matrix(true_counts, predicted_counts, classes)
    baseline = majority_count(index)
    baseline_metrics = count_metrics(true_counts, np.full_like(true_counts, baseline))
    evaluation = Evaluation(
        split=split,
        images=len(test),
        classes=classes,
        **count_metrics(true_counts, predicted_counts),
        per_class=per_class_scores(matrix, classes),
        confusion_matrix=matrix.tolist(),
        baseline_count=baseline,
        baseline_accuracy=baseline_metrics["accuracy"],
        baseline_rmse=baseline_metrics["rmse"],
        precision=counter.precision,
        **_verified(index.verified.get(split, []), test.ids, true_counts, predicted_counts),
    )
    if init_model:
        evaluation.init_model = str(init_model)
        evaluation.init_accuracy = _accuracy_of(
            init_model, index, data, test, batch_size, device, endpoint_url
        )
    _write_outputs(Path(out), evaluation, test.ids, true_counts, predicted_counts, expected)
    # What invmon monitor compares live predictions with: beside the metrics, and in the model
    # folder, which the deployed model's storage URI names.
    reference = reference_from_predictions(
        classes, predicted_counts, np.concatenate(confidence), split
    )
    for folder in (Path(out), *([Path(model)] if reference_in_model else [])):
        write_reference(reference, folder)
    return evaluation


def _predict(counter: Counter, test, batch_size: int, name: str):
    """Predicted counts, expected counts (per batch) and confidences over a split."""
    predicted, expected, confidence = [], [], []
    progress = Progress(name, total=len(test), unit="images")
    for images, _targets in test.batches(batch_size):
        result = counter.predict_uint8(images)
        predicted.append(result.counts)
        expected.append(result.expected)
        confidence.append(result.confidence)
        progress.advance(len(images))
    progress.close()
    return np.concatenate(predicted), expected, confidence


def _verified(verified: list[str], ids, true, predicted) -> dict:
    """The accuracy on the recount-verified bins among ``ids`` (None when there are none)."""
    mask = np.isin(np.asarray(ids), np.asarray(list(verified), dtype=object))
    if not mask.any():
        return {"verified_images": 0, "verified_accuracy": None}
    accuracy = float(np.mean(true[mask] == predicted[mask]))
    return {"verified_images": int(mask.sum()), "verified_accuracy": accuracy}


def _accuracy_of(
    init_model, index: DatasetIndex, data, test, batch_size: int, device, endpoint_url
) -> float:
    """The starting model's accuracy on ``test``, the split the new model was measured on
    (fetched first when on S3)."""
    from invmon.serving.counter import Counter
    from invmon.training.init_model import local_model

    with local_model(str(init_model), endpoint_url) as folder:
        counter = Counter.from_model_dir(folder, device=device)
        _check_compatible(counter, index, init_model, data)
        predicted, _, _ = _predict(counter, test, batch_size, "evaluate starting model")
    return float(np.mean(predicted == test.counts))


def _check_compatible(counter: Counter, index: DatasetIndex, model, data) -> None:
    if tuple(counter.config.classes) != tuple(index.classes):
        raise ValueError(
            f"model {str(model)!r} counts classes {list(counter.config.classes)} but dataset "
            f"{str(data)!r} has classes {list(index.classes)}"
        )
    if counter.config.preprocessing != index.preprocessing:
        raise ValueError(
            f"model {str(model)!r} was trained on {counter.image_size}px images but dataset "
            f"{str(data)!r} was preprocessed at {index.preprocessing.image_size}px"
        )


def _write_outputs(out: Path, evaluation: Evaluation, ids, true, predicted, expected) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
    expected_all = np.concatenate(expected)
    with open(out / PREDICTIONS_FILE, "w") as handle:
        handle.write("bin_id,true_count,predicted_count,expected_count\n")
        for row in zip(ids, true, predicted, expected_all, strict=True):
            handle.write(f"{row[0]},{row[1]},{row[2]},{row[3]:.3f}\n")
    (out / REPORT_FILE).write_text(html_report(evaluation))


def html_report(evaluation: Evaluation) -> str:
    """The evaluation as a self-contained HTML page with a confusion-matrix picture."""
    e = evaluation
    rows = [
        ["accuracy", e.accuracy, e.baseline_accuracy],
        ["RMSE", e.rmse, e.baseline_rmse],
        ["MAE", e.mae, "-"],
        ["off-by-one accuracy", e.off_by_one_accuracy, "-"],
    ]
    if e.verified_accuracy is not None:
        rows.append(
            [f"accuracy, {e.verified_images} recount-verified bins", e.verified_accuracy, "-"]
        )
    if e.init_accuracy is not None:
        rows.append(["accuracy of the starting model", e.init_accuracy, "-"])
    summary = report.table(["metric", "model", "majority baseline"], rows)
    classes = report.table(
        ["count", "precision", "recall", "F1", "support"],
        [[c, s["precision"], s["recall"], s["f1"], s["support"]] for c, s in e.per_class.items()],
    )
    return report.page(
        f"Evaluation on the {e.split} split ({e.images} bins)",
        [
            ("Summary", summary + f"<p>Baseline always answers {e.baseline_count} items.</p>"),
            ("Confusion matrix", report.confusion_matrix_svg(e.confusion_matrix, e.classes)),
            ("Per class", classes),
        ],
    )


@dataclass(frozen=True)
class EvaluateSettings(Settings):
    """Settings of an evaluation: the model, the data and where the report goes."""

    model: str = setting(help="model folder (from train)")
    data: str = setting(help="preprocessed folder (from preprocess)")
    out: str = setting(help="output folder for metrics and report")
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N")
    init_model: str | None = setting(
        None,
        help="the starting model of a retrain round (a model folder or s3:// URI): evaluated "
        "on the same split, for the gate that compares the two",
    )
    endpoint_url: str | None = setting(None, help="S3-compatible endpoint URL for --init-model")
    reference_in_model: bool = setting(
        True,
        help="also write reference.json (the predicted-count distribution on the test split) "
        "into the model folder, where invmon monitor finds it",
    )


def run(settings: EvaluateSettings) -> Evaluation:
    """Evaluate as ``settings`` say (see :func:`evaluate`: every setting is one of its
    parameters, by the same name)."""
    return evaluate(**asdict(settings))


def required_accuracy(min_accuracy: float, init_accuracy: float | None) -> float:
    """The least test accuracy the gate before deploy lets through: ``min_accuracy``, and in a
    retrain round also the starting model's accuracy on the same split."""
    return max(min_accuracy, init_accuracy or 0.0)


def gate_refusal(accuracy: float, min_accuracy: float, init_accuracy: float | None) -> str | None:
    """Why the gate before deploy stops a model of test ``accuracy``; None when it passes."""
    if init_accuracy is not None and accuracy < init_accuracy:
        return (
            f"test accuracy {accuracy:.4f} is below the starting model's {init_accuracy:.4f} on "
            "the same split: this round made the model worse"
        )
    if accuracy < min_accuracy:
        return f"test accuracy {accuracy:.4f} is below min_accuracy {min_accuracy}"
    return None


def gate_line(e: Evaluation, min_accuracy: float) -> str:
    """What the gate before deploy makes of ``e``: pass, or which bound it missed."""
    refusal = gate_refusal(e.accuracy, min_accuracy, e.init_accuracy)
    return (
        f"gate: {refusal}; not deployed"
        if refusal
        else f"gate: test accuracy {e.accuracy:.4f} passes"
    )


def _show(e: Evaluation, settings: EvaluateSettings) -> str:
    text = (
        f"test accuracy {e.accuracy:.4f} (baseline {e.baseline_accuracy:.4f}), RMSE "
        f"{e.rmse:.4f} (baseline {e.baseline_rmse:.4f}), off-by-one {e.off_by_one_accuracy:.4f}"
        f" on {e.images} bins"
    )
    if e.verified_accuracy is not None:
        text += f"; {e.verified_accuracy:.4f} on {e.verified_images} recount-verified bins"
    if e.init_accuracy is not None:
        text += f"; starting model {e.init_accuracy:.4f}"
    return text + f" -> {settings.out}"


EVALUATE = Command(
    EvaluateSettings,
    run,
    description="Accuracy, RMSE, off-by-one accuracy, per-class scores and the confusion matrix, "
    "beside the majority-class baseline.",
    show=_show,
)
