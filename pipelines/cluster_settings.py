"""The cluster a pipeline is compiled for: images, GPU pool, task resources, backends, caching and
the run's workspace.

:class:`ClusterSettings` is the one definition of the compile-time settings: ``invmon compile``,
``invmon submit`` and ``invmon run`` derive their options from it, and
:func:`invmon.pipelines.inventory_pipeline.build_pipeline` wires the pipeline for it. It lives apart
from the compile command so that the pipeline module and the commands import it from below.
"""

from __future__ import annotations

from dataclasses import dataclass

from invmon.cluster.container_images import ImageSet
from invmon.cluster.gpu_pool import GpuPool
from invmon.cluster.inference_service import ServiceSpec, check_secret_name
from invmon.cluster.placement import (
    KFP_OBJECT_STORE_SECRET,
    RUN_AS_USER,
    PodOptions,
    Resources,
    S3Secret,
)
from invmon.cluster.quantity import quantity
from invmon.cluster.workspace import WorkspaceSettings
from invmon.core.settings import Settings, flag_for, inherit, setting

# The task groups that share a CPU/memory setting (see ClusterSettings.resources).
RESOURCE_GROUPS = ("data", "gpu", "evaluate", "control")


def _resources(default: str, tasks: str) -> str:
    return setting(
        default,
        help=f"CPU and memory requests/limits of {tasks}",
        metavar="cpu=REQ[/LIM],memory=REQ[/LIM]",
        parse=lambda text: str(Resources.parse(text)),
    )


@dataclass(frozen=True)
class ClusterSettings(Settings):
    """Compile-time settings: where images come from and where GPU stages are scheduled."""

    images: ImageSet = setting(default_factory=ImageSet, help="container images")
    gpu: GpuPool = setting(
        default_factory=GpuPool, help="GPU work: search and training backends, GPU pool"
    )
    accelerator: str = setting("nvidia.com/gpu", help="GPU resource name", cli=False)
    serving_gpus: int = setting(
        0,
        help="GPUs of each predictor replica; above 0 the predictor runs on the GPU pool (its "
        "node selector and tolerations)",
        minimum=0,
    )
    serving_node_selector: dict[str, str] = setting(
        default_factory=dict,
        help="node label the CPU predictor and the prebuild task must run on (repeatable), so "
        "that a prebuilt engine meets the kind of CPU it was built for (empty: any node without "
        "GPUs)",
        metavar="KEY=VALUE",
    )
    s3_secret: str = setting(
        KFP_OBJECT_STORE_SECRET.name,
        help="Secret whose S3 keys the tasks that read or write S3 themselves (ingest, "
        "arrange, tune, train, evaluate) get as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: NAME "
        "(KFP's "
        "mlpipeline-minio-artifact: its accesskey/secretkey; any other: the AWS_* keys), "
        "NAME:ACCESS_KEY_KEY:SECRET_KEY_KEY, or none (the AWS default chain, e.g. IRSA); with "
        "the external-s3 component, invmon-s3",
        flag="--task-s3-secret",
        metavar="SECRET",
    )
    engine_key_secret: str = inherit(
        ServiceSpec,
        "engine_key_secret",
        help="Secret whose INVMON_ENGINE_KEY signs the serving engine a prebuild task builds "
        "before deploy, and with which the predictors verify it (empty: no prebuild task; "
        "predictors on a CPU compile their engine in the background at start)",
    )
    run_as_user: int = setting(RUN_AS_USER, help="user id every task runs as", cli=False)
    # One setting per group of tasks that need alike: the data tasks (ingest, arrange,
    # preprocess), the GPU tasks (tune and train when they run the loop themselves), evaluate and
    # audit, and the tasks that only talk to the cluster (deploy; tune and train when Katib or a
    # TrainJob does the work). docs/data.md sizes them.
    data_resources: str = _resources("cpu=2/8,memory=4Gi/16Gi", "ingest, arrange and preprocess")
    gpu_resources: str = _resources(
        "cpu=4/8,memory=16Gi/32Gi", "tune and train on a GPU node (the limit covers /dev/shm)"
    )
    evaluate_resources: str = _resources(
        "cpu=2/8,memory=8Gi/16Gi", "evaluate and audit (the limit covers /dev/shm)"
    )
    control_resources: str = _resources(
        "cpu=500m/2,memory=2Gi/4Gi", "deploy, and tune and train when Katib or a TrainJob works"
    )
    shm_size: str = inherit(
        PodOptions,
        "shm_size",
        help="memory-backed /dev/shm of every task and pod that runs a DataLoader (it counts "
        "against their memory limit)",
    )
    evaluate_on_gpu: bool = setting(
        False, help="run evaluate and audit on the GPU pool with one GPU each"
    )
    retries: int = setting(
        3,
        help="times a task whose failures are mostly transient (S3 reads, waiting on the "
        "cluster) is retried, 30 s apart and doubling (0: never)",
        minimum=0,
    )
    caching: bool = setting(
        True,
        help="compile every task with caching off (clusters cache by default)",
        flag="--no-cache",
    )
    workspace: WorkspaceSettings = setting(
        default_factory=WorkspaceSettings, help="the run's shared workspace"
    )

    def __post_init__(self):
        super().__post_init__()
        S3Secret.parse(self.s3_secret, "--task-s3-secret")
        check_secret_name(self.engine_key_secret, "--engine-key-secret")
        shm = quantity(self.shm_size, "--shm-size")
        for group in RESOURCE_GROUPS:
            resources = self.resources(group)
            if group in ("gpu", "evaluate") and resources.memory_bytes() <= shm:
                raise ValueError(
                    f"{flag_for(ClusterSettings, f'{group}_resources')}: memory limit "
                    f"{resources.memory_limit} must be above --shm-size {self.shm_size}, which "
                    "counts against it"
                )

    def resources(self, group: str) -> Resources:
        """The CPU and memory of a group of tasks (one of RESOURCE_GROUPS)."""
        if group not in RESOURCE_GROUPS:
            raise ValueError(
                f"unknown task group {group!r} (allowed: {', '.join(RESOURCE_GROUPS)})"
            )
        flag = flag_for(ClusterSettings, f"{group}_resources")
        return Resources.parse(getattr(self, f"{group}_resources"), flag)

    def task_s3_secret(self) -> S3Secret | None:
        """The Secret of :attr:`s3_secret` (None: no keys from a Secret)."""
        return S3Secret.parse(self.s3_secret, "--task-s3-secret")

    def serving(self) -> dict:
        """Where the predictor runs, as arguments of the deploy task: on the GPU pool with
        :attr:`serving_gpus` GPUs, else on the nodes of :attr:`serving_node_selector` (any node
        without GPUs when it is empty)."""
        if not self.serving_gpus:
            return {"gpus": 0, "node_selector": dict(self.serving_node_selector), "tolerations": []}
        return {"gpus": self.serving_gpus, **self.gpu.placement()}

    def predictor(self) -> dict:
        """The deploy task's arguments that the cluster decides: the serving image, where the
        predictor runs (:meth:`serving`) and the Secret of its engine key."""
        return {
            "image": self.images.image("serve"),
            **self.serving(),
            "engine_key_secret": self.engine_key_secret,
        }

    def pool(self) -> dict:
        """The GPU pool's placement, as arguments of the tasks that create pods on it."""
        return {
            "image": self.images.image("train"),
            # Trial and TrainJob pods run the loop on a GPU node, as a local GPU task would.
            "resources": self.gpu_resources,
            **self.gpu.placement(),
            "shm_size": self.shm_size,
        }
