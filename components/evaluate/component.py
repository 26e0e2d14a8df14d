"""KFP component: evaluate the model on the test split."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from invmon.components.interface import stage_component
from invmon.stages.evaluate import EvaluateSettings

NOTES = {
    "model": "The trained model folder.",
    "shards": "The preprocessed dataset (its test split is used).",
    "metrics": "Scalar metrics with the majority-class baseline beside them.",
    "confusion": "The confusion matrix the Kubeflow UI draws.",
    "report": "HTML report with a confusion-matrix picture and per-class scores.",
    "reference": "reference.json: the predicted-count distribution on the test split, which "
    "invmon monitor --reference compares live predictions with; and metrics.json, the test "
    "metrics invmon register records.",
    "workspace": "The pipeline workspace path, when the shards live in it (read in place).",
    "min_accuracy": "The quality gate's least test accuracy; the gate the run applies "
    "(required_accuracy) is the larger of it and the starting model's accuracy on the same split.",
}


@stage_component(
    "evaluate",
    "Test-split accuracy, RMSE, off-by-one accuracy, per-class scores and confusion matrix.",
    EvaluateSettings,
    notes=NOTES,
)
def evaluate(
    model: Input[Model],
    shards: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    reference: Output[Artifact],
    device: str,
    init_model: str,
    endpoint_url: str,
    min_accuracy: float = 0.0,
    workspace: str = "",
) -> NamedTuple(
    "Outputs",
    [("accuracy", float), ("rmse", float), ("init_accuracy", float), ("required_accuracy", float)],
):
    import os
    import shutil
    import tempfile
    from collections import namedtuple

    from invmon.data import workspace as shared
    from invmon.stages import evaluate as stage

    out = tempfile.mkdtemp()
    data = str(shared.resolve(shards.path))
    # The model is this task's input: its reference goes out as an artifact of its own.
    result = stage.run(
        stage.EvaluateSettings(
            model=model.path,
            data=data,
            out=out,
            device=device,
            reference_in_model=False,
            init_model=init_model or None,
            endpoint_url=endpoint_url or None,
        )
    )
    # A retrain round is deployed only when it is no worse than the model it started from.
    required = stage.required_accuracy(min_accuracy, result.init_accuracy)
    print(stage.gate_line(result, min_accuracy))
    os.makedirs(reference.path, exist_ok=True)
    shutil.copy(os.path.join(out, stage.REFERENCE_FILE), reference.path)
    # The model's full test metrics (per class too) go with it for the registry.
    shutil.copy(os.path.join(out, stage.METRICS_FILE), reference.path)
    for name in (
        "accuracy",
        "rmse",
        "mae",
        "off_by_one_accuracy",
        "baseline_accuracy",
        "baseline_rmse",
        "verified_accuracy",
        "init_accuracy",
    ):
        if getattr(result, name) is not None:
            metrics.log_metric(name, round(float(getattr(result, name)), 4))
    metrics.log_metric("required_accuracy", round(required, 4))
    confusion.log_confusion_matrix([str(c) for c in result.classes], result.confusion_matrix)
    shutil.copyfile(os.path.join(out, stage.REPORT_FILE), report.path)
    outputs = namedtuple("Outputs", ["accuracy", "rmse", "init_accuracy", "required_accuracy"])
    init = -1.0 if result.init_accuracy is None else result.init_accuracy
    return outputs(result.accuracy, result.rmse, init, required)
