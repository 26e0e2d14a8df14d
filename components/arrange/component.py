"""KFP component: label bins with their item count and split them by class."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from invmon.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("arrange"), install_kfp_package=False)
def arrange(
    raw: Input[Dataset],
    arranged: Output[Dataset],
    classes: str = "0-5",
    split: str = "0.8,0.1,0.1",
    seed: int = 0,
):
    """Label each bin with EXPECTED_QUANTITY and lay it out as <split>/<count>/<id>.jpg.

    Args:
        raw: Bins in the bucket's layout (ingest's output).
        arranged: train/, val/ and test/ folders, one folder per count, plus manifest.csv.
        classes: Counts to keep, as a range (0-5; 1-5 reproduces the original project) or list.
        split: Train, validation and test fractions.
        seed: Seed of the stratified split.
    """
    from invmon import arrange as stage

    report = stage.arrange(raw.path, arranged.path, classes=classes, split=split, seed=seed)
    print(stage.summarize(report))
    arranged.metadata.update({"bins": report.kept, "dropped": report.dropped})
