"""KFP components: ingest bin images and metadata from S3, in parallel parts.

``plan_ingest`` cuts the bucket into key ranges, ``ingest`` copies one range (the pipeline runs one
task per range under ``dsl.ParallelFor``), and ``merge_ingest`` joins the parts into one dataset.
"""

from kfp.dsl import Dataset, Input, Output

from invmon.components.interface import stage_component
from invmon.stages.ingest import IngestSettings, PlanSettings


@stage_component(
    "ingest",
    "Cut the bins under the source into contiguous key ranges of about equal size.",
    PlanSettings,
    notes={},
)
def plan_ingest(
    source: str,
    parts: int,
    endpoint_url: str,
    anonymous: bool,
    file_list: str,
    limit: int,
) -> list[dict]:
    # Returns one description per part, for ingest's part input.
    from invmon.stages import ingest as stage

    selected = stage.selection(source, endpoint_url, anonymous, file_list, limit)
    plan = stage.plan_parts(stage.PlanSettings(**selected, parts=parts))
    return stage.plan_outputs(plan)


@stage_component(
    "ingest",
    "Copy one part of bin-images/ and metadata/ from an S3 bucket, in the bucket's layout.",
    IngestSettings,
    notes={
        "part": "The part to copy, as plan_ingest describes it.",
        "raw": "The copied bins (or, with a workspace, a pointer to them) and the part's report.",
        "workspace": "The pipeline workspace path; when set, the bins are copied into it (where "
        "a retried task finds what an earlier attempt copied) instead of into the artifact.",
    },
    own=("part",),
)
def ingest(
    source: str,
    part: dict,
    raw: Output[Dataset],
    endpoint_url: str,
    anonymous: bool,
    file_list: str,
    limit: int,
    workers: int,
    workspace: str = "",
):
    import json

    from invmon.data import workspace as shared
    from invmon.stages import ingest as stage

    with shared.output_folder(workspace, "raw", raw.path) as folder:
        report = stage.run(
            stage.IngestSettings(
                **stage.selection(source, endpoint_url, anonymous, file_list, limit),
                out=str(folder),
                workers=workers,
                part=json.dumps(part),
                report_to=raw.path,
            )
        )
    print(report.summary())
    raw.metadata.update(
        {"objects": report.objects, "copied": report.copied, "failed": len(report.failed)}
    )


@stage_component(
    "ingest",
    "Join the parts of an ingest into one dataset with one report.",
    notes={
        "parts": "The outputs of the ingest tasks.",
        "raw": "All copied bins (or a pointer to them in the workspace) and ingest_report.json.",
        "workspace": "The pipeline workspace path, when the parts copied into it.",
    },
)
def merge_ingest(
    parts: Input[list[Dataset]],
    raw: Output[Dataset],
    workspace: str = "",
):
    from invmon.stages import ingest as stage

    report = stage.merge_parts(
        stage.MergeSettings(parts=tuple(part.path for part in parts), out=raw.path)
    )
    print(report.summary())
    if report.failed:
        print(f"{len(report.failed)} objects failed; see ingest_report.json in the raw dataset")
    raw.metadata.update(
        {
            "objects": report.objects,
            "copied": report.copied,
            "present": report.skipped_present,
            "failed": len(report.failed),
            "refused": len(report.refused_keys),
            "seconds": report.seconds,
        }
    )
