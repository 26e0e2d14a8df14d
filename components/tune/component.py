"""KFP component: Katib-style hyperparameter search, run here or as a Katib Experiment."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from invmon.cluster.container_images import DEFAULT_IMAGES


# Over 60 lines only by its interface: KFP reads the signature and the docstring's Args (the
# UI's descriptions); the body adapts artifacts and calls the stage's run.
@dsl.component(base_image=DEFAULT_IMAGES.for_stage("tune"), install_kfp_package=False)
def tune(
    shards: Input[Dataset],
    search: Output[Artifact],
    trials: int = 4,
    algorithm: str = "tpe",
    max_epochs: int = 10,
    batch_sizes: str = "16,32,64",
    early_stopping: str = "none",
    objective: str = "accuracy",
    device: str = "auto",
    seed: int = 0,
    recipe: str = "default",
    weights: str = "none",
    backend: str = "local",
    parallel_trials: int = 2,
    train_image: str = "",
    namespace: str = "",
    artifact_endpoint_url: str = "",
    s3_secret: str = "",
    gpus: int = 1,
    gpu_node_selector: dict = {},  # noqa: B006 (KFP reads defaults from the signature)
    gpu_tolerations: list = [],  # noqa: B006
    shm_size: str = "4Gi",
    workspace: str = "",
    run_name: str = "",
):
    """Search learning rate, batch size and epochs; each trial is a run of the training loop.

    Args:
        shards: The preprocessed dataset.
        search: best.json (the chosen hyperparameters), trials.csv and search_space.json.
        trials: Number of trials.
        algorithm: random, grid, tpe, bayesianoptimization or cmaes.
        max_epochs: Largest number of epochs a trial may train.
        batch_sizes: Batch sizes the trials try, comma-separated (one size: every trial, and
            so the final training, uses it).
        early_stopping: none, median (Katib medianstop) or hyperband (local backend only).
        objective: accuracy (validation, maximised) or val_loss (minimised).
        device: auto, cpu or cuda (local backend).
        seed: Seed of the search and of every trial.
        recipe: The trials' training recipe: default (warmup + cosine decay) or original (Adam
            at a constant rate); the final training's recipe, so that the search tunes it.
        weights: The trials' backbone start: none, imagenet, a path or an s3:// URI.
        backend: local (trials run in this task) or katib (a Katib Experiment, parallel trials).
        parallel_trials: Trials at once (katib backend).
        train_image: Image of the trial pods (empty: the project's train image).
        namespace: Namespace of the Experiment (empty: this pipeline's namespace).
        artifact_endpoint_url: S3 endpoint of the artifact store, for the trial pods (empty:
            AWS, or KFP's object store for minio:// artifacts).
        s3_secret: Secret the trial pods read S3 with: NAME, NAME:ACCESS_KEY_KEY:SECRET_KEY_KEY
            or none (empty: KFP's mlpipeline-minio-artifact for minio:// data, invmon-s3 for
            s3://).
        gpus: GPUs per trial (katib backend).
        gpu_node_selector: Node labels of the GPU pool, for the trial pods.
        gpu_tolerations: Tolerations of the GPU pool's taints, for the trial pods.
        shm_size: Memory-backed /dev/shm of the trial pods (DataLoader workers).
        workspace: The pipeline workspace path, when the shards live in it: read in place here,
            and mounted read-only in the trial pods.
        run_name: The run's workflow name, which names its workspace PVC.
    """
    from invmon.cluster.placement import PodOptions, Toleration
    from invmon.cluster.volumes import pod_storage
    from invmon.data import workspace as shared
    from invmon.stages import tune as stage
    from invmon.training.config import TrainOverrides

    data = str(shared.resolve(shards.path))
    in_workspace = shared.is_pointer(shards.path)
    storage = pod_storage(data, workspace, run_name) if backend == "katib" else {}
    settings = stage.TuneSettings(
        data=data,
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
        training=TrainOverrides(weights=weights, device=device, seed=seed),
        endpoint_url=artifact_endpoint_url or None,
        katib=stage.KatibOptions(
            name="",
            pods=PodOptions(
                image=train_image,
                namespace=namespace,
                gpus=gpus,
                node_selector=gpu_node_selector,
                tolerations=tuple(Toleration(**t) for t in gpu_tolerations),
                s3_secret=s3_secret,
                shm_size=shm_size,
                **storage,
            ),
        ),
        # Trial pods read the shards where they are: in the workspace, or at the artifact's URI.
        data_uri=data if in_workspace else shards.uri,
    )
    result = stage.run(settings)
    search.metadata.update(
        {
            "best": result.best_parameters,
            "best_value": result.best_value,
            "trial_epochs": result.trial_epochs,
            "pruned_trials": result.pruned,
        }
    )
