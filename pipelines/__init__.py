"""The Kubeflow pipeline that wires the stage components together."""

from invmon.pipelines.inventory_pipeline import (
    PIPELINE_NAME,
    ClusterSettings,
    Toleration,
    WorkspaceSettings,
    build_pipeline,
    inventory_monitoring,
)

__all__ = [
    "PIPELINE_NAME",
    "ClusterSettings",
    "Toleration",
    "WorkspaceSettings",
    "build_pipeline",
    "inventory_monitoring",
]
