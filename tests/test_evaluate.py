"""Evaluate: count metrics, the confusion matrix, the baseline and the HTML report."""

import json

import numpy as np
import pytest

from invmon.data.shards import DatasetIndex
from invmon.serving.counter import Counter
from invmon.stages.evaluate import confusion_matrix, count_metrics, evaluate, per_class_scores


def test_count_metrics():
    true = np.array([0, 1, 2, 3])
    predicted = np.array([0, 2, 2, 5])
    metrics = count_metrics(true, predicted)
    assert metrics["accuracy"] == 0.5
    assert metrics["rmse"] == pytest.approx(np.sqrt((0 + 1 + 0 + 4) / 4))
    assert metrics["off_by_one_accuracy"] == 0.75


def test_confusion_matrix_and_per_class_scores():
    matrix = confusion_matrix(np.array([1, 1, 2, 3]), np.array([1, 2, 2, 3]), [1, 2, 3])
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    scores = per_class_scores(matrix, [1, 2, 3])
    assert scores["1"]["recall"] == 0.5 and scores["2"]["precision"] == 0.5
    assert scores["3"]["f1"] == 1.0 and scores["1"]["support"] == 2


def test_evaluate_writes_metrics_predictions_and_report(model_dir, shards_dir, tmp_path):
    result = evaluate(model_dir, shards_dir, tmp_path, device="cpu")
    test_images = DatasetIndex.read(shards_dir).splits["test"]["images"]
    assert result.images == test_images and np.array(result.confusion_matrix).sum() == test_images
    assert 0 <= result.accuracy <= 1 and result.rmse >= 0
    assert result.baseline_count in range(6)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == result.accuracy
    assert saved["precision"] == Counter.from_model_dir(model_dir, device="cpu").precision
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == test_images + 1
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and "Confusion matrix" in html and "majority baseline" in html


def test_evaluate_stores_the_reference_distribution_with_the_model(model_dir, shards_dir, tmp_path):
    import shutil

    from invmon.serving.drift import REFERENCE_FILE, Reference

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    evaluate(model, shards_dir, tmp_path / "out", device="cpu")
    saved = Reference.from_dict(json.loads((model / REFERENCE_FILE).read_text()))
    predicted = np.loadtxt(
        tmp_path / "out" / "predictions.csv", delimiter=",", skiprows=1, usecols=2, dtype=int
    )
    assert saved.images == len(predicted) and saved.classes == list(range(6))
    assert saved.counts == [int((predicted == c).sum()) for c in range(6)]
    assert 1 / 6 <= saved.mean_confidence <= 1, "the top probability of six classes"
    assert (tmp_path / "out" / REFERENCE_FILE).read_text() == (model / REFERENCE_FILE).read_text()
    left = tmp_path / "untouched"
    shutil.copytree(model_dir, left)
    (left / REFERENCE_FILE).unlink(missing_ok=True)  # other tests evaluate the session's model
    evaluate(left, shards_dir, tmp_path / "out2", device="cpu", reference_in_model=False)
    assert not (left / REFERENCE_FILE).exists() and (tmp_path / "out2" / REFERENCE_FILE).exists()


def test_model_and_data_must_agree_on_image_size(model_dir, arranged_dir, tmp_path):
    from invmon.stages import preprocess
    from invmon.stages.preprocess import PreprocessSettings

    preprocess.run(
        PreprocessSettings(
            data=str(arranged_dir), out=str(tmp_path / "s48"), image_size=48, workers=1
        )
    )
    with pytest.raises(ValueError, match="48px"):
        evaluate(model_dir, tmp_path / "s48", tmp_path / "out", device="cpu")
