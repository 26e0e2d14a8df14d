"""The inventory-monitoring pipeline: ingest -> arrange -> preprocess -> tune -> train -> evaluate
-> (quality gate) -> deploy and audit.

:func:`build_pipeline` returns the ``@dsl.pipeline`` function for a set of cluster settings (image
registry and tag, GPU node pool); ``invmon compile`` compiles it to the YAML a Kubeflow cluster
runs, and ``invmon run`` runs the very same function locally through ``kfp.local``.
"""

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input, Model

from invmon.components import (
    arrange,
    audit,
    deploy,
    evaluate,
    ingest,
    merge_ingest,
    plan_ingest,
    preprocess,
    train,
    tune,
)
from invmon.pipelines.compile import ClusterSettings

PIPELINE_NAME = "inventory-monitoring"


def _configure(task, stage: str, settings: ClusterSettings, gpu: bool = False, name: str = ""):
    """Point a task at its stage's image, run it as non-root, and put GPU stages on the GPU pool."""
    task.set_container_image(settings.images.for_stage(stage))
    task.set_display_name(name or stage)
    task.set_caching_options(settings.caching)
    kubernetes.set_security_context(task, run_as_user=settings.run_as_user, run_as_non_root=True)
    if gpu:
        task.set_accelerator_type(settings.accelerator).set_accelerator_limit(settings.gpus)
        for key, value in settings.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in settings.gpu_tolerations:
            kubernetes.add_toleration(
                task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect
            )
    return task


def build_pipeline(settings: ClusterSettings | None = None):
    """Return the pipeline function, wired for ``settings`` (defaults: project images, 1 GPU)."""
    settings = settings or ClusterSettings()

    # With a workspace, the data tasks ask for it (and get it mounted) through this placeholder.
    shared = dsl.WORKSPACE_PATH_PLACEHOLDER if settings.workspace.enabled else ""

    @dsl.pipeline(
        name="release",
        description="Deploy the model and audit the bins, when the test accuracy passes the gate.",
        pipeline_config=settings.workspace.config(),
    )
    def release(
        model: Input[Model],
        arranged: Input[Dataset],
        raw: Input[Dataset],
        accuracy: float,
        min_accuracy: float,
        deploy_target: str,
        model_name: str,
        namespace: str,
        deployment_mode: str,
        canary_traffic_percent: int,
        audit_threshold: float,
    ):
        """The quality gate: deploy and audit run only when accuracy >= min_accuracy.

        A pipeline of its own so that the gate compares two inputs of one DAG, which kfp.local
        evaluates as a cluster does (it cannot resolve a named output of a sibling task in a
        condition).

        Args:
            model: The trained model folder.
            arranged: The arranged dataset (the smoke request's image).
            raw: The ingested bins to audit.
            accuracy: Test accuracy from evaluate.
            min_accuracy: The gate.
            deploy_target: kserve or local.
            model_name: Name of the InferenceService and of the served model.
            namespace: Namespace of the InferenceService.
            deployment_mode: Standard or Knative.
            canary_traffic_percent: Knative updates: traffic share of the new model (-1: all).
            audit_threshold: Flag a bin when its recorded count's probability is below this.
        """
        with dsl.If(accuracy >= min_accuracy, name="quality-gate"):
            _configure(
                deploy(
                    model=model,
                    arranged=arranged,
                    target=deploy_target,
                    name=model_name,
                    namespace=namespace,
                    serving_image=settings.images.image("serve"),
                    deployment_mode=deployment_mode,
                    canary_traffic_percent=canary_traffic_percent,
                    workspace=shared,
                ),
                "deploy",
                settings,
            )
            _configure(
                audit(model=model, raw=raw, threshold=audit_threshold, workspace=shared),
                "audit",
                settings,
            )

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Count the items in Amazon Bin Image Dataset photos: ingest from S3, arrange, "
        "preprocess, tune, train a ResNet50, evaluate and deploy to KServe.",
        pipeline_config=settings.workspace.config(),
    )
    def inventory_monitoring(
        source: str = "s3://aft-vbi-pds",
        endpoint_url: str = "",
        anonymous: bool = True,
        file_list: str = "",
        limit: int = 0,
        ingest_parts: int = 8,
        classes: str = "0-5",
        split: str = "0.8,0.1,0.1",
        seed: int = 0,
        image_size: int = 224,
        trials: int = 4,
        algorithm: str = "tpe",
        max_trial_epochs: int = 10,
        trial_early_stopping: str = "none",
        parallel_trials: int = 2,
        train_epochs: int = 0,
        train_recipe: str = "default",
        weights: str = "none",
        train_nodes: int = 1,
        train_checkpoint: str = "",
        artifact_endpoint_url: str = "",
        cluster_s3_secret: str = "",
        min_accuracy: float = 0.4,
        deploy_target: str = "kserve",
        model_name: str = "bin-counter",
        namespace: str = "",
        deployment_mode: str = "Standard",
        canary_traffic_percent: int = -1,
        audit_threshold: float = 0.1,
    ):
        """Train and deploy a bin item counter.

        Args:
            source: s3://BUCKET[/PREFIX] with bin-images/ and metadata/ (ABID: s3://aft-vbi-pds).
            endpoint_url: S3-compatible endpoint URL; empty for AWS S3.
            anonymous: Read the bucket with unsigned requests (true for the public ABID bucket).
            file_list: Path or s3:// URI of a file_list.json selecting bins; empty for all bins.
            limit: Use at most this many bins (0 = all).
            ingest_parts: Parallel ingest tasks, each copying one key range of the bucket.
            classes: Item counts to learn, as a range (0-5) or list (1,2,3,4,5).
            split: Train, validation and test fractions.
            seed: Seed of the split, the search and training.
            image_size: Side of the square model input, in pixels.
            trials: Hyperparameter-search trials.
            algorithm: Search algorithm: random, grid, tpe, bayesianoptimization or cmaes.
            max_trial_epochs: Most epochs a search trial trains.
            trial_early_stopping: Stop unpromising trials: none, median (Katib medianstop) or
                hyperband (local search only).
            parallel_trials: Trials at once (Katib search).
            train_epochs: Epochs of the final training (0 = the number the search chose).
            train_recipe: default (warmup + cosine decay) or original (Adam, constant rate).
            weights: ResNet50 start: none, imagenet, or a path or s3:// URI of weights.
            train_nodes: Nodes of the final training's TrainJob (when compiled for TrainJobs).
            train_checkpoint: s3:// prefix for per-epoch checkpoints, so that a retried train
                task resumes (empty: no checkpoint survives the pod).
            artifact_endpoint_url: S3 endpoint of the artifact store for Katib trials and
                TrainJob nodes (empty: AWS S3, or KFP's MinIO for minio:// artifacts).
            cluster_s3_secret: Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY that Katib
                trials and TrainJob nodes read artifacts with.
            min_accuracy: Quality gate: deploy and audit run only when the test accuracy
                reaches this (majority baselines: 0.17 for counts 0-5, 0.26 for 1-5).
            deploy_target: kserve (InferenceService) or local (ModelServer on loopback).
            model_name: Name of the InferenceService and of the served model.
            namespace: Namespace of the InferenceService (empty: the pipeline's namespace).
            deployment_mode: Standard (Kubernetes Deployment) or Knative (canary, scale to zero).
            canary_traffic_percent: Knative updates: traffic share of the new model (-1: all).
            audit_threshold: Flag a bin when the model gives its recorded count a probability
                below this.
        """
        source_options = {
            "source": source,
            "endpoint_url": endpoint_url,
            "anonymous": anonymous,
            "file_list": file_list,
            "limit": limit,
        }
        plan_task = _configure(
            plan_ingest(parts=ingest_parts, **source_options),
            "ingest",
            settings,
            name="plan-ingest",
        )
        with dsl.ParallelFor(plan_task.output) as part:
            part_task = _configure(
                ingest(part=part, workspace=shared, **source_options), "ingest", settings
            )
            # A retried part resumes from what its earlier attempt copied into the workspace.
            part_task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2)
        merge_task = _configure(
            merge_ingest(parts=dsl.Collected(part_task.outputs["raw"]), workspace=shared),
            "ingest",
            settings,
            name="merge-ingest",
        )
        arrange_task = _configure(
            arrange(
                raw=merge_task.outputs["raw"],
                classes=classes,
                split=split,
                seed=seed,
                workspace=shared,
            ),
            "arrange",
            settings,
        )
        preprocess_task = _configure(
            preprocess(
                arranged=arrange_task.outputs["arranged"],
                image_size=image_size,
                workspace=shared,
            ),
            "preprocess",
            settings,
        )
        tune_task = _configure(
            tune(
                shards=preprocess_task.outputs["shards"],
                trials=trials,
                algorithm=algorithm,
                max_epochs=max_trial_epochs,
                early_stopping=trial_early_stopping,
                seed=seed,
                recipe=train_recipe,
                weights=weights,
                backend=settings.tune_backend,
                parallel_trials=parallel_trials,
                artifact_endpoint_url=artifact_endpoint_url,
                s3_secret=cluster_s3_secret,
                gpus=settings.gpus,
                **settings.pool(),
            ),
            "tune",
            settings,
            gpu=settings.tune_backend == "local",
        )
        train_task = _configure(
            train(
                shards=preprocess_task.outputs["shards"],
                search=tune_task.outputs["search"],
                epochs=train_epochs,
                recipe=train_recipe,
                weights=weights,
                seed=seed,
                checkpoint=train_checkpoint,
                launcher=settings.train_launcher,
                num_nodes=train_nodes,
                gpus_per_node=settings.gpus,
                artifact_endpoint_url=artifact_endpoint_url,
                s3_secret=cluster_s3_secret,
                **settings.pool(),
            ),
            "train",
            settings,
            gpu=settings.train_launcher == "local",
        )
        evaluate_task = _configure(
            evaluate(model=train_task.outputs["model"], shards=preprocess_task.outputs["shards"]),
            "evaluate",
            settings,
        )
        release(
            model=train_task.outputs["model"],
            arranged=arrange_task.outputs["arranged"],
            raw=merge_task.outputs["raw"],
            accuracy=evaluate_task.outputs["accuracy"],
            min_accuracy=min_accuracy,
            deploy_target=deploy_target,
            model_name=model_name,
            namespace=namespace,
            deployment_mode=deployment_mode,
            canary_traffic_percent=canary_traffic_percent,
            audit_threshold=audit_threshold,
        ).set_display_name("release").set_caching_options(settings.caching)

    return inventory_monitoring


inventory_monitoring = build_pipeline()
