"""KFP component: decode and resize once into training shards."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from invmon.cluster.container_images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("preprocess"), install_kfp_package=False)
def preprocess(
    arranged: Input[Dataset],
    shards: Output[Dataset],
    image_size: int = 224,
    shard_size: int = 4096,
    workers: int = 0,
    workspace: str = "",
):
    """Decode and resize every arranged image once into uint8 shards the trainer reads directly.

    Args:
        arranged: The arranged dataset (arrange's output).
        shards: index.json and per-split shards of uint8 (N, 3, S, S) images with their counts,
            or, with a workspace, a pointer to them there.
        image_size: Side of the square images the model sees, in pixels.
        shard_size: Images per shard (GPUs and nodes read whole shards).
        workers: Decoding processes (0: one per core of the node).
        workspace: The pipeline workspace path; when set, the shards are written into it (where
            tune, train and evaluate read them in place, and a retried task resumes them)
            instead of into the artifact.
    """
    from invmon.data import workspace as shared
    from invmon.stages import preprocess as stage

    folder = shared.data_folder(workspace, "shards", shards.path)
    report = stage.run(
        stage.PreprocessSettings(
            data=arranged.path,
            out=str(folder),
            image_size=image_size,
            shard_size=shard_size,
            workers=workers or None,
        )
    )
    if workspace:
        shared.write_pointer(shards.path, folder)
    print(
        f"preprocess: {report.images} images in {report.seconds:.1f}s on {report.workers} "
        f"processes, {len(report.skipped)} skipped"
    )
    shards.metadata.update({"images": report.images, "skipped": len(report.skipped)})
