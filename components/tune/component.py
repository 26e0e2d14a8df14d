"""KFP component: Katib-style hyperparameter search, run here or as a Katib Experiment."""

from kfp.dsl import Artifact, Dataset, Input, Output

from invmon.cluster.placement import PodOptions
from invmon.components.interface import stage_component
from invmon.stages.tune import TuneSettings
from invmon.training.config import TrainConfig

NOTES = {
    "shards": "The preprocessed dataset.",
    "search": "best.json (the chosen hyperparameters), trials.csv and search_space.json.",
    "workspace": "The pipeline workspace path, when the shards live in it: read in place here, "
    "and mounted read-only in the trial pods.",
    "run_name": "The run's workflow name, which names its workspace PVC.",
    "endpoint_url": "for the trial pods; empty: AWS, or KFP's object store for minio://",
}


@stage_component(
    "tune",
    "Search learning rate, batch size and epochs; each trial is a run of the training loop.",
    TuneSettings,
    TrainConfig,
    PodOptions,
    notes=NOTES,
)
def tune(
    shards: Input[Dataset],
    search: Output[Artifact],
    trials: int,
    algorithm: str,
    max_epochs: int,
    batch_sizes: str,
    early_stopping: str,
    objective: str,
    device: str,
    seed: int,
    recipe: str,
    weights: str,
    backend: str,
    parallel_trials: int,
    endpoint_url: str,
    image: str,
    namespace: str,
    s3_secret: str,
    gpus: int,
    node_selector: dict,
    tolerations: list,
    shm_size: str,
    resources: str,
    unschedulable_timeout: float,
    workspace: str = "",
    run_name: str = "",
):
    from invmon.cluster.placement import task_pods
    from invmon.stages import tune as stage

    task = task_pods(shards.path, shards.uri, locals(), remote=backend == "katib")
    settings = stage.TuneSettings(
        data=task.data,
        out=search.path,
        trials=trials,
        algorithm=algorithm,
        backend=backend,
        objective=objective,
        early_stopping=early_stopping,
        max_epochs=max_epochs,
        batch_sizes=batch_sizes,
        parallel_trials=parallel_trials,
        recipe=recipe,
        training=stage.TrainOverrides(weights=weights, device=device, seed=seed),
        endpoint_url=endpoint_url or None,
        katib=stage.KatibOptions(name="", pods=task.pods),
        data_uri=task.data_uri,
    )
    search.metadata.update(stage.result_metadata(stage.run(settings)))
