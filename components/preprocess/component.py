"""KFP component: decode and resize once into training shards."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from invmon.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("preprocess"), install_kfp_package=False)
def preprocess(
    arranged: Input[Dataset],
    shards: Output[Dataset],
    image_size: int = 224,
):
    """Decode and resize every arranged image once into uint8 shards the trainer reads directly.

    Args:
        arranged: The arranged dataset (arrange's output).
        shards: index.json and per-split shards of uint8 (N, 3, S, S) images with their counts.
        image_size: Side of the square images the model sees, in pixels.
    """
    from invmon import preprocess as stage

    report = stage.preprocess(arranged.path, shards.path, image_size=image_size)
    shards.metadata.update({"images": report.images, "skipped": len(report.skipped)})
