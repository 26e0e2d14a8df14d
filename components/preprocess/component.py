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
    workspace: str = "",
):
    """Decode and resize every arranged image once into uint8 shards the trainer reads directly.

    Args:
        arranged: The arranged dataset (arrange's output).
        shards: index.json and per-split shards of uint8 (N, 3, S, S) images with their counts.
        image_size: Side of the square images the model sees, in pixels.
        shard_size: Images per shard (GPUs and nodes read whole shards).
        workspace: The pipeline workspace path, when the arranged images are read from it.
    """
    from invmon.stages import preprocess as stage

    report = stage.run(
        stage.PreprocessSettings(
            data=arranged.path, out=shards.path, image_size=image_size, shard_size=shard_size
        )
    )
    print(
        f"preprocess: {report.images} images in {report.seconds:.1f}s on {report.workers} "
        f"processes, {len(report.skipped)} skipped"
    )
    shards.metadata.update({"images": report.images, "skipped": len(report.skipped)})
