"""Compile the pipeline to the IR YAML that Kubeflow Pipelines runs, for a cluster's settings.

:class:`ClusterSettings` is the one definition of the compile-time settings (images, GPU pool,
backends, caching, workspace): ``invmon compile`` and ``invmon submit`` derive their options from
it, and :func:`invmon.pipelines.inventory_pipeline.build_pipeline` wires the pipeline for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from invmon.cluster.container_images import ImageSet
from invmon.cluster.placement import Toleration, parse_toleration
from invmon.core.command import Command
from invmon.core.settings import Settings, setting

DEFAULT_OUTPUT = "inventory_pipeline.yaml"
TUNE_BACKENDS = ("local", "katib")
TRAIN_LAUNCHERS = ("local", "trainjob")
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod")


@dataclass(frozen=True)
class WorkspaceSettings(Settings):
    """The run's shared workspace (a PVC per run): where the raw and arranged bins live.

    ABID's million small files would otherwise be uploaded to and downloaded from object storage
    by every data task. ``access_modes`` and ``storage_class`` patch the PVC (empty: the KFP
    server's defaults); parallel ingest parts on several nodes need ``ReadWriteMany``.
    """

    enabled: bool = setting(
        True,
        help="pass data between steps as artifacts only (KFP servers without workspaces)",
        flag="--no-workspace",
    )
    size: str = setting(
        "250Gi",
        help="size of the run's shared workspace PVC holding the raw and arranged bins (ABID in "
        "full needs about 60Gi plus room)",
        flag="--workspace-size",
    )
    storage_class: str = setting(
        "", help="storage class of the workspace PVC", flag="--workspace-storage-class"
    )
    access_modes: tuple[str, ...] = setting(
        (),
        help="access mode of the workspace PVC (repeatable; ReadWriteMany lets ingest parts run "
        "on several nodes)",
        choices=ACCESS_MODES,
        flag="--workspace-access-mode",
    )

    def config(self):
        """The pipeline-level KFP configuration of this workspace (None: no workspace)."""
        from kfp import dsl

        if not self.enabled:
            return None
        patch = {}
        if self.storage_class:
            patch["storageClassName"] = self.storage_class
        if self.access_modes:
            patch["accessModes"] = list(self.access_modes)
        kubernetes_config = dsl.KubernetesWorkspaceConfig(pvcSpecPatch=patch) if patch else None
        return dsl.PipelineConfig(
            workspace=dsl.WorkspaceConfig(size=self.size, kubernetes=kubernetes_config)
        )


@dataclass(frozen=True)
class ClusterSettings(Settings):
    """Compile-time settings: where images come from and where GPU stages are scheduled."""

    images: ImageSet = setting(default_factory=ImageSet, help="container images")
    accelerator: str = setting("nvidia.com/gpu", help="GPU resource name", cli=False)
    gpus: int = setting(1, help="GPUs for train and tune (per node/trial)", minimum=1)
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
    run_as_user: int = setting(1000, help="user id every task runs as", cli=False)
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

    def pool(self) -> dict:
        """The GPU pool's placement, as arguments of the tasks that create pods on it."""
        return {
            "train_image": self.images.image("train"),
            "gpu_node_selector": dict(self.gpu_node_selector),
            "gpu_tolerations": [t.to_dict() for t in self.gpu_tolerations],
        }


def compile_pipeline(output: str | Path, settings: ClusterSettings | None = None) -> Path:
    """Compile the pipeline for ``settings`` (default: project images, one GPU) to ``output``."""
    from kfp import compiler

    from invmon.pipelines.inventory_pipeline import build_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings), str(output))
    return output


@dataclass(frozen=True)
class CompileSettings(Settings):
    """Settings of ``invmon compile``: where the YAML goes and the cluster it is compiled for."""

    output: str = setting(DEFAULT_OUTPUT, help="where to write the pipeline YAML")
    cluster: ClusterSettings = setting(default_factory=ClusterSettings, help="cluster")


COMPILE = Command(
    CompileSettings,
    lambda s: compile_pipeline(s.output, s.cluster),
    description="Compile the pipeline for a Kubeflow cluster (upload the YAML in the UI or submit "
    "it with kfp run create).",
    show=lambda path, _: f"wrote {path}",
)
