"""The controllers a run depends on, where a cluster shows their versions, and the floors.

A real cluster exposes a controller's version as the image tag of its Deployment, which the
upstream manifests install under a fixed name and namespace; each :class:`Component` names the
manifest it was read from. :mod:`invmon.cluster.preflight` compares them with the floors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    """A controller whose version the run depends on, where its Deployment lives, and its floor."""

    name: str
    deployment: str
    namespaces: tuple[str, ...]
    floor: tuple[int, ...]
    why: str
    source: str


# Deployments and namespaces as the upstream manifests install them (read December 2026).
COMPONENTS = {
    "kfp": Component(
        "Kubeflow Pipelines",
        "ml-pipeline",
        ("kubeflow",),
        (2, 16),
        "the compiled platform spec sets a securityContext (KFP 2.15 rejects the upload); the "
        "workspace needs 2.15",
        "kubeflow/pipelines manifests/kustomize/base/pipeline/ml-pipeline-apiserver-deployment"
        ".yaml (image ghcr.io/kubeflow/kfp-api-server:TAG)",
    ),
    "argo": Component(
        "Argo Workflows",
        "workflow-controller",
        ("kubeflow",),
        (3, 4),
        "task outputs are reported as WorkflowTaskResults (permissions.py)",
        "kubeflow/pipelines manifests/kustomize/third-party/argo/base/workflow-controller-"
        "deployment-patch.yaml (quay.io/argoproj/workflow-controller:vX.Y.Z)",
    ),
    "katib": Component(
        "Katib",
        "katib-controller",
        ("kubeflow",),
        (0, 19),
        "the search's Experiment and trial template (docs/cluster.md)",
        "kubeflow/katib manifests/v1beta1/installs/katib-standalone/kustomization.yaml "
        "(ghcr.io/kubeflow/katib/katib-controller:vX.Y.Z)",
    ),
    "trainer": Component(
        "Kubeflow Trainer",
        "kubeflow-trainer-controller-manager",
        ("kubeflow-system", "kubeflow"),
        (2, 2),
        "the TrainJob's runtimePatches (volumes, placement) need Trainer 2.2",
        "kubeflow/trainer manifests/base/manager/manager.yaml and manifests/overlays/manager "
        "(ghcr.io/kubeflow/trainer/trainer-controller-manager:vX.Y.Z, namespace kubeflow-system)",
    ),
    "kserve": Component(
        "KServe",
        "kserve-controller-manager",
        ("kserve", "kubeflow"),
        (0, 16),
        "the Standard deployment mode needs KServe 0.16",
        "kserve/kserve config/manager/manager.yaml and charts/kserve-resources "
        "(kserve/kserve-controller:vX.Y.Z, namespace kserve; kubeflow on the Kubeflow platform)",
    ),
}


def parse_version(image: str) -> tuple[int, ...] | None:
    """The version in an image's tag (``...:v0.16.1`` -> (0, 16, 1)); None when it has none."""
    tag = image.rsplit("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", tag)
    return tuple(int(x) for x in match.groups() if x is not None) if match else None
