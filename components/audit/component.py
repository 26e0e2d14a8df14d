"""KFP component: score every ingested bin and flag likely inventory mismatches."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from invmon.cluster.container_images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("audit"), install_kfp_package=False)
def audit(
    model: Input[Model],
    raw: Input[Dataset],
    results: Output[Dataset],
    metrics: Output[Metrics],
    flagged: Output[Markdown],
    review: Output[HTML],
    threshold: float = 0.1,
    device: str = "auto",
    workspace: str = "",
):
    """Flag the bins whose photo disagrees with their recorded item count.

    Every bin of the ingested data is scored; a bin is flagged when the model gives its recorded
    count a probability below the threshold. On training data this finds label noise; pointed at
    today's photos, it is the recount work list.

    Args:
        model: The trained model folder.
        raw: The ingested bins (bin-images/ and metadata/).
        results: audit.csv (every bin), flagged.csv (most suspicious first) and summary.json.
        metrics: Bins scored and flagged, and bins skipped.
        flagged: The most suspicious bins, as a table in the Kubeflow UI.
        review: The review page: the summary and every flagged bin, ranked, with photos.
        threshold: Flag when the recorded count's probability is below this.
        device: auto, cpu or cuda.
        workspace: The pipeline workspace path, when the ingested bins live in it.
    """
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
