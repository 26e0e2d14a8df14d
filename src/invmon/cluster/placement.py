"""Where pods run and as whom: the GPU pool (node selector, tolerations), GPUs, ServiceAccount,
non-root user and S3 credentials by Secret reference.

One home for the pod placement that Katib trials, TrainJob nodes, the pipeline's GPU tasks and
the InferenceService share, for the ``KEY[=VALUE]:EFFECT`` form in which a toleration is given
on the command line, and for which Secret the pods read S3 with (:func:`s3_secret_for`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

from invmon.cluster.quantity import quantity
from invmon.cluster.volumes import WORKSPACE_PATH, PodVolumes, pod_storage
from invmon.core.settings import Settings, setting
from invmon.data import workspace as shared

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
NO_SECRET = "none"
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


@dataclass(frozen=True)
class S3Secret:
    """A Secret holding S3 credentials, and which of its keys hold the access key and secret.

    The pods get them as ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` by reference; only the
    Secret's name and key names appear in manifests, never its values.
    """

    name: str
    access_key: str = "AWS_ACCESS_KEY_ID"
    secret_key: str = "AWS_SECRET_ACCESS_KEY"

    @classmethod
    def parse(cls, text: str, flag: str = "--s3-secret") -> S3Secret | None:
        """``NAME``, ``NAME:ACCESS_KEY_KEY:SECRET_KEY_KEY`` or ``none`` (None: no Secret).

        A bare ``mlpipeline-minio-artifact`` means KFP's keys (``accesskey``/``secretkey``); any
        other bare name means ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``.
        """
        if text == NO_SECRET:
            return None
        name, *keys = text.split(":")
        if len(keys) not in (0, 2) or not _SECRET_NAME.fullmatch(name):
            raise ValueError(
                f"{flag} {text!r}: expected NAME, NAME:ACCESS_KEY_KEY:SECRET_KEY_KEY or "
                f"{NO_SECRET} (NAME a Kubernetes Secret name)"
            )
        if not keys:
            return KFP_OBJECT_STORE_SECRET if name == KFP_OBJECT_STORE_SECRET.name else cls(name)
        if not all(_SECRET_KEY.fullmatch(k) for k in keys):
            raise ValueError(f"{flag} {text!r}: Secret keys may hold letters, digits, '-._'")
        return cls(name, *keys)

    def env(self) -> list[dict]:
        """The credentials as the AWS SDK's environment variables, by reference to the Secret."""
        return [
            {"name": variable, "valueFrom": {"secretKeyRef": {"name": self.name, "key": key}}}
            for variable, key in (
                ("AWS_ACCESS_KEY_ID", self.access_key),
                ("AWS_SECRET_ACCESS_KEY", self.secret_key),
            )
        ]


# KFP's object store credentials: in the run's namespace on both install modes (single-user: the
# kubeflow namespace; multi-user: each Profile, made by the pipelines profile controller), keys as
# kubeflow/pipelines backend/src/v2/config/env.go:177-193 reads them.
KFP_OBJECT_STORE_SECRET = S3Secret("mlpipeline-minio-artifact", "accesskey", "secretkey")
# The project's Secret (manifests/templates/s3-secret.yaml), for s3:// pipeline roots.
PROJECT_S3_SECRET = S3Secret("invmon-s3")


def s3_secret_for(text: str, uri: str) -> S3Secret | None:
    """The Secret pods read ``uri`` with: ``text`` when given (see :meth:`S3Secret.parse`),
    else by store: KFP's own Secret for its object store (``minio://``), the project's Secret
    for ``s3://``, none for local paths."""
    if text:
        return S3Secret.parse(text)
    if uri.startswith("minio://"):
        return KFP_OBJECT_STORE_SECRET
    if uri.startswith("s3://"):
        return PROJECT_S3_SECRET
    return None


# The pods' non-root user, and the group that owns what they write on shared volumes.
RUN_AS_USER = 1000
FS_GROUP = 1000


@dataclass(frozen=True)
class Resources:
    """CPU and memory requests and limits of a task, written ``cpu=REQ[/LIMIT],memory=REQ[/LIMIT]``.

    The request is what the scheduler reserves on a node; the limit what the container may use
    (CPU above it is throttled, memory above it is OOM-killed). A missing limit is the request.
    """

    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str

    def __post_init__(self):
        for name in ("cpu", "memory"):
            request, limit = getattr(self, name), getattr(self, f"{name}_limit")
            if quantity(request, f"{name} request") > quantity(limit, f"{name} limit"):
                raise ValueError(f"{name} request {request} is above its limit {limit}")

    @classmethod
    def parse(cls, text: str, flag: str = "--resources") -> Resources:
        """Parse ``cpu=2/8,memory=4Gi/16Gi`` (both keys required, each limit optional)."""
        values = {}
        for item in str(text).split(","):
            key, sep, value = item.strip().partition("=")
            if not sep or key not in ("cpu", "memory") or key in values:
                raise ValueError(
                    f"{flag} {text!r}: expected cpu=REQUEST[/LIMIT],memory=REQUEST[/LIMIT]"
                )
            request, _, limit = value.partition("/")
            values[key] = (request, limit or request)
        if set(values) != {"cpu", "memory"}:
            raise ValueError(f"{flag} {text!r}: both cpu= and memory= are required")
        try:
            return cls(values["cpu"][0], values["memory"][0], values["cpu"][1], values["memory"][1])
        except ValueError as err:
            raise ValueError(f"{flag} {text!r}: {err}") from None

    def __str__(self) -> str:
        return f"cpu={self.cpu}/{self.cpu_limit},memory={self.memory}/{self.memory_limit}"

    def cores(self) -> int:
        """Whole cores the limit allows (at least one): how many processes are worth starting."""
        return max(1, math.floor(quantity(self.cpu_limit, "cpu limit")))

    def memory_bytes(self) -> float:
        """The memory limit in bytes."""
        return quantity(self.memory_limit, "memory limit")


@dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration for the GPU node pool's taint."""

    key: str = "nvidia.com/gpu"
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = "NoSchedule"

    def to_dict(self) -> dict:
        """The toleration as the API takes it (unset fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_toleration(text: str, flag: str = "--gpu-toleration") -> Toleration:
    """Parse ``KEY[=VALUE]:EFFECT`` (or ``KEY[=VALUE]`` for any effect) into a Toleration."""
    taint, _, effect = text.partition(":")
    key, sep, value = taint.partition("=")
    if not key:
        raise ValueError(f"{flag} {text!r}: expected KEY[=VALUE]:EFFECT")
    if effect and effect not in EFFECTS:
        raise ValueError(
            f"{flag} {text!r}: effect must be one of {', '.join(EFFECTS)}, got {effect!r}"
        )
    return Toleration(
        key=key,
        operator="Equal" if sep else "Exists",
        value=value if sep else None,
        effect=effect or None,
    )


@dataclass(frozen=True)
class PodPlacement:
    """Where training pods run and as whom: GPU pool, ServiceAccount, non-root user, S3 access.

    ``s3_secret`` is the Secret the pods read S3 with (given as text, it is parsed by
    :meth:`S3Secret.parse`); only its name and keys appear in manifests, never its values.
    ``fs_group`` owns what the pods write on volumes that honour it (the workspace PVC of a
    pipeline run, for instance).
    """

    gpus: int = 1
    node_selector: tuple[tuple[str, str], ...] = (("nvidia.com/gpu.present", "true"),)
    tolerations: tuple[dict, ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    service_account: str | None = None
    s3_secret: S3Secret | None = None
    run_as_user: int = RUN_AS_USER
    fs_group: int | None = FS_GROUP
    compute: Resources | None = None

    def __post_init__(self):
        if isinstance(self.s3_secret, str):
            object.__setattr__(self, "s3_secret", S3Secret.parse(self.s3_secret))
        if isinstance(self.compute, str):
            object.__setattr__(self, "compute", Resources.parse(self.compute))

    def env(self) -> list[dict]:
        """Environment variables: S3 credentials from the Secret, by reference."""
        return self.s3_secret.env() if self.s3_secret else []

    def resources(self) -> dict:
        """CPU and memory requests and limits (when ``compute`` is given) and GPU limits.

        Without requests a Profile's ResourceQuota on requests.cpu/memory rejects the pods, and
        the scheduler packs them blindly.
        """
        resources: dict = {}
        if self.compute is not None:
            c = self.compute
            resources["requests"] = {"cpu": c.cpu, "memory": c.memory}
            resources["limits"] = {"cpu": c.cpu_limit, "memory": c.memory_limit}
        if self.gpus:
            resources.setdefault("limits", {})["nvidia.com/gpu"] = str(self.gpus)
        return resources

    def security_context(self) -> dict:
        """Run as a non-root user; volumes that support it are made writable by ``fs_group``.

        ``OnRootMismatch``: the kubelet changes ownership only when the volume's root does not
        match, instead of walking every file of a large dataset at each pod start (the default,
        ``Always``; kubernetes.io/docs/tasks/configure-pod-container/security-context/).
        Emptydir, secret and configMap volumes ignore it; so do many ReadWriteMany CSI drivers
        (CSIDriver ``fsGroupPolicy``), whose permissions come from the export (docs/cluster.md).
        """
        context = {"runAsNonRoot": True, "runAsUser": self.run_as_user}
        if self.fs_group is not None:
            context.update(fsGroup=self.fs_group, fsGroupChangePolicy="OnRootMismatch")
        return context

    def gpu_pool(self) -> dict:
        """Node selector and tolerations of the GPU pool (none on CPU-only runs)."""
        if not self.gpus:
            return {}
        pool = {}
        if self.node_selector:
            pool["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            pool["tolerations"] = [dict(t) for t in self.tolerations]
        return pool


@dataclass(frozen=True)
class PodOptions(Settings):
    """Where the pods a stage creates on the cluster (Katib trials, TrainJob nodes) run."""

    image: str = setting("", help="image of the pods (default: the project's train image)")
    namespace: str = setting(
        "", help="namespace of the pods (default: this pod's namespace, else kubeflow-user)"
    )
    gpus: int = setting(1, help="GPUs per pod", minimum=0)
    node_selector: dict[str, str] = setting(
        default_factory=dict,
        help="node label of the GPU pool (repeatable; default nvidia.com/gpu.present=true)",
        metavar="KEY=VALUE",
    )
    tolerations: tuple[Toleration, ...] = setting(
        (),
        help="taint of the GPU pool to tolerate (repeatable; default nvidia.com/gpu:NoSchedule)",
        flag="--toleration",
        metavar="KEY[=VALUE]:EFFECT",
        parse=lambda text: parse_toleration(text, "--toleration"),
    )
    service_account: str = setting("", help="ServiceAccount of the pods")
    s3_secret: str = setting(
        "",
        help="Secret the pods (Katib trials, TrainJob nodes) read S3 with: NAME (keys "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; accesskey/secretkey for KFP's "
        "mlpipeline-minio-artifact), NAME:ACCESS_KEY_KEY:SECRET_KEY_KEY, or none for the AWS "
        "default chain (empty: mlpipeline-minio-artifact for data on KFP's object store, "
        "invmon-s3 for s3://)",
        metavar="SECRET",
    )
    workspace_claim: str = setting(
        "",
        help="PVC holding the dataset (a pipeline run's workspace), mounted read-only in the pods "
        "at --workspace-path; --data is then a path under it",
    )
    workspace_path: str = setting(
        WORKSPACE_PATH,
        help="where the pods mount --workspace-claim (where the KFP tasks see a workspace)",
    )
    shm_size: str = setting(
        PodVolumes.shm_size, help="memory-backed /dev/shm of each pod (DataLoader workers)"
    )
    scratch_size: str = setting(
        PodVolumes.scratch_size,
        help="local disk (/tmp) of each pod, requested as ephemeral-storage; without a workspace "
        "it holds the pod's copy of the dataset",
    )
    resources: str = setting(
        "cpu=4/8,memory=16Gi/32Gi",
        help="CPU and memory of each pod, cpu=REQUEST[/LIMIT],memory=REQUEST[/LIMIT] (a Profile's "
        "ResourceQuota refuses pods without requests; the memory limit covers --shm-size)",
        metavar="cpu=REQ[/LIM],memory=REQ[/LIM]",
    )
    unschedulable_timeout: float = setting(
        600.0,
        help="seconds a pod may stay unschedulable (a full quota, no node that fits) before the "
        "wait fails, naming the scheduler's message",
        above=0,
    )

    def volumes(self) -> PodVolumes:
        """The pods' volumes: the workspace (if given) read-only, /dev/shm and /tmp."""
        return PodVolumes(
            workspace_claim=self.workspace_claim or None,
            workspace_path=self.workspace_path,
            shm_size=self.shm_size,
            scratch_size=self.scratch_size,
        )

    def __post_init__(self):
        if self.s3_secret:
            S3Secret.parse(self.s3_secret)
        compute = Resources.parse(self.resources)
        if compute.memory_bytes() <= quantity(self.shm_size, "--shm-size"):
            raise ValueError(
                f"--resources {self.resources!r}: the memory limit must be above --shm-size "
                f"{self.shm_size} (the memory-backed /dev/shm counts against it)"
            )
        super().__post_init__()

    def placement(self, uri: str = "") -> PodPlacement:
        """The pods' placement for data at ``uri`` (which picks the default S3 Secret); without
        a node selector or toleration, the default GPU pool's."""
        chosen = {}
        if self.node_selector or self.tolerations:
            chosen = {
                "node_selector": tuple(self.node_selector.items()),
                "tolerations": tuple(t.to_dict() for t in self.tolerations),
            }
        return PodPlacement(
            gpus=self.gpus,
            service_account=self.service_account or None,
            s3_secret=s3_secret_for(self.s3_secret, uri),
            compute=Resources.parse(self.resources),
            **chosen,
        )


@dataclass(frozen=True)
class TaskPods:
    """What a tune or train task hands its stage about the data and the pods it may create."""

    data: str  # where this task reads the shards
    data_uri: str  # where pods outside the task read them: the workspace path, or the artifact
    pods: PodOptions


def task_pods(shards_path: str, shards_uri: str, parameters: dict, *, remote: bool) -> TaskPods:
    """The one adapter from a KFP task's parameters to the pods it creates on the cluster
    (Katib trials, TrainJob nodes), for the tune and train components alike.

    ``shards_path``/``shards_uri``: the shards artifact as the task sees it (a folder, or a
    pointer into the run's workspace) and its URI. ``parameters``: the task's parameters by name
    (its ``locals()``); those named like a :class:`PodOptions` field set it (tolerations come as
    the dicts KFP passes), and ``workspace`` and ``run_name`` say which workspace PVC the pods
    mount. ``remote``: pods outside the task read the data (katib, trainjob); they mount the
    run's workspace when the shards are in it.
    """
    data = str(shared.resolve(shards_path))
    storage = {}
    if remote:
        storage = pod_storage(data, parameters["workspace"], parameters["run_name"])
    options = {f.name: parameters[f.name] for f in fields(PodOptions) if f.name in parameters}
    options["tolerations"] = tuple(Toleration(**t) for t in options.get("tolerations", ()))
    pods = PodOptions(**options, **storage)
    return TaskPods(data, data if shared.is_pointer(shards_path) else shards_uri, pods)
