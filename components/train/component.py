"""KFP component: train the ResNet50 counting model on a GPU node, or as a multi-node TrainJob."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from invmon.cluster.container_images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("train"), install_kfp_package=False)
def train(
    shards: Input[Dataset],
    search: Input[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    epochs: int = 0,
    weights: str = "none",
    device: str = "auto",
    seed: int = 0,
    recipe: str = "default",
    checkpoint: str = "",
    launcher: str = "local",
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    train_image: str = "",
    namespace: str = "",
    artifact_endpoint_url: str = "",
    s3_secret: str = "",
    gpu_node_selector: dict = {},  # noqa: B006 (KFP reads defaults from the signature)
    gpu_tolerations: list = [],  # noqa: B006
):
    """Train ResNet50 + two-layer head with the hyperparameters the search chose.

    Args:
        shards: The preprocessed dataset.
        search: The search's output; its best.json gives the searched hyperparameters.
        model: The model folder: weights.pt (loaded with weights_only), config.json, history.json.
        metrics: Best validation accuracy and its epoch, final losses, images/s, s/epoch.
        report: Training report: loss and accuracy curves, throughput, hyperparameters.
        epochs: Train this many epochs instead of the searched number (0 = use the search's).
        weights: Backbone start: none, imagenet, a path or an s3:// URI of ResNet50 weights.
        device: auto, cpu or cuda.
        seed: Seed of the run.
        recipe: default (warmup + cosine decay) or original (Adam at a constant rate).
        checkpoint: s3:// prefix for per-epoch checkpoints, so that a retried pod resumes
            (empty: inside the model folder, removed at the end).
        launcher: local (train in this task) or trainjob (a Kubeflow Trainer TrainJob).
        num_nodes: TrainJob nodes (launcher trainjob).
        gpus_per_node: GPUs, and training processes, per TrainJob node.
        train_image: Image of the TrainJob's nodes (empty: the project's train image).
        namespace: Namespace of the TrainJob (empty: this pipeline's namespace).
        artifact_endpoint_url: S3 endpoint of the artifact store, for the TrainJob's nodes
            (empty: AWS, or KFP's MinIO for minio:// artifacts).
        s3_secret: Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the TrainJob's nodes.
        gpu_node_selector: Node labels of the GPU pool, for the TrainJob's nodes.
        gpu_tolerations: Tolerations of the GPU pool's taints, for the TrainJob's nodes.
    """
    import json
    import os
    import shutil

    from invmon.training import loop as stage
    from invmon.training.report import REPORT_FILE, summary_metrics

    params = stage.read_params(os.path.join(search.path, "best.json"))
    if epochs > 0:
        params["epochs"] = epochs
    config = stage.recipe_config(recipe, params, weights=weights, device=device, seed=seed)
    if launcher == "local":
        stage.fit(shards.path, config, out=model.path, checkpoint=checkpoint or None)
    elif launcher == "trainjob":
        from invmon.cluster import trainjob
        from invmon.cluster.placement import PodPlacement

        trainjob.train_on_cluster(
            shards.uri,
            model.uri,
            model.path,
            config,
            image=train_image,
            namespace=namespace,
            num_nodes=num_nodes,
            placement=PodPlacement.for_gpu_pool(
                gpus_per_node, gpu_node_selector, gpu_tolerations, s3_secret
            ),
            endpoint_url=artifact_endpoint_url or None,
        )
    else:
        raise ValueError(f"launcher must be local or trainjob, got {launcher!r}")
    with open(os.path.join(model.path, stage.HISTORY_FILE)) as handle:
        training = json.load(handle)
    for name, value in summary_metrics(training).items():
        metrics.log_metric(name, value)
    shutil.copyfile(os.path.join(model.path, REPORT_FILE), report.path)
    model.metadata.update({"framework": "pytorch", "architecture": "resnet50", **params})
