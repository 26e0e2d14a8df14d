"""KFP component: label bins with their item count, split them by class, and report on the data."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from invmon.cluster.container_images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("arrange"), install_kfp_package=False)
def arrange(
    raw: Input[Dataset],
    arranged: Output[Dataset],
    report: Output[Markdown],
    classes: str = "0-5",
    split: str = "0.8,0.1,0.1",
    seed: int = 0,
    workspace: str = "",
):
    """Label each bin with EXPECTED_QUANTITY and lay it out as <split>/<count>/<id>.jpg.

    Args:
        raw: Bins in the bucket's layout (ingest's output).
        arranged: train/, val/ and test/ folders, one folder per count, plus manifest.csv.
        report: The data report: bins per class and split, dropped bins by reason, image sizes.
        classes: Counts to keep, as a range (0-5; 1-5 reproduces the original project) or list.
        split: Train, validation and test fractions.
        seed: Seed of the stratified split.
        workspace: The pipeline workspace path, when the raw bins are in it; the class folders are
            then hard links next to them, or (on another volume) the manifest refers to them.
    """
    import shutil

    from invmon.stages import arrange as stage

    result = stage.run(
        stage.ArrangeSettings(
            raw=raw.path,
            out=arranged.path,
            classes=classes,
            split=split,
            seed=seed,
            images="link-or-refer" if workspace else "link",
        )
    )
    print(stage.summarize(result))
    shutil.copyfile(f"{arranged.path}/{stage.REPORT_FILE}", report.path)
    arranged.metadata.update({"bins": result.kept, "dropped": result.dropped})
