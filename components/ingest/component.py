"""KFP component: ingest bin images and metadata from S3."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from invmon.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("ingest"), install_kfp_package=False)
def ingest(
    source: str,
    raw: Output[Dataset],
    endpoint_url: str = "",
    anonymous: bool = False,
    file_list: str = "",
    limit: int = 0,
    workers: int = 32,
):
    """Copy bin-images/ and metadata/ from an S3 bucket into a dataset in the bucket's layout.

    Args:
        source: s3://BUCKET[/PREFIX] holding bin-images/ and metadata/ (ABID: s3://aft-vbi-pds).
        raw: The copied bins, keyed exactly as in the bucket.
        endpoint_url: S3-compatible endpoint (MinIO, Ceph, ...); empty for AWS S3.
        anonymous: Send unsigned requests (public buckets such as aft-vbi-pds).
        file_list: Path or s3:// URI of the original project's file_list.json; empty for all bins.
        limit: Copy at most this many bins (0 = no limit).
        workers: Requests in flight at once.
    """
    from invmon import ingest as stage

    report = stage.ingest(
        source,
        raw.path,
        endpoint_url=endpoint_url or None,
        anonymous=anonymous,
        file_list=file_list or None,
        limit=limit or None,
        workers=workers,
    )
    raw.metadata.update(
        {
            "objects": report.objects,
            "copied": report.copied,
            "failed": len(report.failed),
            "seconds": report.seconds,
        }
    )
