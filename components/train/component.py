"""KFP component: train the ResNet50 counting model on a GPU node, or as a multi-node TrainJob."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from invmon.cluster.placement import PodOptions
from invmon.components.interface import stage_component
from invmon.stages.train import TrainSettings
from invmon.training.config import TrainConfig

NOTES = {
    "shards": "The preprocessed dataset.",
    "search": "The search's output; its best.json gives the searched hyperparameters.",
    "model": "The model folder: weights.pt (loaded with weights_only), config.json, history.json.",
    "metrics": "Best validation accuracy and its epoch, final losses, images/s, s/epoch.",
    "report": "Training report: loss and accuracy curves, throughput, hyperparameters.",
    "epochs": "Epochs of the final training (0: the number of epochs the search chose).",
    "workspace": "The pipeline workspace path, when the shards live in it: read in place here, "
    "and mounted read-only in the TrainJob's nodes.",
    "run_name": "The run's workflow name, which names its workspace PVC.",
    "endpoint_url": "for the TrainJob's nodes; empty: AWS, or KFP's object store for minio://",
}


@stage_component(
    "train",
    "Train ResNet50 + two-layer head with the hyperparameters the search chose.",
    TrainSettings,
    TrainConfig,
    PodOptions,
    notes=NOTES,
)
def train(
    shards: Input[Dataset],
    search: Input[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    weights: str,
    init_model: str,
    device: str,
    seed: int,
    recipe: str,
    checkpoint: str,
    endpoint_url: str,
    launcher: str,
    num_nodes: int,
    image: str,
    namespace: str,
    s3_secret: str,
    gpus: int,
    node_selector: dict,
    tolerations: list,
    shm_size: str,
    resources: str,
    unschedulable_timeout: float,
    epochs: int = 0,
    workspace: str = "",
    run_name: str = "",
):
    import os
    import shutil

    from invmon.cluster.placement import task_pods
    from invmon.stages import train as stage

    task = task_pods(shards.path, shards.uri, locals(), remote=launcher == "trainjob")
    settings = stage.TrainSettings(
        data=task.data,
        out=model.path,
        params=os.path.join(search.path, "best.json"),
        recipe=recipe,
        training=stage.TrainOverrides(
            epochs=epochs or None,
            weights=weights,
            init_model=init_model,
            device=device,
            seed=seed,
        ),
        checkpoint=checkpoint or None,
        endpoint_url=endpoint_url or None,
        launcher=launcher,
        trainjob=stage.TrainJobOptions(num_nodes=num_nodes, pods=task.pods),
        data_uri=task.data_uri,
        out_uri=model.uri,
    )
    stage.run(settings)
    done = stage.outputs(settings)
    for name, value in done.metrics.items():
        metrics.log_metric(name, value)
    shutil.copyfile(done.report, report.path)
    model.metadata.update(done.metadata)
