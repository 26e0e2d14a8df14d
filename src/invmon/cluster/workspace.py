"""The run's shared workspace: the PVC KFP creates per run, which every task and pod mounts.

:class:`WorkspaceSettings` is the one definition of its compile-time settings: ``invmon compile``
renders the pipeline's workspace with it, and ``invmon doctor`` checks the cluster (its storage
classes, access modes) against the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

from invmon.core.settings import Settings, setting

ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod")


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
