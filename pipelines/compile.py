"""Compile the pipeline to the IR YAML that Kubeflow Pipelines runs, for a cluster's settings
(:class:`~invmon.pipelines.cluster_settings.ClusterSettings`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from invmon.core.command import Command
from invmon.core.settings import Settings, setting
from invmon.pipelines.cluster_settings import ClusterSettings

DEFAULT_OUTPUT = "inventory_pipeline.yaml"


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


def storage_class_note(cluster: ClusterSettings) -> str | None:
    """What to say when the workspace PVC gets the cluster's default storage class: that class
    is ReadWriteOnce on EKS, GKE and AKS, where a ReadWriteMany claim stays Pending for good."""
    workspace = cluster.workspace
    if not workspace.enabled or workspace.storage_class:
        return None
    return (
        "note: no --workspace-storage-class: the run's workspace PVC asks the cluster's default "
        f"class for {', '.join(workspace.access_modes)}, which the defaults of EKS, GKE and AKS "
        "cannot give (the PVC stays Pending). Name a class that can: `invmon doctor` lists the "
        "cluster's classes, and `invmon submit` refuses to start without one."
    )


def _show(path: Path, settings: CompileSettings) -> str:
    note = storage_class_note(settings.cluster)
    return f"wrote {path}" + (f"\n{note}" if note else "")


COMPILE = Command(
    CompileSettings,
    lambda s: compile_pipeline(s.output, s.cluster),
    description="Compile the pipeline for a Kubeflow cluster (upload the YAML in the UI or submit "
    "it with kfp run create).",
    show=_show,
)
