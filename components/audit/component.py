"""KFP component: score every ingested bin and flag likely inventory mismatches."""

from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from invmon.components.interface import stage_component
from invmon.stages.audit import AuditSettings

NOTES = {
    "model": "The trained model folder.",
    "raw": "The ingested bins (bin-images/ and metadata/).",
    "results": "audit.csv (every bin), flagged.csv (most suspicious first) and summary.json.",
    "metrics": "Bins scored and flagged, and bins skipped.",
    "flagged": "The most suspicious bins, as a table in the Kubeflow UI.",
    "review": "The review page: every flagged bin ranked, with its photo and the model's counts.",
    "workspace": "The pipeline workspace path, when the ingested bins live in it.",
}


# Every bin of the ingested data is scored; a bin is flagged when the model gives its recorded
# count a probability below the threshold. On training data this finds label noise; pointed at
# today's photos, it is the recount work list.
@stage_component(
    "audit",
    "Flag the bins whose photo disagrees with their recorded item count.",
    AuditSettings,
    notes=NOTES,
)
def audit(
    model: Input[Model],
    raw: Input[Dataset],
    results: Output[Dataset],
    metrics: Output[Metrics],
    flagged: Output[Markdown],
    review: Output[HTML],
    threshold: float,
    device: str,
    thumbnails: int,
    workspace: str = "",
):
    import csv
    import os
    import shutil

    from invmon.data import workspace as shared
    from invmon.stages import audit as stage

    summary = stage.run(
        stage.AuditSettings(
            source=str(shared.resolve(raw.path)),
            out=results.path,
            model=model.path,
            threshold=threshold,
            device=device,
            thumbnails=thumbnails,
        )
    )
    shutil.copyfile(os.path.join(results.path, stage.REVIEW_FILE), review.path)
    metrics.log_metric("bins", summary.bins)
    metrics.log_metric("scored", summary.scored)
    metrics.log_metric("flagged", summary.flagged)
    metrics.log_metric("skipped", summary.bins - summary.scored)
    with open(os.path.join(results.path, stage.FLAGGED_FILE), newline="") as handle:
        rows = list(csv.reader(handle))
    lines = [
        f"# {summary.flagged} of {summary.scored} bins flagged (threshold {threshold})",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(row) + " |" for row in rows[1:51]),
    ]
    with open(flagged.path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
