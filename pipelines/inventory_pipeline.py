"""The inventory-monitoring pipeline: ingest -> arrange -> preprocess -> tune -> train -> evaluate
-> (quality gate) -> [prebuild ->] deploy, audit and (with a registry) register.

:func:`build_pipeline` returns the ``@dsl.pipeline`` function for a set of cluster settings (image
registry and tag, GPU node pool); ``invmon compile`` compiles it to the YAML a Kubeflow cluster
runs, and ``invmon run`` runs the very same function locally through ``kfp.local``. The pipeline
only wires: its parameters' defaults and descriptions are the stages' own
(:mod:`invmon.pipelines.parameters`), and each task's body is its stage's ``run``.
"""

from types import SimpleNamespace

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Dataset, Input, Model

from invmon.components import (
    arrange,
    audit,
    deploy,
    evaluate,
    ingest,
    merge_audit,
    merge_ingest,
    plan_audit,
    plan_ingest,
    prebuild,
    preprocess,
    register,
    train,
    tune,
)
from invmon.pipelines.cluster_settings import ClusterSettings
from invmon.pipelines.parameters import DEFAULTS as D
from invmon.pipelines.parameters import docstring
from invmon.serving.options import ENGINE_KEY_ENV

PIPELINE_NAME = "inventory-monitoring"
# The pipeline parameters that tune, train and the release (the gate, deploy and audit) take,
# under the same names.
TUNE_PARAMETERS = (
    "trials",
    "algorithm",
    "max_epochs",
    "batch_sizes",
    "early_stopping",
    "seed",
    "recipe",
    "weights",
    "parallel_trials",
)
TRAIN_PARAMETERS = ("epochs", "recipe", "weights", "init_model", "seed", "checkpoint", "num_nodes")
# (min_accuracy reaches the release through evaluate, which raises it to the starting model's
# accuracy in a retrain round.)
RELEASE_PARAMETERS = (
    "deploy_target",
    "model_name",
    "namespace",
    "deployment_mode",
    "canary_traffic_percent",
    "monitor",
    "artifact_endpoint_url",
    "audit_threshold",
    "registry_url",
    "audit_parts",
)
DESCRIPTION = (
    "Count the items in Amazon Bin Image Dataset photos: ingest from S3, arrange, preprocess, "
    "tune, train a ResNet50, evaluate and deploy to KServe."
)


def _configure(task, stage: str, settings: ClusterSettings, group: str, **how):
    """Point a task at its stage's image, run it as non-root with its group's CPU and memory, and
    put GPU stages on the GPU pool.

    ``how``: ``gpu`` (on the GPU pool, with one GPU: the loop in a task is one process), ``shm``
    (a memory-backed /dev/shm for DataLoader workers: containers get 64 MiB by default), ``s3``
    (the task reads or writes S3 itself, so it gets the keys of ``settings.s3_secret``: KFP
    puts none in a task's pod), ``name`` (display name).
    """
    task.set_container_image(settings.images.for_stage(stage))
    task.set_display_name(how.get("name") or stage)
    # A task that reads or writes the run's workspace is never served from the cache: a cached
    # output would point into an earlier run's workspace, deleted when that run succeeded. KFP
    # >= 2.15 already puts the workspace PVC into the cache key of such tasks on a cluster
    # (backend/src/v2/driver/container.go:164-171), but kfp.local does not (docs/data.md).
    task.set_caching_options(settings.caching and not _uses_workspace(task))
    kubernetes.set_security_context(task, run_as_user=settings.run_as_user, run_as_non_root=True)
    resources = settings.resources(group)
    task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory).set_memory_limit(resources.memory_limit)
    if how.get("shm"):
        kubernetes.empty_dir_mount(
            task,
            volume_name="dshm",
            mount_path="/dev/shm",
            medium="Memory",
            size_limit=settings.shm_size,
        )
    if how.get("gpu"):
        task.set_accelerator_type(settings.accelerator).set_accelerator_limit(1)
        for key, value in settings.gpu.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in settings.gpu.gpu_tolerations:
            kubernetes.add_toleration(
                task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect
            )
    if how.get("s3") and (secret := settings.task_s3_secret()):
        kubernetes.use_secret_as_env(
            task,
            secret_name=secret.name,
            secret_key_to_env={
                secret.access_key: "AWS_ACCESS_KEY_ID",
                secret.secret_key: "AWS_SECRET_ACCESS_KEY",
            },
        )
    return task


def _uses_workspace(task) -> bool:
    """True when the task takes the workspace path, which is what makes KFP mount it."""
    return task.inputs.get("workspace") == dsl.WORKSPACE_PATH_PLACEHOLDER


def _retried(task, settings: ClusterSettings):
    """Retry a task whose failures are mostly transient (S3 reads, waiting on the cluster).

    ``settings.retries`` times, 30 s apart and doubling; none when it is 0. Upstream KFP's Argo
    defaults may turn this into retries on Argo errors only (docs/cluster.md, "Data, workspace
    and resources").
    """
    if not settings.retries:
        return task
    return task.set_retry(num_retries=settings.retries, backoff_duration="30s", backoff_factor=2)


def _ingest(p, settings: ClusterSettings, shared: str):
    """Plan the parts, copy them in parallel, merge them: returns the merge task."""
    source = {
        "source": p.source,
        "endpoint_url": p.endpoint_url,
        "anonymous": p.anonymous,
        "file_list": p.file_list,
        "limit": p.limit,
    }
    plan = plan_ingest(parts=p.ingest_parts, **source)
    _retried(_configure(plan, "ingest", settings, "data", name="plan-ingest", s3=True), settings)
    with dsl.ParallelFor(plan.output) as part:
        part_task = ingest(part=part, workspace=shared, **source)
        # A retried part resumes from what its earlier attempt copied into the workspace.
        _retried(_configure(part_task, "ingest", settings, "data", s3=True), settings)
    merged = merge_ingest(parts=dsl.Collected(part_task.outputs["raw"]), workspace=shared)
    return _configure(merged, "ingest", settings, "data", name="merge-ingest")


def _arrange(p, settings: ClusterSettings, raw, shared: str):
    """Arrange, with the recounts over the recorded counts (read with the source's S3 access)."""
    arranged = arrange(
        raw=raw,
        classes=p.classes,
        split=p.split,
        seed=p.seed,
        recounts=p.recounts,
        endpoint_url=p.endpoint_url,
        anonymous=p.anonymous,
        workspace=shared,
    )
    return _configure(arranged, "arrange", settings, "data", s3=True)


def _evaluate(p, settings: ClusterSettings, model, shards, shared: str):
    """Evaluate the new model and, in a retrain round, the starting model on the same split."""
    evaluated = evaluate(
        model=model,
        shards=shards,
        init_model=p.init_model,
        endpoint_url=p.artifact_endpoint_url,
        min_accuracy=p.min_accuracy,
        workspace=shared,
    )
    return _evaluating(evaluated, "evaluate", settings, s3=True)


def _search_and_train(p, settings: ClusterSettings, shards, shared: str):
    """The search, then the final training with what it chose: returns the train task.

    With the katib backend and the trainjob launcher the tasks only create pods on the GPU pool
    and wait; those pods mount the run's workspace, named after the run's workflow.
    """
    cluster = {
        "endpoint_url": p.artifact_endpoint_url,
        "s3_secret": p.s3_secret,
        "workspace": shared,
        **settings.pool(),
    }
    # The run's workflow name (which names its workspace PVC) only where pods outside the task
    # mount it: kfp.local cannot resolve this placeholder.
    run_name = {"run_name": dsl.PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER}
    search = tune(
        shards=shards,
        **{name: getattr(p, name) for name in TUNE_PARAMETERS},
        backend=settings.gpu.tune_backend,
        # A trial is one training process: one GPU (parallel_trials runs several).
        gpus=1,
        **cluster,
        **(run_name if settings.gpu.tune_backend == "katib" else {}),
    )
    _on_gpu_here(search, "tune", settings, settings.gpu.tune_backend == "local")
    model = train(
        shards=shards,
        search=search.outputs["search"],
        **{name: getattr(p, name) for name in TRAIN_PARAMETERS},
        launcher=settings.gpu.train_launcher,
        gpus=settings.gpu.gpus,
        **cluster,
        **(run_name if settings.gpu.train_launcher == "trainjob" else {}),
    )
    return _on_gpu_here(model, "train", settings, settings.gpu.train_launcher == "local")


def _on_gpu_here(task, stage: str, settings: ClusterSettings, here: bool):
    """Tune or train: on the GPU pool when the loop runs in the task, else a task that waits."""
    # Either way the task reads S3 itself: the weights, a checkpoint, the TrainJob's model.
    if here:
        return _configure(task, stage, settings, "gpu", gpu=True, shm=True, s3=True)
    # The task waits on Katib or a TrainJob, which are followed again by name when it is retried.
    return _retried(_configure(task, stage, settings, "control", s3=True), settings)


def _release(settings: ClusterSettings, shared: str):
    """The quality gate and what it guards, as a pipeline of its own.

    A pipeline of its own so that the gate compares two inputs of one DAG, which kfp.local
    evaluates as a cluster does (it cannot resolve a named output of a sibling task in a
    condition).
    """

    def release(
        model: Input[Model],
        arranged: Input[Dataset],
        raw: Input[Dataset],
        evaluation: Input[Artifact],
        accuracy: float,
        min_accuracy: float,
        deploy_target: str,
        model_name: str,
        namespace: str,
        deployment_mode: str,
        canary_traffic_percent: int,
        monitor: str,
        artifact_endpoint_url: str,
        audit_threshold: float,
        registry_url: str,
        audit_parts: int,
    ):
        """The quality gate: deploy, audit and register run only when accuracy >= min_accuracy.

        The root passes evaluate's required_accuracy as min_accuracy: the pipeline's
        min_accuracy or, in a retrain round, the starting model's accuracy on the same test split
        when that is higher, so that a round that makes the model worse is not deployed
        (evaluate's log and metrics say which bound it missed).

        Args:
            model: The trained model folder.
            arranged: The arranged dataset (the smoke request's image).
            raw: The ingested bins to audit.
            evaluation: Evaluate's reference artifact, with its metrics.json.
            accuracy: Test accuracy from evaluate.
            min_accuracy: The gate: the least test accuracy (evaluate's required_accuracy).
            deploy_target: kserve or local.
            model_name: Name of the InferenceService and of the served model.
            namespace: Namespace of the InferenceService.
            deployment_mode: Standard or Knative.
            canary_traffic_percent: Knative updates: traffic share of the new model (-1: all).
            monitor: URL of invmon monitor, which KServe's payload logger sends every request
                and response (empty: no logger).
            artifact_endpoint_url: The artifact store's S3 endpoint, where KServe fetches a
                minio:// model (empty: KFP's own object store).
            audit_threshold: Flag a bin when its recorded count's probability is below this.
            registry_url: The Kubeflow Model Registry to register the model in (empty: off).
            audit_parts: Parallel audit tasks, each scoring one key range of the bins.
        """
        with dsl.If(accuracy >= min_accuracy, name="quality-gate"):
            served = deploy(
                model=_prebuilt(model, settings),
                arranged=arranged,
                target=deploy_target,
                name=model_name,
                namespace=namespace,
                **settings.predictor(),
                deployment_mode=deployment_mode,
                canary_traffic_percent=canary_traffic_percent,
                monitor=monitor,
                store_endpoint=artifact_endpoint_url,
                workspace=shared,
            )
            # Deploy creates or updates the service and waits: a retry follows the same object.
            _retried(_configure(served, "deploy", settings, "control"), settings)
            with dsl.If(registry_url != "", name="model-registry"):
                _register(model, evaluation, registry_url, model_name, settings)
            # After the registry's branch, which keeps its name (condition-2).
            _audit(model, raw, audit_threshold, audit_parts, settings, shared)

    return dsl.pipeline(
        name="release",
        description="Deploy the model and audit the bins, when the test accuracy passes the gate.",
        pipeline_config=settings.workspace.config(),
    )(release)


def _prebuilt(model, settings: ClusterSettings):
    """The model deploy serves: with an engine key Secret and predictors on CPUs, the model with
    its serving engine built ahead of time by a prebuild task (docs/serving.md); else ``model``.

    The task runs where the predictor does (the nodes of ``serving_node_selector``, or any node
    without GPUs: the package is specific to the kind of CPU, and a predictor on another kind
    refuses it and loads as without one), with the key from the Secret as INVMON_ENGINE_KEY,
    never as a parameter.
    """
    if not settings.engine_key_secret or settings.serving_gpus:
        return model  # a predictor on a GPU never uses a CPU package
    engine = prebuild(model=model)
    _retried(_configure(engine, "prebuild", settings, "data"), settings)
    for key, value in settings.serving_node_selector.items():
        kubernetes.add_node_selector(engine, label_key=key, label_value=value)
    kubernetes.use_secret_as_env(
        engine,
        secret_name=settings.engine_key_secret,
        secret_key_to_env={ENGINE_KEY_ENV: ENGINE_KEY_ENV},
    )
    return engine.outputs["prebuilt"]


def _audit(model, raw, threshold, parts, settings: ClusterSettings, shared: str):
    """Plan the parts, score them in parallel (each on the GPU pool if evaluate is), merge."""
    plan = plan_audit(raw=raw, parts=parts, workspace=shared)
    _configure(plan, "audit", settings, "data", name="plan-audit")
    # No static parallelism: the number of parts, a run parameter, is the number of pods.
    with dsl.ParallelFor(plan.output) as part:
        scored = audit(model=model, raw=raw, part=part, threshold=threshold, workspace=shared)
        _evaluating(scored, "audit", settings)
    merged = merge_audit(parts=dsl.Collected(scored.outputs["scores"]), raw=raw, workspace=shared)
    return _configure(merged, "audit", settings, "data", name="merge-audit")


def _register(model, evaluation, registry_url: str, model_name: str, settings: ClusterSettings):
    """Record the model in the registry, its version named after the run."""
    registered = register(
        model=model,
        evaluation=evaluation,
        registry_url=registry_url,
        name=model_name,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    )
    # Not retried: a version that a failed attempt half-wrote is refused as taken, and the
    # error of the first attempt is the one to read.
    return _configure(registered, "register", settings, "control")


def _evaluating(task, stage: str, settings: ClusterSettings, **how):
    """Evaluate or audit: a ResNet50 over many images, on the GPU pool if compiled so."""
    return _configure(
        task, stage, settings, "evaluate", gpu=settings.evaluate_on_gpu, shm=True, **how
    )


def build_pipeline(settings: ClusterSettings | None = None):
    """Return the pipeline function, wired for ``settings`` (defaults: project images, 1 GPU)."""
    # Over 60 lines only because the nested signature is the pipeline's interface: one line per
    # parameter, which KFP reads. The wiring itself is the 25 lines after it.
    settings = settings or ClusterSettings()
    # With a workspace, the data tasks ask for it (and get it mounted) through this placeholder.
    shared = dsl.WORKSPACE_PATH_PLACEHOLDER if settings.workspace.enabled else ""
    release = _release(settings, shared)

    # The signature is the pipeline's interface (KFP reads it); defaults come from the stages.
    def inventory_monitoring(
        source: str = D.source,
        endpoint_url: str = D.endpoint_url,
        anonymous: bool = D.anonymous,
        file_list: str = D.file_list,
        limit: int = D.limit,
        ingest_parts: int = D.ingest_parts,
        classes: str = D.classes,
        split: str = D.split,
        seed: int = D.seed,
        recounts: str = D.recounts,
        image_size: int = D.image_size,
        trials: int = D.trials,
        algorithm: str = D.algorithm,
        max_epochs: int = D.max_epochs,
        batch_sizes: str = D.batch_sizes,
        early_stopping: str = D.early_stopping,
        parallel_trials: int = D.parallel_trials,
        epochs: int = D.epochs,
        recipe: str = D.recipe,
        weights: str = D.weights,
        init_model: str = D.init_model,
        num_nodes: int = D.num_nodes,
        checkpoint: str = D.checkpoint,
        artifact_endpoint_url: str = D.artifact_endpoint_url,
        s3_secret: str = D.s3_secret,
        min_accuracy: float = D.min_accuracy,
        deploy_target: str = D.deploy_target,
        model_name: str = D.model_name,
        namespace: str = D.namespace,
        deployment_mode: str = D.deployment_mode,
        canary_traffic_percent: int = D.canary_traffic_percent,
        monitor: str = D.monitor,
        audit_threshold: float = D.audit_threshold,
        registry_url: str = D.registry_url,
        audit_parts: int = D.audit_parts,
    ):
        p = SimpleNamespace(**locals())
        merged = _ingest(p, settings, shared)
        arranged = _arrange(p, settings, merged.outputs["raw"], shared)
        shards = preprocess(
            arranged=arranged.outputs["arranged"],
            image_size=image_size,
            # One decoding process per core its CPU limit allows, not per core of the node.
            workers=settings.resources("data").cores(),
            workspace=shared,
        )
        _configure(shards, "preprocess", settings, "data")
        model = _search_and_train(p, settings, shards.outputs["shards"], shared)
        evaluated = _evaluate(p, settings, model.outputs["model"], shards.outputs["shards"], shared)
        release(
            model=model.outputs["model"],
            arranged=arranged.outputs["arranged"],
            raw=merged.outputs["raw"],
            evaluation=evaluated.outputs["reference"],
            accuracy=evaluated.outputs["accuracy"],
            min_accuracy=evaluated.outputs["required_accuracy"],
            **{name: getattr(p, name) for name in RELEASE_PARAMETERS},
        ).set_display_name("release").set_caching_options(settings.caching and not shared)

    inventory_monitoring.__doc__ = docstring("Train and deploy a bin item counter.")
    return dsl.pipeline(
        name=PIPELINE_NAME, description=DESCRIPTION, pipeline_config=settings.workspace.config()
    )(inventory_monitoring)


inventory_monitoring = build_pipeline()
