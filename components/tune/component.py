"""KFP component: Katib-style hyperparameter search, run here or as a Katib Experiment."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from invmon.cluster.container_images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("tune"), install_kfp_package=False)
def tune(
    shards: Input[Dataset],
    search: Output[Artifact],
    trials: int = 4,
    algorithm: str = "tpe",
    max_epochs: int = 10,
    early_stopping: str = "none",
    objective: str = "accuracy",
    device: str = "auto",
    seed: int = 0,
    backend: str = "local",
    parallel_trials: int = 2,
    train_image: str = "",
    namespace: str = "",
    artifact_endpoint_url: str = "",
    s3_secret: str = "",
    gpus: int = 1,
    gpu_node_selector: dict = {},  # noqa: B006 (KFP reads defaults from the signature)
    gpu_tolerations: list = [],  # noqa: B006
):
    """Search learning rate, batch size and epochs; each trial is a run of the training loop.

    Args:
        shards: The preprocessed dataset.
        search: best.json (the chosen hyperparameters), trials.csv and search_space.json.
        trials: Number of trials.
        algorithm: random, grid, tpe, bayesianoptimization or cmaes.
        max_epochs: Largest number of epochs a trial may train.
        early_stopping: none, median (Katib medianstop) or hyperband (local backend only).
        objective: accuracy (validation, maximised) or val_loss (minimised).
        device: auto, cpu or cuda (local backend).
        seed: Seed of the search and of every trial.
        backend: local (trials run in this task) or katib (a Katib Experiment, parallel trials).
        parallel_trials: Trials at once (katib backend).
        train_image: Image of the trial pods (empty: the project's train image).
        namespace: Namespace of the Experiment (empty: this pipeline's namespace).
        artifact_endpoint_url: S3 endpoint of the artifact store, for the trial pods (empty:
            AWS, or KFP's MinIO for minio:// artifacts).
        s3_secret: Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the trial pods.
        gpus: GPUs per trial (katib backend).
        gpu_node_selector: Node labels of the GPU pool, for the trial pods.
        gpu_tolerations: Tolerations of the GPU pool's taints, for the trial pods.
    """
    from invmon.training import loop as train
    from invmon.training import search as stage

    spec = stage.SearchSpec(
        parameters=stage.default_parameters(max_epochs),
        objective_metric=objective,
        algorithm=algorithm,
        max_trials=trials,
        parallel_trials=parallel_trials,
        early_stopping=early_stopping,
    )
    base = train.TrainConfig(device=device, seed=seed)
    if backend == "local":
        result = stage.tune(shards.path, search.path, spec=spec, base=base, seed=seed)
    elif backend == "katib":
        from invmon.cluster import katib
        from invmon.cluster.placement import PodPlacement

        result = katib.tune_on_cluster(
            shards.uri,
            search.path,
            spec,
            base,
            image=train_image,
            namespace=namespace,
            placement=PodPlacement.for_gpu_pool(
                gpus, gpu_node_selector, gpu_tolerations, s3_secret
            ),
            endpoint_url=artifact_endpoint_url or None,
        )
    else:
        raise ValueError(f"backend must be local or katib, got {backend!r}")
    search.metadata.update(
        {
            "best": result.best_parameters,
            "best_value": result.best_value,
            "trial_epochs": result.trial_epochs,
            "pruned_trials": result.pruned,
        }
    )
