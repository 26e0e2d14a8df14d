"""KFP component: Katib-style hyperparameter search, run by the component itself."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from invmon.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("tune"), install_kfp_package=False)
def tune(
    shards: Input[Dataset],
    search: Output[Artifact],
    trials: int = 4,
    algorithm: str = "tpe",
    max_epochs: int = 10,
    device: str = "auto",
    seed: int = 0,
):
    """Search learning rate, batch size and epochs; each trial is a run of the training loop.

    Args:
        shards: The preprocessed dataset.
        search: best.json (the chosen hyperparameters), trials.csv and search_space.json.
        trials: Number of trials.
        algorithm: random, tpe or grid.
        max_epochs: Largest number of epochs a trial may train.
        device: auto, cpu or cuda.
        seed: Seed of the search and of every trial.
    """
    from invmon import train
    from invmon import tune as stage

    spec = stage.SearchSpec(
        parameters=stage.default_parameters(max_epochs), algorithm=algorithm, max_trials=trials
    )
    result = stage.tune(
        shards.path,
        search.path,
        spec=spec,
        base=train.TrainConfig(device=device, seed=seed),
        seed=seed,
    )
    search.metadata.update({"best": result.best_parameters, "best_value": result.best_value})
