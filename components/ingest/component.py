"""KFP components: ingest bin images and metadata from S3, in parallel parts.

``plan_ingest`` cuts the bucket into key ranges, ``ingest`` copies one range (the pipeline runs one
task per range under ``dsl.ParallelFor``), and ``merge_ingest`` joins the parts into one dataset.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from invmon.cluster.container_images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("ingest"), install_kfp_package=False)
def plan_ingest(
    source: str,
    parts: int = 8,
    endpoint_url: str = "",
    anonymous: bool = False,
    file_list: str = "",
    limit: int = 0,
) -> list[dict]:
    """Cut the bins under the source into contiguous key ranges of about equal size.

    Args:
        source: s3://BUCKET[/PREFIX] holding bin-images/ and metadata/ (ABID: s3://aft-vbi-pds).
        parts: How many parts (parallel ingest tasks) to make.
        endpoint_url: S3-compatible endpoint (MinIO, Ceph, ...); empty for AWS S3.
        anonymous: Send unsigned requests (public buckets such as aft-vbi-pds).
        file_list: Path or s3:// URI of the original project's file_list.json; empty for all bins.
        limit: Copy at most this many bins (0 = no limit).

    Returns:
        One description per part, for ``ingest``'s ``part`` input.
    """
    from invmon.data.s3 import S3Options
    from invmon.stages import ingest as stage

    plan = stage.plan_parts(
        stage.PlanSettings(
            source=source,
            s3=S3Options(endpoint_url=endpoint_url or None, anonymous=anonymous),
            file_list=file_list or None,
            limit=limit or None,
            parts=parts,
        )
    )
    for part in plan:
        print(part.describe(), f"~{part.objects} objects")
    return [part.to_dict() for part in plan]


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("ingest"), install_kfp_package=False)
def ingest(
    source: str,
    part: dict,
    raw: Output[Dataset],
    endpoint_url: str = "",
    anonymous: bool = False,
    file_list: str = "",
    limit: int = 0,
    workers: int = 32,
    workspace: str = "",
):
    """Copy one part of bin-images/ and metadata/ from an S3 bucket, in the bucket's layout.

    Args:
        source: s3://BUCKET[/PREFIX] holding bin-images/ and metadata/ (ABID: s3://aft-vbi-pds).
        part: The part to copy, as plan_ingest describes it.
        raw: The copied bins (or, with a workspace, a pointer to them) and the part's report.
        endpoint_url: S3-compatible endpoint (MinIO, Ceph, ...); empty for AWS S3.
        anonymous: Send unsigned requests (public buckets such as aft-vbi-pds).
        file_list: Path or s3:// URI of the original project's file_list.json; empty for all bins.
        limit: Copy at most this many bins (0 = no limit).
        workers: Requests in flight at once.
        workspace: The pipeline workspace path; when set, the bins are copied into it (where a
            retried task finds what an earlier attempt copied) instead of into the artifact.
    """
    import json

    from invmon.data import workspace as shared
    from invmon.data.s3 import S3Options
    from invmon.stages import ingest as stage

    folder = shared.data_folder(workspace, "raw", raw.path)
    report = stage.run(
        stage.IngestSettings(
            source=source,
            s3=S3Options(endpoint_url=endpoint_url or None, anonymous=anonymous),
            file_list=file_list or None,
            limit=limit or None,
            out=str(folder),
            workers=workers,
            part=json.dumps(part),
            report_to=raw.path,
        )
    )
    if workspace:
        shared.write_pointer(raw.path, folder)
    print(report.summary())
    raw.metadata.update(
        {"objects": report.objects, "copied": report.copied, "failed": len(report.failed)}
    )


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("ingest"), install_kfp_package=False)
def merge_ingest(
    parts: Input[list[Dataset]],
    raw: Output[Dataset],
    workspace: str = "",
):
    """Join the parts of an ingest into one dataset with one report.

    Args:
        parts: The outputs of the ingest tasks.
        raw: All copied bins (or a pointer to them in the workspace) and ingest_report.json.
        workspace: The pipeline workspace path, when the parts copied into it.
    """
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
