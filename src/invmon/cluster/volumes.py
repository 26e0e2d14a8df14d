"""Volumes of the training pods the project renders itself: Katib trials and TrainJob nodes.

Those pods are not KFP tasks, so KFP mounts nothing in them. :class:`PodVolumes` gives each:

- the pipeline run's workspace PVC, **read-only**, at the path where the KFP tasks see it, so that
  a dataset path in the workspace (``/kfp-workspace/shards``) means the same file in every pod and
  no pod copies the dataset;
- ``/dev/shm`` as a memory-backed emptyDir: containers get 64 MiB of shared memory by default,
  too little for DataLoader worker processes (PyTorch's README, "Docker" section);
- ``/tmp`` as an emptyDir with an ``ephemeral-storage`` request of the same size, so that what a
  pod writes locally (a trial's model, the dataset copy of a pod that reads ``s3://``) is
  accounted for by the scheduler instead of filling the node's disk unannounced.

The workspace PVC is the one KFP creates per run, named after the run's Argo Workflow
(:func:`workspace_claim`). It has to be mountable on the GPU nodes while the CPU tasks hold it:
``ReadWriteMany`` (docs/cluster.md, "Data, workspace and resources").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from invmon.cluster.quantity import quantity

# Where KFP mounts the workspace in the tasks that ask for it (kubeflow/pipelines
# backend/src/v2/driver/driver.go:513-545, WorkspaceMountPath).
WORKSPACE_PATH = "/kfp-workspace"
# KFP names a run's workspace PVC "<workflow name>-kfp-workspace" (backend/src/v2/driver/k8s.go
# :127-129, GetWorkspacePVCName); the workflow name reaches a task as
# dsl.PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER (driver/resolve.go:438).
CLAIM_SUFFIX = "-kfp-workspace"
SHM_VOLUME, SCRATCH_VOLUME, WORKSPACE_VOLUME = "dshm", "scratch", "workspace"
SCRATCH_PATH = "/tmp"


def workspace_claim(run_name: str) -> str:
    """The PVC of the workspace of the pipeline run whose Argo Workflow is ``run_name``."""
    if not run_name or "{{" in run_name:
        raise ValueError(
            f"run name {run_name!r}: the workspace PVC is named after the run's workflow, which "
            "KFP passes to the task (dsl.PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER)"
        )
    return f"{run_name}{CLAIM_SUFFIX}"


@dataclass(frozen=True)
class PodVolumes:
    """The volumes of a training pod: workspace (when ``workspace_claim``), /dev/shm, /tmp."""

    workspace_claim: str | None = None
    workspace_path: str = WORKSPACE_PATH
    shm_size: str = "4Gi"
    scratch_size: str = "8Gi"

    def __post_init__(self):
        quantity(self.shm_size, "--shm-size")
        quantity(self.scratch_size, "--scratch-size")

    def holds(self, path: str) -> bool:
        """True when ``path`` is in the mounted workspace."""
        if not self.workspace_claim:
            return False
        return PurePosixPath(self.workspace_path) in PurePosixPath(path).parents

    def volumes(self) -> list[dict]:
        """The pod's volumes."""
        volumes = [
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": self.shm_size}},
            {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": self.scratch_size}},
        ]
        if self.workspace_claim:
            claim = {"claimName": self.workspace_claim, "readOnly": True}
            volumes.append({"name": WORKSPACE_VOLUME, "persistentVolumeClaim": claim})
        return volumes

    def mounts(self) -> list[dict]:
        """The training container's mounts of :meth:`volumes`."""
        mounts = [
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
            {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH},
        ]
        if self.workspace_claim:
            mounts.append(
                {"name": WORKSPACE_VOLUME, "mountPath": self.workspace_path, "readOnly": True}
            )
        return mounts

    def requests(self) -> dict:
        """The container's request for the local disk it writes (the /tmp emptyDir)."""
        return {"ephemeral-storage": self.scratch_size}


def scratch_for_copy(folder: str, least: str = PodVolumes.scratch_size) -> str:
    """A /tmp size that holds a copy of ``folder`` (pods that read a dataset from ``s3://`` copy
    it there) with room for a model and checkpoint: its size plus ``least``, in whole GiB."""
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    gib = -(-int(size + quantity(least, "--scratch-size")) // 2**30)
    return f"{gib}Gi"


def pod_storage(data: str, workspace: str, run_name: str) -> dict:
    """The volume settings (:class:`~invmon.cluster.placement.PodOptions` fields) of pods that
    read the dataset this task sees at ``data``: the workspace PVC of run ``run_name``, mounted
    where this task sees it (``workspace``), when the data is in it; else a /tmp that holds
    their copy of it."""
    if workspace and PurePosixPath(workspace) in PurePosixPath(data).parents:
        return {"workspace_claim": workspace_claim(run_name), "workspace_path": workspace}
    return {"scratch_size": scratch_for_copy(data)}
