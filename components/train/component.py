"""KFP component: train the ResNet50 counting model on a GPU node, or as a multi-node TrainJob."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from invmon.cluster.container_images import DEFAULT_IMAGES


# Over 60 lines only by its interface: KFP reads the signature and the docstring's Args (the
# UI's descriptions); the body adapts artifacts and calls the stage's run.
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
    shm_size: str = "4Gi",
    workspace: str = "",
    run_name: str = "",
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
            (empty: no checkpoint; a retried pod starts over).
        launcher: local (train in this task) or trainjob (a Kubeflow Trainer TrainJob).
        num_nodes: TrainJob nodes (launcher trainjob).
        gpus_per_node: GPUs, and training processes, per TrainJob node.
        train_image: Image of the TrainJob's nodes (empty: the project's train image).
        namespace: Namespace of the TrainJob (empty: this pipeline's namespace).
        artifact_endpoint_url: S3 endpoint of the artifact store, for the TrainJob's nodes
            (empty: AWS, or KFP's object store for minio:// artifacts).
        s3_secret: Secret the TrainJob's nodes read S3 with: NAME,
            NAME:ACCESS_KEY_KEY:SECRET_KEY_KEY or none (empty: KFP's mlpipeline-minio-artifact
            for minio:// data, invmon-s3 for s3://).
        gpu_node_selector: Node labels of the GPU pool, for the TrainJob's nodes.
        gpu_tolerations: Tolerations of the GPU pool's taints, for the TrainJob's nodes.
        shm_size: Memory-backed /dev/shm of the TrainJob's nodes (DataLoader workers).
        workspace: The pipeline workspace path, when the shards live in it: read in place here,
            and mounted read-only in the TrainJob's nodes.
        run_name: The run's workflow name, which names its workspace PVC.
    """
    import json
    import os
    import shutil

    from invmon.cluster.placement import PodOptions, Toleration
    from invmon.cluster.volumes import pod_storage
    from invmon.data import workspace as shared
    from invmon.stages import train as stage
    from invmon.training.config import TrainOverrides
    from invmon.training.loop import HISTORY_FILE
    from invmon.training.report import REPORT_FILE, summary_metrics

    data = str(shared.resolve(shards.path))
    in_workspace = shared.is_pointer(shards.path)
    storage = pod_storage(data, workspace, run_name) if launcher == "trainjob" else {}
    settings = stage.TrainSettings(
        data=data,
        out=model.path,
        params=os.path.join(search.path, "best.json"),
        recipe=recipe,
        training=TrainOverrides(epochs=epochs or None, weights=weights, device=device, seed=seed),
        checkpoint=checkpoint or "none",
        endpoint_url=artifact_endpoint_url or None,
        launcher=launcher,
        trainjob=stage.TrainJobOptions(
            num_nodes=num_nodes,
            pods=PodOptions(
                image=train_image,
                namespace=namespace,
                gpus=gpus_per_node,
                node_selector=gpu_node_selector,
                tolerations=tuple(Toleration(**t) for t in gpu_tolerations),
                s3_secret=s3_secret,
                shm_size=shm_size,
                **storage,
            ),
        ),
        # TrainJob nodes read the shards where they are: in the workspace, or at the artifact's
        # URI.
        data_uri=data if in_workspace else shards.uri,
        out_uri=model.uri,
    )
    stage.run(settings)
    with open(os.path.join(model.path, HISTORY_FILE)) as handle:
        training = json.load(handle)
    for name, value in summary_metrics(training).items():
        metrics.log_metric(name, value)
    shutil.copyfile(os.path.join(model.path, REPORT_FILE), report.path)
    model.metadata.update(
        {"framework": "pytorch", "architecture": "resnet50", **settings.hyperparameters()}
    )
