"""The Kubeflow pipeline that wires the stage components together, and the commands that compile
it, submit it to a cluster and run it locally.

Importing this package imports nothing heavy; ``build_pipeline`` and the other names below load the
pipeline module (and kfp) on first use, so that ``invmon compile --help`` starts fast.
"""

import importlib

_EXPORTS = (
    "PIPELINE_NAME",
    "ClusterSettings",
    "Toleration",
    "WorkspaceSettings",
    "build_pipeline",
    "inventory_monitoring",
)
__all__ = list(_EXPORTS)


_HOMES = {
    "ClusterSettings": "invmon.pipelines.cluster_settings",
    "WorkspaceSettings": "invmon.cluster.workspace",
    "Toleration": "invmon.cluster.placement",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        home = _HOMES.get(name, "invmon.pipelines.inventory_pipeline")
        return getattr(importlib.import_module(home), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
