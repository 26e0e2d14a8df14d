"""Multi-node training as a Kubeflow Trainer v2 TrainJob.

:func:`render_trainjob` builds a ``trainer.kubeflow.org/v1alpha1`` TrainJob from the ``kubeflow``
package's typed Trainer models: the ``torch-distributed`` runtime, ``num_nodes`` nodes with
``gpus_per_node`` GPUs each, the train image running ``torchrun --no-python invmon train`` (the
runtime sets torchrun's ``PET_*`` variables: node count, processes per node, rank, master), the
dataset read in place from the pipeline run's workspace PVC (or from ``s3://``), the model written
to an ``s3://`` location, and a checkpoint beside it (not under the model's prefix, which
becomes the model artifact), so a restarted node resumes. GPU pool
placement, the non-root security context and the volumes
(:class:`~invmon.cluster.volumes.PodVolumes`) go into the TrainJob's ``runtimePatches``.

:func:`run_trainjob` creates it through the ``kubernetes`` client, waits for the ``Complete``
condition and raises with Trainer's reason and message when it fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from invmon.cluster import objects as cluster
from invmon.cluster import typed
from invmon.cluster.container_images import DEFAULT_IMAGES
from invmon.cluster.katib import check_name
from invmon.cluster.placement import PodPlacement
from invmon.cluster.scheduling import POD_GROUP_LABEL, watch_pods
from invmon.cluster.volumes import PodVolumes
from invmon.core.settings import to_flags
from invmon.training.config import TrainConfig

log = logging.getLogger(__name__)

TRAINJOB = cluster.Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
NODE_JOB = "node"  # the replicated job (and container) of torch-distributed that runs training
PATCH_MANAGER = "inventory-monitoring.io/train"


@dataclass(frozen=True)
class TrainJobSettings:
    """A TrainJob's shape and locations."""

    name: str
    data: str
    out: str
    image: str = field(default_factory=lambda: DEFAULT_IMAGES.image("train"))
    namespace: str = "kubeflow-user"
    runtime: str = "torch-distributed"
    num_nodes: int = 1
    endpoint_url: str | None = None
    checkpoint: str | None = None
    placement: PodPlacement = field(default_factory=PodPlacement)
    volumes: PodVolumes = field(default_factory=PodVolumes)

    def __post_init__(self):
        check_name(self.name)
        if not (self.data.startswith("s3://") or self.volumes.holds(self.data)):
            raise ValueError(
                f"TrainJob data {self.data!r}: the job's nodes see no disk of this task but the "
                "workspace PVC (--workspace-claim); pass a path in it or an s3:// location"
            )
        if not self.out.startswith("s3://"):
            raise ValueError(
                f"TrainJob out {self.out!r}: the job's nodes share no disk with this task; "
                "pass an s3:// location"
            )
        if self.num_nodes < 1:
            raise ValueError(f"--num-nodes must be >= 1, got {self.num_nodes}")

    @property
    def processes_per_node(self) -> int:
        """One training process per GPU (one on CPU-only nodes)."""
        return max(1, self.placement.gpus)


def train_command(config: TrainConfig, settings: TrainJobSettings) -> list[str]:
    """torchrun over ``invmon train``; torchrun reads the node layout from the runtime's env."""
    from invmon.training.checkpoint import beside

    checkpoint = settings.checkpoint or beside(settings.out)
    command = [
        "torchrun",
        "--no-python",
        "invmon",
        "train",
        "--data",
        settings.data,
        "--out",
        settings.out,
        "--checkpoint",
        checkpoint,
    ]
    if settings.endpoint_url:
        command += ["--endpoint-url", settings.endpoint_url]
    return command + to_flags(config)


def render_trainjob(config: TrainConfig, settings: TrainJobSettings) -> dict:
    """The TrainJob, built from the typed Trainer models; returns its JSON form."""
    from kubeflow_trainer_api import models

    if config.batch_size % (settings.num_nodes * settings.processes_per_node):
        raise ValueError(
            f"--batch-size {config.batch_size} is not divisible by the "
            f"{settings.num_nodes * settings.processes_per_node} training processes "
            f"({settings.num_nodes} nodes x {settings.processes_per_node})"
        )
    placement = settings.placement
    trainer = models.TrainerV1alpha1Trainer(
        image=settings.image,
        command=train_command(config, settings),
        numNodes=settings.num_nodes,
        numProcPerNode=settings.processes_per_node,
        env=[models.IoK8sApiCoreV1EnvVar.from_dict(e) for e in placement.env()] or None,
    )
    resources = placement.resources()
    resources["requests"] = {**resources.get("requests", {}), **settings.volumes.requests()}
    trainer.resources_per_node = models.IoK8sApiCoreV1ResourceRequirements.from_dict(resources)
    job = models.TrainerV1alpha1TrainJob(
        apiVersion=TRAINJOB.api_version,
        kind=TRAINJOB.kind,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=settings.name, namespace=settings.namespace, labels=dict(cluster.PART_OF)
        ),
        spec=models.TrainerV1alpha1TrainJobSpec(
            runtimeRef=models.TrainerV1alpha1RuntimeRef(
                name=settings.runtime, kind="ClusterTrainingRuntime"
            ),
            trainer=trainer,
            runtimePatches=[_pod_patch(placement, settings.volumes, settings.name)],
        ),
    )
    manifest = job.to_dict()
    check_trainjob(manifest)
    return manifest


def _pod_patch(placement: PodPlacement, volumes: PodVolumes, name: str):
    from kubeflow_trainer_api import models

    node = {
        "name": NODE_JOB,
        "securityContext": {"allowPrivilegeEscalation": False},
        "volumeMounts": volumes.mounts(),
    }
    pod = {
        "securityContext": placement.security_context(),
        "containers": [node],
        "volumes": volumes.volumes(),
        **placement.gpu_pool(),
    }
    if placement.service_account:
        pod["serviceAccountName"] = placement.service_account
    patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": NODE_JOB,
                            "template": {
                                "spec": {
                                    "template": {
                                        # Istio's sidecar would keep finished nodes running.
                                        "metadata": {
                                            "annotations": {"sidecar.istio.io/inject": "false"},
                                            # Found by the unschedulable watch of the wait.
                                            "labels": {POD_GROUP_LABEL: name},
                                        },
                                        "spec": pod,
                                    }
                                }
                            },
                        }
                    ]
                }
            }
        },
    }
    return typed.check(patch, models.TrainerV1alpha1RuntimePatch, "$.runtimePatches[0]")


def check_trainjob(manifest: dict):
    """Check a TrainJob against the typed Trainer models (unknown fields are errors)."""
    from kubeflow_trainer_api import models

    return typed.check(manifest, models.TrainerV1alpha1TrainJob)


def run_trainjob(
    manifest: dict,
    api=None,
    timeout: float = 7 * 24 * 3600,
    poll: float = 30.0,
    sleep=None,
    unschedulable_timeout: float | None = None,
    clock=None,
) -> dict:
    """Create the TrainJob (or follow an existing one of the same name) and wait until it
    completes; raise RuntimeError with Trainer's reason if it fails, and
    :class:`~invmon.cluster.scheduling.PodsUnschedulable` when a node pod stays unschedulable for
    ``unschedulable_timeout`` seconds."""
    api = api or cluster.custom_objects_api()
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    cluster.create_or_reuse(api, TRAINJOB, manifest)
    what = f"TrainJob {namespace}/{name}"
    clocked = {} if clock is None else {"clock": clock}
    waiting = {"poll": poll, "timeout": timeout, **clocked}
    watch = watch_pods(api, namespace, name, what, unschedulable_timeout, **clocked)
    if watch is not None:
        waiting["on_poll"] = watch
    if sleep is not None:
        waiting["sleep"] = sleep
    return cluster.wait_for(
        lambda: cluster.get(api, TRAINJOB, namespace, name), "Complete", "Failed", what, **waiting
    )


def train_on_cluster(
    data_uri: str,
    out_uri: str,
    local_out: str | None,
    config: TrainConfig,
    image: str = "",
    namespace: str = "",
    num_nodes: int = 1,
    placement: PodPlacement | None = None,
    endpoint_url: str | None = None,
    api=None,
    timeout: float = 7 * 24 * 3600,
    poll: float = 30.0,
    volumes: PodVolumes | None = None,
    unschedulable_timeout: float | None = None,
) -> dict:
    """Train as a TrainJob that reads ``data_uri`` and writes the model to ``out_uri``, then copy
    the model folder into ``local_out`` when given (the train component's output); return the
    finished TrainJob.

    ``data_uri`` is a path in the workspace PVC that ``volumes`` mounts (read in place by every
    node) or an S3 location. Artifact URIs on KFP's object store (``minio://``) are read as S3 at
    its endpoint. Empty ``image`` and ``namespace`` mean the project's train image and this pod's
    namespace.
    """
    from invmon.data.s3 import S3Uri
    from invmon.data.transfer import download_prefix

    volumes = volumes or PodVolumes()
    out, endpoint = cluster.s3_location(out_uri, endpoint_url)
    data = data_uri if volumes.holds(data_uri) else cluster.s3_location(data_uri, endpoint_url)[0]
    settings = TrainJobSettings(
        name=cluster.object_name("invmon-train", out),
        data=data,
        out=out,
        image=image or DEFAULT_IMAGES.image("train"),
        namespace=namespace or cluster.current_namespace("kubeflow-user"),
        num_nodes=num_nodes,
        endpoint_url=endpoint,
        placement=placement or PodPlacement(),
        volumes=volumes,
    )
    finished = run_trainjob(
        render_trainjob(config, settings),
        api,
        timeout=timeout,
        poll=poll,
        unschedulable_timeout=unschedulable_timeout,
    )
    if local_out is not None:
        download_prefix(S3Uri.parse(out), Path(local_out), endpoint)
    return finished
