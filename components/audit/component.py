"""KFP components: score every ingested bin and flag likely inventory mismatches, in parts.

``plan_audit`` cuts the bins into key ranges, ``audit`` scores one range (the pipeline runs one
task per range under ``dsl.ParallelFor``), and ``merge_audit`` ranks all flags together into the
one review.
"""

from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from invmon.components.interface import stage_component
from invmon.stages.audit import AuditSettings
from invmon.stages.audit_parts import AuditMergeSettings, AuditPlanSettings

NOTES = {
    "raw": "The ingested bins (bin-images/ and metadata/).",
    "workspace": "The pipeline workspace path, when the ingested bins live in it.",
}


@stage_component(
    "audit",
    "Cut the ingested bins into contiguous key ranges of about equal size.",
    AuditPlanSettings,
    notes=NOTES,
)
def plan_audit(raw: Input[Dataset], parts: int, workspace: str = "") -> list[dict]:
    # Returns one description per part, for audit's part input.
    from invmon.data import workspace as shared
    from invmon.stages import audit_parts as stage

    source = str(shared.resolve(raw.path))
    plan = stage.plan_parts(stage.AuditPlanSettings(source=source, parts=parts))
    return stage.plan_outputs(plan, "bins", objects_per_unit=2)  # an image and its metadata


# Every bin of the ingested data is scored; a bin is flagged when the model gives its recorded
# count a probability below the threshold. On training data this finds label noise; pointed at
# today's photos, it is the recount work list.
@stage_component(
    "audit",
    "Score one part of the bins and flag those whose photo disagrees with their recorded count.",
    AuditSettings,
    notes={
        **NOTES,
        "model": "The trained model folder.",
        "part": "The part to score, as plan_audit describes it.",
        "scores": "The part's counts, skipped bins and flagged scores, and its audit.csv.",
    },
    own=("part",),
)
def audit(
    model: Input[Model],
    raw: Input[Dataset],
    part: dict,
    scores: Output[Dataset],
    threshold: float,
    device: str,
    workspace: str = "",
):
    import json

    from invmon.data import workspace as shared
    from invmon.stages import audit as stage

    summary = stage.run(
        stage.AuditSettings(
            source=str(shared.resolve(raw.path)),
            out=scores.path,
            model=model.path,
            threshold=threshold,
            device=device,
            part=json.dumps(part),
        )
    )
    print(f"{summary.scored} bins scored, {summary.flagged} flagged, in {summary.seconds}s")


@stage_component(
    "audit",
    "Rank the flags of every audit part together and write the one review.",
    AuditMergeSettings,
    notes={
        **NOTES,
        "parts": "The outputs of the audit tasks.",
        "results": "audit.csv (every bin), flagged.csv (most suspicious first) and summary.json.",
        "metrics": "Bins scored and flagged, and bins skipped.",
        "flagged": "The most suspicious bins, as a table in the Kubeflow UI.",
        "review": "The review page: every flagged bin ranked, with its photo and the model's "
        "counts.",
    },
)
def merge_audit(
    parts: Input[list[Dataset]],
    raw: Input[Dataset],
    results: Output[Dataset],
    metrics: Output[Metrics],
    flagged: Output[Markdown],
    review: Output[HTML],
    thumbnails: int,
    workspace: str = "",
):
    import csv
    import os
    import shutil

    from invmon.data import workspace as shared
    from invmon.stages import audit as stage
    from invmon.stages import audit_parts

    summary = audit_parts.merge_parts(
        audit_parts.AuditMergeSettings(
            parts=tuple(part.path for part in parts),
            source=str(shared.resolve(raw.path)),
            out=results.path,
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
        f"# {summary.flagged} of {summary.scored} bins flagged (threshold {summary.threshold})",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(row) + " |" for row in rows[1:51]),
    ]
    with open(flagged.path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
