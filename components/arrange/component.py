"""KFP component: label bins with their item count, split them by class, and report on the data."""

from kfp.dsl import Dataset, Input, Markdown, Output

from invmon.components.interface import stage_component
from invmon.stages.arrange import ArrangeSettings

NOTES = {
    "raw": "Bins in the bucket's layout (ingest's output).",
    "arranged": "train/, val/ and test/ folders, one folder per count, plus manifest.csv.",
    "report": "The data report: bins per class and split, dropped bins by reason, image sizes.",
    "endpoint_url": "the source's S3 endpoint: the recounts are read with the source's S3 access",
    "workspace": "The pipeline workspace path, when the raw bins are in it; the class folders "
    "are then hard links next to them, or (on another volume) the manifest refers to them.",
}


@stage_component(
    "arrange",
    "Label each bin with EXPECTED_QUANTITY and lay it out as <split>/<count>/<id>.jpg.",
    ArrangeSettings,
    notes=NOTES,
)
def arrange(
    raw: Input[Dataset],
    arranged: Output[Dataset],
    report: Output[Markdown],
    classes: str,
    split: str,
    seed: int,
    recounts: str,
    endpoint_url: str,
    anonymous: bool,
    workspace: str = "",
):
    import shutil

    from invmon.data.s3 import S3Options
    from invmon.stages import arrange as stage

    result = stage.run(
        stage.ArrangeSettings(
            raw=raw.path,
            out=arranged.path,
            classes=classes,
            split=split,
            seed=seed,
            images="link-or-refer" if workspace else "link",
            recounts=recounts,
            s3=S3Options(endpoint_url=endpoint_url or None, anonymous=anonymous),
        )
    )
    print(stage.summarize(result))
    shutil.copyfile(f"{arranged.path}/{stage.REPORT_FILE}", report.path)
    verified = {split: len(ids) for split, ids in result.recount_verified.items()}
    arranged.metadata.update(
        {"bins": result.kept, "dropped": result.dropped, "recount_verified": verified}
    )
