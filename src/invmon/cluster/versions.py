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
    # The controller's image repository ends so; the Deployment may run other containers (KServe
    # before 0.15 ran kube-rbac-proxy beside its manager), whose tags are not the version.
    image: str = ""

    def version(self, images: list[str]) -> tuple[int, ...] | None:
        """The version of the controller among a Deployment's container ``images``."""
        ours = [i for i in images if i.split("@")[0].rsplit(":", 1)[0].endswith(self.image)]
        return next((v for v in map(parse_version, ours) if v), None)


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
        image="kfp-api-server",
    ),
    "argo": Component(
        "Argo Workflows",
        "workflow-controller",
        ("kubeflow",),
        (3, 4),
        "task outputs are reported as WorkflowTaskResults (permissions.py)",
        "kubeflow/pipelines manifests/kustomize/third-party/argo/base/workflow-controller-"
        "deployment-patch.yaml (quay.io/argoproj/workflow-controller:vX.Y.Z)",
        image="workflow-controller",
    ),
    "katib": Component(
        "Katib",
        "katib-controller",
        ("kubeflow",),
        (0, 19),
        "the search's Experiment and trial template (docs/cluster.md)",
        "kubeflow/katib manifests/v1beta1/installs/katib-standalone/kustomization.yaml "
        "(ghcr.io/kubeflow/katib/katib-controller:vX.Y.Z)",
        image="katib-controller",
    ),
    "trainer": Component(
        "Kubeflow Trainer",
        "kubeflow-trainer-controller-manager",
        ("kubeflow-system", "kubeflow"),
        (2, 2),
        "the TrainJob's runtimePatches (volumes, placement) need Trainer 2.2",
        "kubeflow/trainer manifests/base/manager/manager.yaml and manifests/overlays/manager "
        "(ghcr.io/kubeflow/trainer/trainer-controller-manager:vX.Y.Z, namespace kubeflow-system)",
        image="trainer-controller-manager",
    ),
    "kserve": Component(
        "KServe",
        "kserve-controller-manager",
        ("kserve", "kubeflow"),
        (0, 16),
        "the Standard deployment mode needs KServe 0.16",
        "kserve/kserve config/manager/manager.yaml and charts/kserve-resources "
        "(kserve/kserve-controller:vX.Y.Z, namespace kserve; kubeflow on the Kubeflow platform)",
        image="kserve-controller",
    ),
}


def parse_version(image: str) -> tuple[int, ...] | None:
    """The version in an image's tag (``...:v0.16.1`` -> (0, 16, 1)); None when it has none."""
    tag = image.rsplit("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", tag)
    return tuple(int(x) for x in match.groups() if x is not None) if match else None
