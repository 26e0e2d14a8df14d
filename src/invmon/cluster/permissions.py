"""What the pipeline's pods may ask of the Kubernetes API, and why: the RBAC rules as data.

The Roles under ``manifests/`` grant exactly two things:

- :data:`POD_NEEDS`: what every KFP v2 task pod calls with the run's ServiceAccount, whatever the
  task's code does (KFP's driver and launcher, Argo's wait container). Each rule names the
  upstream code that makes the call.
- the verbs the project's own code calls (Katib Experiments, Trainer TrainJobs, KServe
  InferenceServices): :data:`CODE_CALLS`, per backend, for the preflight
  (:mod:`invmon.cluster.preflight`). ``tests/test_manifests.py`` collects the same verbs from
  the requests the code sends to a fake API server and holds the two equal, so they cannot
  drift from the code.

:data:`NOT_GRANTED` records what a KFP task pod is sometimes thought to need and does not, and
:data:`KUBEFLOW_EDIT` what a Profile's ``default-editor`` already holds on the Kubeflow platform
(multi-user), which is why the multi-user Role adds only the code's own verbs. Sources are
``repository path:lines`` at the releases named in :data:`RELEASES`.
"""

from __future__ import annotations

from dataclasses import dataclass

# The upstream releases the sources below were read at.
RELEASES = {
    "kubeflow/pipelines": "2.17.0 (backend and manifests; Argo Workflows v4.0.5)",
    "argoproj/argo-workflows": "v3.4.0 .. v4.0.8",
    "kubeflow/manifests": "009c8808 (2026-04-05)",
    "kubeflow/trainer": "8c0f5059 (2026-08-21)",
}
# The object store Secret KFP's launcher reads by default, and the project's own S3 Secret.
KFP_ARTIFACT_SECRET = "mlpipeline-minio-artifact"
PROJECT_S3_SECRET = "invmon-s3"

Grant = tuple[str, str, str, str | None]  # (API group, resource, verb, object name or None)


@dataclass(frozen=True)
class Rule:
    """One RBAC rule: API group, resource, verbs, optionally only some objects by name, and why."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    why: str
    source: str
    names: tuple[str, ...] = ()

    def grants(self) -> set[Grant]:
        """The rule as single (group, resource, verb, name) permissions."""
        return {
            (self.group, self.resource, verb, name)
            for verb in self.verbs
            for name in (self.names or (None,))
        }


POD_NEEDS: tuple[Rule, ...] = (
    Rule(
        "argoproj.io",
        "workflowtaskresults",
        ("create", "patch"),
        why="Argo's wait container reports each task's outputs as a WorkflowTaskResult (Argo >= "
        "3.4); since Argo 3.6 there is no fallback, so a refusal fails the task",
        source="argoproj/argo-workflows workflow/executor/executor.go:971-1065, "
        "docs/workflow-rbac.md ('For >= v3.4'), docs/upgrading.md v3.6 (#13100); "
        "kubeflow/pipelines manifests/kustomize/base/pipeline/pipeline-runner-role.yaml "
        "(ca52e050, #12072)",
    ),
    Rule(
        "",
        "configmaps",
        ("get",),
        names=("kfp-launcher",),
        why="KFP's root driver reads the run namespace's kfp-launcher ConfigMap (pipeline root, "
        "object store providers); a missing one is fine, a refused read fails the run",
        source="kubeflow/pipelines backend/src/v2/config/env.go:72-81, "
        "backend/src/v2/driver/root_dag.go:103",
    ),
    Rule(
        "",
        "secrets",
        ("get",),
        names=(KFP_ARTIFACT_SECRET,),
        why="KFP's launcher signs artifact uploads and downloads on its object store (minio:// "
        "pipeline roots) with this Secret's accesskey/secretkey",
        source="kubeflow/pipelines backend/src/v2/objectstore/object_store.go:391, "
        "backend/src/v2/config/env.go:177-193",
    ),
    Rule(
        "",
        "secrets",
        ("get",),
        names=(PROJECT_S3_SECRET,),
        why="with an s3:// pipeline root (components/external-s3), kfp-launcher's providers "
        "secretRef names the project's Secret, which the launcher reads the same way",
        source="kubeflow/pipelines backend/src/v2/config/s3.go:25-74 (S3SecretRef), "
        "backend/src/v2/objectstore/object_store.go:391; "
        "manifests/components/external-s3/kfp-launcher.yaml",
    ),
)

NOT_GRANTED: tuple[Rule, ...] = (
    Rule(
        "",
        "persistentvolumeclaims",
        ("create", "delete"),
        why="the run's workspace PVC comes from the Workflow's volumeClaimTemplates: Argo's "
        "workflow controller creates and deletes it with its own ServiceAccount",
        source="kubeflow/pipelines backend/src/v2/compiler/argocompiler/argo.go:124-136,186; "
        "argoproj/argo-workflows workflow/controller/operator.go:1961-2030",
    ),
    Rule(
        "",
        "pods",
        ("get",),
        why="the launcher reads its own pod only to find a retry index for tasks without a "
        "retry policy, and a refusal is logged as a warning",
        source="kubeflow/pipelines backend/src/v2/component/launcher_v2.go:572-621",
    ),
    Rule(
        "",
        "pods",
        ("patch",),
        why="Argo's emissary executor (>= 3.4) reports results through workflowtaskresults, not "
        "pod annotations",
        source="argoproj/argo-workflows docs/workflow-rbac.md (v3.4.0)",
    ),
)

_KUBEFLOW_ROLES = "kubeflow/manifests common/kubeflow-roles/base/cluster-roles.yaml"
KUBEFLOW_EDIT: tuple[Rule, ...] = (
    Rule(
        "argoproj.io",
        "workflowtaskresults",
        ("*",),
        why="kubeflow-pipelines-edit, aggregated into kubeflow-edit",
        source="kubeflow/pipelines "
        "manifests/kustomize/base/installs/multi-user/view-edit-cluster-roles.yaml",
    ),
    Rule(
        "",
        "configmaps",
        ("get", "list", "watch"),
        why="kubeflow-kubernetes-view, aggregated into kubeflow-edit",
        source=_KUBEFLOW_ROLES,
    ),
    Rule(
        "",
        "secrets",
        ("get", "list", "watch"),
        why="kubeflow-kubernetes-edit, aggregated into kubeflow-edit",
        source=_KUBEFLOW_ROLES,
    ),
)


def grants(rules) -> set[Grant]:
    """Every single permission of ``rules`` (:class:`Rule`s, or a Role's ``rules`` as dicts)."""
    found: set[Grant] = set()
    for rule in rules:
        if isinstance(rule, Rule):
            found |= rule.grants()
            continue
        for group in rule.get("apiGroups", ()):
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or (None,):
                        found.add((group, resource, verb, name))
    return found


def covered(grant: Grant, held: set[Grant]) -> bool:
    """True when ``held`` allows ``grant`` (by name, for every name, or by the ``*`` verb)."""
    group, resource, verb, name = grant
    return any((group, resource, v, n) in held for v in (verb, "*") for n in {name, None})


# What the project's code calls, by which part of the pipeline calls it (see the module docstring).
CODE_CALLS: dict[str, frozenset[Grant]] = {
    "katib": frozenset(
        {
            ("kubeflow.org", "experiments", "create", None),
            ("kubeflow.org", "experiments", "get", None),
            ("kubeflow.org", "trials", "list", None),
            # The wait notices trial pods that never start (cluster/scheduling.py).
            ("", "pods", "list", None),
        }
    ),
    "trainjob": frozenset(
        {
            ("trainer.kubeflow.org", "trainjobs", "create", None),
            ("trainer.kubeflow.org", "trainjobs", "get", None),
            ("", "pods", "list", None),
        }
    ),
    "kserve": frozenset(
        {
            ("serving.kserve.io", "inferenceservices", "create", None),
            ("serving.kserve.io", "inferenceservices", "get", None),
            ("serving.kserve.io", "inferenceservices", "patch", None),
            # A minio:// model: KFP's store keys copied into KServe's Secret and account
            # (cluster/store_credentials.py).
            ("", "secrets", "get", "mlpipeline-minio-artifact"),
            ("", "secrets", "create", None),
            ("", "secrets", "patch", "invmon-kfp-store"),
            ("", "serviceaccounts", "create", None),
            ("", "serviceaccounts", "patch", "invmon-kfp-store"),
        }
    ),
}


def code_calls(katib: bool = True, trainjob: bool = True, kserve: bool = True) -> set[Grant]:
    """The grants the project's code calls for, for the backends a compile uses."""
    used = {"katib": katib, "trainjob": trainjob, "kserve": kserve}
    return {grant for part, calls in CODE_CALLS.items() if used[part] for grant in calls}
