"""KFP component: decode and resize once into training shards."""

from kfp.dsl import Dataset, Input, Output

from invmon.components.interface import stage_component
from invmon.stages.preprocess import PreprocessSettings

NOTES = {
    "arranged": "The arranged dataset (arrange's output).",
    "shards": "index.json and per-split shards of uint8 (N, 3, S, S) images with their counts, "
    "or, with a workspace, a pointer to them there.",
    "workspace": "The pipeline workspace path; when set, the shards are written into it (where "
    "tune, train and evaluate read them in place, and a retried task resumes them) instead of "
    "into the artifact.",
}


@stage_component(
    "preprocess",
    "Decode and resize every arranged image once into uint8 shards the trainer reads directly.",
    PreprocessSettings,
    notes=NOTES,
)
def preprocess(
    arranged: Input[Dataset],
    shards: Output[Dataset],
    image_size: int,
    shard_size: int,
    workers: int,
    workspace: str = "",
):
    from invmon.data import workspace as shared
    from invmon.stages import preprocess as stage

    with shared.output_folder(workspace, "shards", shards.path) as folder:
        report = stage.run(
            stage.PreprocessSettings(
                data=arranged.path,
                out=str(folder),
                image_size=image_size,
                shard_size=shard_size,
                workers=workers or None,
            )
        )
    print(
        f"preprocess: {report.images} images in {report.seconds:.1f}s on {report.workers} "
        f"processes, {len(report.skipped)} skipped"
    )
    shards.metadata.update({"images": report.images, "skipped": len(report.skipped)})
