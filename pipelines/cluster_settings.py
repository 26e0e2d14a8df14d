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
from invmon.cluster.placement import (
    KFP_OBJECT_STORE_SECRET,
    RUN_AS_USER,
    PodOptions,
    Resources,
    S3Secret,
    Toleration,
    parse_toleration,
)
from invmon.cluster.quantity import quantity
from invmon.core.settings import Settings, flag_for, inherit, setting
from invmon.stages.train import LAUNCHERS as TRAIN_LAUNCHERS
from invmon.training.search import BACKENDS as TUNE_BACKENDS

ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod")
# The task groups that share a CPU/memory setting (see ClusterSettings.resources).
RESOURCE_GROUPS = ("data", "gpu", "evaluate", "control")


@dataclass(frozen=True)
class WorkspaceSettings(Settings):
    """The run's shared workspace (a PVC per run): raw bins, arranged layout and shards.

    ABID's million small files and 80 GB of shards would otherwise be uploaded to and downloaded
    from object storage by every task that reads them. The PVC spec always carries its access
    modes: KFP refuses to create a run whose workspace has none unless the admin configured a
    default (kubeflow/pipelines backend/src/v2/compiler/argocompiler/argo.go:673-735,
    GetWorkspacePVC). ``ReadWriteMany`` lets the CPU tasks, the GPU tasks, the Katib trials and
    the TrainJob nodes mount it on their different nodes at once. ``storage_class`` is left out
    when empty (the cluster's default class; KFP refuses an empty ``storageClassName``).
    """

    enabled: bool = setting(
        True,
        help="pass data between steps as artifacts only (KFP servers without workspaces)",
        flag="--no-workspace",
    )
    size: str = setting(
        "250Gi",
        help="size of the run's shared workspace PVC holding the raw bins and the shards (ABID "
        "in full at 224 px needs about 105Gi plus room)",
        flag="--workspace-size",
    )
    storage_class: str = setting(
        "", help="storage class of the workspace PVC", flag="--workspace-storage-class"
    )
    access_modes: tuple[str, ...] = setting(
        ("ReadWriteMany",),
        help="access mode of the workspace PVC (repeatable; ReadWriteOnce puts every task that "
        "mounts it on one node)",
        choices=ACCESS_MODES,
        flag="--workspace-access-mode",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.enabled and not self.access_modes:
            raise ValueError("--workspace-access-mode: at least one access mode is required")

    def pvc_spec_patch(self) -> dict:
        """What the run's PVC spec is patched with: access modes, storage class when given."""
        patch = {"accessModes": list(self.access_modes)}
        if self.storage_class:
            patch["storageClassName"] = self.storage_class
        return patch

    def config(self):
        """The pipeline-level KFP configuration of this workspace (None: no workspace)."""
        from kfp import dsl

        if not self.enabled:
            return None
        kubernetes_config = dsl.KubernetesWorkspaceConfig(pvcSpecPatch=self.pvc_spec_patch())
        return dsl.PipelineConfig(
            workspace=dsl.WorkspaceConfig(size=self.size, kubernetes=kubernetes_config)
        )


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
    accelerator: str = setting("nvidia.com/gpu", help="GPU resource name", cli=False)
    # One training process uses one GPU: a task or a Katib trial that runs the loop itself gets
    # one, and only TrainJob nodes, which run torchrun with a process per GPU, get more.
    gpus: int = setting(
        1,
        help="GPUs of each TrainJob node, one training process each (more than 1 needs "
        "--train-launcher trainjob; tune trials and tasks that train themselves use one)",
        minimum=1,
    )
    serving_gpus: int = setting(
        0,
        help="GPUs of each predictor replica; above 0 the predictor runs on the GPU pool (its "
        "node selector and tolerations)",
        minimum=0,
    )
    s3_secret: str = setting(
        KFP_OBJECT_STORE_SECRET.name,
        help="Secret whose S3 keys the tasks that read or write S3 themselves (ingest, tune, "
        "train) get as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: NAME (KFP's "
        "mlpipeline-minio-artifact: its accesskey/secretkey; any other: the AWS_* keys), "
        "NAME:ACCESS_KEY_KEY:SECRET_KEY_KEY, or none (the AWS default chain, e.g. IRSA); with "
        "the external-s3 component, invmon-s3",
        flag="--task-s3-secret",
        metavar="SECRET",
    )
    gpu_node_selector: dict[str, str] = setting(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        help="node label of the GPU pool (repeatable)",
        metavar="KEY=VALUE",
    )
    gpu_tolerations: tuple[Toleration, ...] = setting(
        (Toleration(),),
        help="taint of the GPU pool to tolerate (repeatable; default nvidia.com/gpu:NoSchedule)",
        flag="--gpu-toleration",
        metavar="KEY[=VALUE]:EFFECT",
        parse=parse_toleration,
        show_default=False,
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
    # Where the search and the final training run. local: in the task itself, on a GPU node.
    # katib / trainjob: the task creates a Katib Experiment / a Kubeflow Trainer TrainJob on the
    # GPU pool and waits for it, without holding a GPU itself.
    tune_backend: str = setting(
        "local",
        help="run the search in the tune task (local) or as a Katib Experiment (katib)",
        choices=TUNE_BACKENDS,
    )
    train_launcher: str = setting(
        "local",
        help="train in the train task (local) or as a multi-node Kubeflow TrainJob (trainjob)",
        choices=TRAIN_LAUNCHERS,
    )

    def __post_init__(self):
        super().__post_init__()
        S3Secret.parse(self.s3_secret, "--task-s3-secret")
        if self.gpus > 1 and self.train_launcher != "trainjob":
            raise ValueError(
                f"--gpus {self.gpus}: a train task trains on one GPU; give more to TrainJob "
                "nodes (--train-launcher trainjob, a training process per GPU) or leave --gpus 1"
            )
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
        :attr:`serving_gpus` GPUs, else on any node without GPUs."""
        if not self.serving_gpus:
            return {"gpus": 0, "node_selector": {}, "tolerations": []}
        return {
            "gpus": self.serving_gpus,
            "node_selector": dict(self.gpu_node_selector),
            "tolerations": [t.to_dict() for t in self.gpu_tolerations],
        }

    def pool(self) -> dict:
        """The GPU pool's placement, as arguments of the tasks that create pods on it."""
        return {
            "image": self.images.image("train"),
            # Trial and TrainJob pods run the loop on a GPU node, as a local GPU task would.
            "resources": self.gpu_resources,
            "node_selector": dict(self.gpu_node_selector),
            "tolerations": [t.to_dict() for t in self.gpu_tolerations],
            "shm_size": self.shm_size,
        }
