"""Compile the pipeline to the IR YAML that Kubeflow Pipelines runs."""

from __future__ import annotations

from pathlib import Path

from invmon.cluster.container_images import ImageSet
from invmon.cluster.placement import parse_toleration

DEFAULT_OUTPUT = "inventory_pipeline.yaml"


def settings_from(
    registry: str,
    tag: str,
    node_selector: list[tuple[str, str]] | None = None,
    tolerations: list[str] | None = None,
    gpus: int = 1,
    caching: bool = True,
    workspace_size: str | None = None,
    workspace_storage_class: str = "",
    workspace_access_modes: list[str] | None = None,
    tune_backend: str = "local",
    train_launcher: str = "local",
):
    """Build ClusterSettings from command-line values; None keeps each default.

    ``workspace_size=""`` compiles without a workspace (for KFP servers older than 2.14): data
    then moves between steps as artifacts.
    """
    from invmon.pipelines import ClusterSettings, WorkspaceSettings

    defaults = ClusterSettings()
    workspace = None
    if workspace_size != "":
        workspace = WorkspaceSettings(
            size=workspace_size or WorkspaceSettings().size,
            storage_class=workspace_storage_class,
            access_modes=tuple(workspace_access_modes or ()),
        )
    return ClusterSettings(
        images=ImageSet(registry=registry, tag=tag),
        gpus=gpus,
        caching=caching,
        workspace=workspace,
        gpu_node_selector=dict(node_selector) if node_selector else defaults.gpu_node_selector,
        gpu_tolerations=tuple(parse_toleration(t) for t in tolerations)
        if tolerations
        else defaults.gpu_tolerations,
        tune_backend=tune_backend,
        train_launcher=train_launcher,
    )


def compile_pipeline(output: str | Path, settings=None) -> Path:
    """Compile the pipeline for ``settings`` (default: project images, one GPU) to ``output``."""
    from kfp import compiler

    from invmon.pipelines import build_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings), str(output))
    return output
