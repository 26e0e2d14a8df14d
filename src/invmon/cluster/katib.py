"""The Katib backend of tune: the search as a Katib v1beta1 Experiment on a cluster.

:func:`render_experiment` turns a :class:`~invmon.training.search.SearchSpec` into an Experiment
built from the ``kubeflow`` package's typed Katib models. Each trial is a batch Job running
``invmon train`` in the train image on the GPU pool, with the trial's parameters wired to the train
command's flags (``--lr=${trialParameters.lr}``) and the rest of the recipe passed as fixed flags;
it reads the dataset in place from the pipeline run's workspace PVC, mounted read-only
(:class:`~invmon.cluster.volumes.PodVolumes`), or from ``s3://``. The train command prints one
timestamped ``name=value`` line per epoch, which Katib's StdOut metrics collector parses with its
default filter.

:func:`run_experiment` creates the Experiment through the ``kubernetes`` client (kubeflow-katib's
own SDK cannot be installed beside kfp), waits for it, and writes ``best.json``, ``trials.csv`` and
``search_space.json`` in the same shape as the local backend.

The trials' namespace needs the label ``katib.kubeflow.org/metrics-collector-injection: enabled``
(Kubeflow profiles have it), so that Katib injects its collector into the trial pods.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from invmon.cluster import objects as cluster
from invmon.cluster import typed
from invmon.cluster.container_images import DEFAULT_IMAGES
from invmon.cluster.placement import PodPlacement
from invmon.cluster.scheduling import POD_GROUP_LABEL, watch_pods
from invmon.cluster.volumes import PodVolumes
from invmon.core.settings import flag_for, to_flags
from invmon.training.config import TrainConfig
from invmon.training.search import SearchSpec, TuneResult, write_outputs

log = logging.getLogger(__name__)

EXPERIMENT = cluster.Resource("kubeflow.org", "v1beta1", "experiments", "Experiment")
TRIAL = cluster.Resource("kubeflow.org", "v1beta1", "trials", "Trial")
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
PRIMARY_CONTAINER = "training"
TRIAL_OUTPUT = "/tmp/trial-model"
# Katib maps each algorithm to a suggestion service; these take a random_state setting.
SEEDED_ALGORITHMS = ("random", "tpe", "cmaes", "bayesianoptimization")
NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")


def default_image() -> str:
    """The project's train image."""
    return DEFAULT_IMAGES.image("train")


@dataclass(frozen=True)
class TrialSettings:
    """Where and how each trial runs: data location, image, namespace, placement and volumes.

    The data is a path in the workspace PVC that ``volumes`` mounts (read in place), or an
    ``s3://`` location (each trial copies it to its /tmp volume).
    """

    data: str
    image: str = field(default_factory=default_image)
    namespace: str = "kubeflow-user"
    endpoint_url: str | None = None
    placement: PodPlacement = field(default_factory=PodPlacement)
    volumes: PodVolumes = field(default_factory=PodVolumes)

    def __post_init__(self):
        if not (self.data.startswith("s3://") or self.volumes.holds(self.data)):
            raise ValueError(
                f"--data {self.data!r}: Katib trials run in their own pods; pass the s3:// "
                "location of the preprocessed dataset, or a path in the workspace PVC given "
                f"with --workspace-claim (mounted at {self.volumes.workspace_path})"
            )


def check_name(name: str) -> str:
    """Refuse names Kubernetes would refuse (Katib adds a suffix for trials, so at most 40)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"experiment name {name!r} is not allowed: lowercase letters, digits and '-', "
            "starting with a letter, at most 40 characters"
        )
    return name


def trial_command(spec: SearchSpec, base: TrainConfig, settings: TrialSettings) -> list[str]:
    """``invmon train`` with the searched flags as trial parameters and the rest fixed."""
    searched = [p.name for p in spec.parameters]
    command = ["invmon", "train", "--data", settings.data, "--out", TRIAL_OUTPUT, "--no-resume"]
    if settings.endpoint_url:
        command += ["--endpoint-url", settings.endpoint_url]
    command += to_flags(base, skip=tuple(searched))
    command += [f"{flag_for(TrainConfig, name)}=${{trialParameters.{name}}}" for name in searched]
    return command


def trial_job(spec: SearchSpec, base: TrainConfig, settings: TrialSettings) -> dict:
    """The batch Job each trial runs, checked against the kubernetes client's V1Job model."""
    placement, volumes = settings.placement, settings.volumes
    resources = placement.resources()
    resources["requests"] = {**resources.get("requests", {}), **volumes.requests()}
    container = {
        "name": PRIMARY_CONTAINER,
        "image": settings.image,
        # Katib's collector wraps ``command`` in a shell that tees stdout into its log file.
        "command": trial_command(spec, base, settings),
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False},
        "volumeMounts": volumes.mounts(),
    }
    if env := placement.env():
        container["env"] = env
    pod = {
        "restartPolicy": "Never",
        "securityContext": placement.security_context(),
        "containers": [container],
        "volumes": volumes.volumes(),
        **placement.gpu_pool(),
    }
    if placement.service_account:
        pod["serviceAccountName"] = placement.service_account
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            # A failed trial is Katib's to count (maxFailedTrialCount), not the Job's to retry.
            "backoffLimit": 0,
            "template": {
                # Istio's sidecar would keep the pod, and so the trial, running forever.
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": pod,
            },
        },
    }
    typed.check(job, "V1Job")
    return job


def render_experiment(
    name: str, spec: SearchSpec, base: TrainConfig, settings: TrialSettings, seed: int = 0
) -> dict:
    """The Experiment for ``spec``, built from the typed Katib models; returns its JSON form."""
    # Longer than most functions on purpose: one nested constructor whose shape is the CRD's,
    # read top to bottom against the Katib API reference.
    from kubeflow_katib_api import models

    if spec.early_stopping == "hyperband":
        raise ValueError(
            "--early-stopping hyperband is a local pruner; Katib's early stopping is median "
            "(medianstop)"
        )
    metric = spec.objective_metric
    others = [m for m in ("accuracy", "val_loss", "loss", "epoch") if m != metric]
    strategy = "max" if spec.objective_type == "maximize" else "min"
    algorithm = models.V1beta1AlgorithmSpec(algorithmName=spec.algorithm)
    if spec.algorithm in SEEDED_ALGORITHMS:
        algorithm.algorithm_settings = [
            models.V1beta1AlgorithmSetting(name="random_state", value=str(seed))
        ]
    experiment = models.V1beta1Experiment(
        apiVersion=EXPERIMENT.api_version,
        kind=EXPERIMENT.kind,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=check_name(name), namespace=settings.namespace, labels=dict(cluster.PART_OF)
        ),
        spec=models.V1beta1ExperimentSpec(
            objective=models.V1beta1ObjectiveSpec(
                type=spec.objective_type,
                objectiveMetricName=metric,
                additionalMetricNames=others,
                # The best epoch of a trial counts, as in the local search.
                metricStrategies=[
                    models.V1beta1MetricStrategy(name=metric, value=strategy),
                    models.V1beta1MetricStrategy(name="epoch", value="latest"),
                ],
            ),
            algorithm=algorithm,
            earlyStopping=_early_stopping(spec),
            parallelTrialCount=spec.parallel_trials,
            maxTrialCount=spec.max_trials,
            maxFailedTrialCount=spec.max_failed_trials,
            metricsCollectorSpec=models.V1beta1MetricsCollectorSpec(
                collector=models.V1beta1CollectorSpec(kind="StdOut")
            ),
            parameters=[p.katib_spec(spec.algorithm) for p in spec.parameters],
            trialTemplate=models.V1beta1TrialTemplate(
                primaryContainerName=PRIMARY_CONTAINER,
                retain=False,
                trialParameters=[
                    models.V1beta1TrialParameterSpec(
                        name=p.name,
                        reference=p.name,
                        description=f"invmon train {flag_for(TrainConfig, p.name)}",
                    )
                    for p in spec.parameters
                ],
                trialSpec=_labelled(trial_job(spec, base, settings), name),
            ),
        ),
    )
    manifest = experiment.to_dict()
    check_experiment(manifest)
    return manifest


def _labelled(job: dict, experiment: str) -> dict:
    """The trial Job with its pods labelled as the Experiment's (the unschedulable watch)."""
    metadata = job["spec"]["template"]["metadata"]
    metadata["labels"] = {**metadata.get("labels", {}), POD_GROUP_LABEL: experiment}
    return job


def _early_stopping(spec: SearchSpec):
    from kubeflow_katib_api import models

    if spec.early_stopping != "median":
        return None
    return models.V1beta1EarlyStoppingSpec(
        algorithmName="medianstop",
        algorithmSettings=[
            models.V1beta1EarlyStoppingSetting(
                name="min_trials_required", value=str(spec.min_trials)
            ),
            models.V1beta1EarlyStoppingSetting(name="start_step", value=str(spec.start_epoch)),
        ],
    )


def check_experiment(manifest: dict):
    """Check an Experiment against the typed Katib models (unknown fields are errors).

    Also checks that every trial parameter is referenced in the trial's command and names a
    searched parameter, the mistakes that make trials run with default settings.
    """
    from kubeflow_katib_api import models

    experiment = typed.check(manifest, models.V1beta1Experiment)
    template = experiment.spec.trial_template
    searched = {p.name for p in experiment.spec.parameters}
    command = " ".join(template.trial_spec["spec"]["template"]["spec"]["containers"][0]["command"])
    for parameter in template.trial_parameters:
        if parameter.reference not in searched:
            raise ValueError(f"trial parameter {parameter.name} refers to no searched parameter")
        if f"${{trialParameters.{parameter.name}}}" not in command:
            raise ValueError(f"trial parameter {parameter.name} is not used by the trial command")
    return experiment


# -- running it ------------------------------------------------------------------------------


def run_experiment(
    manifest: dict,
    out: str | Path,
    spec: SearchSpec,
    base: TrainConfig | None = None,
    api=None,
    timeout: float = 24 * 3600,
    poll: float = 30.0,
    sleep=None,
    unschedulable_timeout: float | None = None,
    clock=None,
) -> TuneResult:
    """Create the Experiment (or follow an existing one of the same name), wait until it succeeds,
    and write best.json (recording ``base``, the trials' training config), trials.csv and
    search_space.json to ``out``.

    Raises RuntimeError naming Katib's reason when the Experiment fails,
    :class:`~invmon.cluster.scheduling.PodsUnschedulable` when a trial pod stays unschedulable for
    ``unschedulable_timeout`` seconds, TimeoutError after ``timeout`` seconds.
    """
    api = api or cluster.custom_objects_api()
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    cluster.create_or_reuse(api, EXPERIMENT, manifest)
    what = f"Katib Experiment {namespace}/{name}"
    clocked = {} if clock is None else {"clock": clock}
    watch = watch_pods(api, namespace, name, what, unschedulable_timeout, **clocked)

    def on_poll(experiment: dict) -> None:
        _log_progress(experiment)
        if watch is not None:
            watch(experiment)

    waiting = {"poll": poll, "timeout": timeout, "on_poll": on_poll, **clocked}
    if sleep is not None:
        waiting["sleep"] = sleep
    finished = cluster.wait_for(
        lambda: cluster.get(api, EXPERIMENT, namespace, name),
        "Succeeded",
        "Failed",
        what,
        **waiting,
    )
    trials = api.list_namespaced_custom_object(
        TRIAL.group,
        TRIAL.version,
        namespace,
        TRIAL.plural,
        label_selector=f"{EXPERIMENT_LABEL}={name}",
    )
    result = result_from_status(finished, trials.get("items", []), spec)
    write_outputs(Path(out), spec, result, base)
    return result


def _log_progress(experiment: dict) -> None:
    status = experiment.get("status") or {}
    log.info(
        "Experiment %s: %s trials succeeded, %s running, %s failed, %s early stopped",
        experiment["metadata"]["name"],
        status.get("trialsSucceeded", 0),
        status.get("trialsRunning", 0),
        status.get("trialsFailed", 0),
        status.get("trialsEarlyStopped", 0),
    )


def result_from_status(experiment: dict, trials: list[dict], spec: SearchSpec) -> TuneResult:
    """The best parameters (typed as the local backend types them) and every trial's outcome."""
    optimal = (experiment.get("status") or {}).get("currentOptimalTrial") or {}
    assignments = optimal.get("parameterAssignments") or []
    if not assignments:
        raise RuntimeError(
            f"Experiment {experiment['metadata']['name']} succeeded without an optimal trial "
            "(did every trial report the objective metric?)"
        )
    best = {a["name"]: spec.parameter(a["name"]).parse(a["value"]) for a in assignments}
    value = _metric(optimal.get("observation"), spec)
    rows = [_trial_row(number, trial, spec) for number, trial in enumerate(_by_creation(trials))]
    return TuneResult(best_parameters=best, best_value=value, trials=rows)


def _metric(observation: dict | None, spec: SearchSpec, name: str | None = None) -> float | None:
    name = name or spec.objective_metric
    strategy = "max" if spec.objective_type == "maximize" else "min"
    for metric in (observation or {}).get("metrics") or []:
        if metric.get("name") == name:
            text = metric.get("latest" if name == "epoch" else strategy)
            try:
                return float(text)
            except (TypeError, ValueError):
                return None  # Katib reports "unavailable" when a trial printed no metric
    return None


def _by_creation(trials: list[dict]) -> list[dict]:
    def key(trial: dict) -> tuple[str, str]:
        meta = trial["metadata"]
        return meta.get("creationTimestamp") or "", meta["name"]

    return sorted(trials, key=key)


def _trial_row(number: int, trial: dict, spec: SearchSpec) -> dict:
    status = trial.get("status") or {}
    state = next(
        (
            kind
            for kind in ("Succeeded", "EarlyStopped", "Failed", "MetricsUnavailable", "Killed")
            if cluster.condition(trial, kind)
        ),
        "Running",
    )
    epochs = _metric(status.get("observation"), spec, "epoch")
    row = {
        "number": number,
        "name": trial["metadata"]["name"],
        "state": state,
        "value": _metric(status.get("observation"), spec),
        "trained_epochs": int(epochs) if epochs is not None else 0,
    }
    for assignment in (trial.get("spec") or {}).get("parameterAssignments") or []:
        row[assignment["name"]] = spec.parameter(assignment["name"]).parse(assignment["value"])
    return row


def experiment_manifest(
    data_uri: str,
    out: str | Path,
    spec: SearchSpec,
    base: TrainConfig,
    image: str = "",
    namespace: str = "",
    placement: PodPlacement | None = None,
    endpoint_url: str | None = None,
    name: str = "",
    volumes: PodVolumes | None = None,
) -> dict:
    """The Experiment that searches over the dataset at ``data_uri`` (a path in the workspace
    PVC that ``volumes`` mounts, ``s3://``, or an artifact URI on KFP's object store) with trials
    that train from ``base``.

    Without ``name``, the Experiment is named after ``out`` and the data, so a retried task
    follows the Experiment it started instead of starting another. Empty ``image`` and
    ``namespace`` mean the project's train image and this pod's namespace (else kubeflow-user).
    """
    volumes = volumes or PodVolumes()
    if volumes.holds(data_uri):
        data, endpoint = data_uri, endpoint_url
    else:
        data, endpoint = cluster.s3_location(data_uri, endpoint_url)
    settings = TrialSettings(
        data=data,
        image=image or default_image(),
        namespace=namespace or cluster.current_namespace("kubeflow-user"),
        endpoint_url=endpoint,
        placement=placement or PodPlacement(),
        volumes=volumes,
    )
    where = (data, volumes.workspace_claim) if volumes.workspace_claim else (data,)
    name = name or cluster.object_name("invmon-tune", str(out), *where)
    return render_experiment(name, spec, base, settings, seed=base.seed)
