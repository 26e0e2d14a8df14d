"""Preflight: check a live cluster in seconds before a run that would otherwise fail hours later.

:func:`run_checks` reads, with the ``kubernetes`` client, what a run of the compiled pipeline
needs from the cluster (:class:`Needs`) and returns a :class:`Report`: one :class:`Check` per
question, each failure with its fix. A check whose answer the caller may not read (HTTP 403) is
``skip``, with the command that answers it by hand; only ``fail`` fails the report.

Where each answer comes from on a real cluster:

- versions: the image tag of each controller's Deployment, as the upstream manifests install
  them (:data:`COMPONENTS`, each with its source);
- permissions: a SubjectAccessReview per (resource, verb) for the run's ServiceAccount, over
  :mod:`invmon.cluster.permissions` (pod needs and the code's calls);
- the workspace's StorageClass and its provisioner (whether it offers ReadWriteMany cannot be
  read from the API; only provisioners known to be ReadWriteOnce-only are refused);
- the Secrets the compile names, with their keys; the GPU nodes the pool's selector and
  tolerations reach, with allocatable ``nvidia.com/gpu``; the run namespace's labels (KServe's
  storage initializer, Katib's metrics collector).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from invmon.cluster import permissions
from invmon.cluster.gpu_pool import GpuPool
from invmon.cluster.versions import COMPONENTS
from invmon.cluster.workspace import WorkspaceSettings

PASS, FAIL, SKIP = "pass", "fail", "skip"
GPU_RESOURCE = "nvidia.com/gpu"


# CSI drivers whose volumes attach to one node at a time (ReadWriteOnce only). Other
# provisioners do not say in the API which access modes they offer.
RWO_ONLY_PROVISIONERS = (
    "ebs.csi.aws.com",
    "kubernetes.io/aws-ebs",
    "pd.csi.storage.gke.io",
    "kubernetes.io/gce-pd",
    "disk.csi.azure.com",
    "kubernetes.io/azure-disk",
)
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
# KServe's pod mutator (which injects the storage initializer) skips namespaces with this label:
# kserve/kserve config/webhook/manifests.yaml, inferenceservice.kserve-webhook-server.pod-mutator
# namespaceSelector "control-plane DoesNotExist".
KSERVE_SKIP_LABEL = "control-plane"
# Katib injects its metrics collector only in namespaces labelled so (docs/cluster.md).
KATIB_INJECTION_LABEL = ("katib.kubeflow.org/metrics-collector-injection", "enabled")


@dataclass(frozen=True)
class Needs:
    """What one run of the compiled pipeline needs from the cluster: its place, its GPU work and
    workspace as compiled, and the Secrets its tasks read (name -> keys)."""

    namespace: str
    service_account: str
    gpu: GpuPool = field(default_factory=GpuPool)
    workspace: WorkspaceSettings = field(default_factory=WorkspaceSettings)
    secrets: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def katib(self) -> bool:
        """Whether the search runs as a Katib Experiment."""
        return self.gpu.tune_backend == "katib"

    @property
    def trainjob(self) -> bool:
        """Whether training runs as a Trainer TrainJob."""
        return self.gpu.train_launcher == "trainjob"

    def components(self) -> list[str]:
        """The controllers this run uses (Katib and the Trainer only when compiled in)."""
        return ["kfp", "argo"] + ["katib"] * self.katib + ["trainer"] * self.trainjob + ["kserve"]

    def grants(self) -> list[permissions.Grant]:
        """Every (group, resource, verb, name) the run's ServiceAccount needs, sorted."""
        needed = permissions.grants(permissions.POD_NEEDS)
        needed |= permissions.code_calls(katib=self.katib, trainjob=self.trainjob)
        return sorted(needed, key=lambda g: tuple(x or "" for x in g))


@dataclass(frozen=True)
class Check:
    """One question about the cluster: its answer, and the fix when it fails."""

    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Report:
    """Every check of a preflight."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped ones are not failures)."""
        return all(c.status != FAIL for c in self.checks)

    def failures(self) -> list[Check]:
        """The failed checks."""
        return [c for c in self.checks if c.status == FAIL]

    def table(self) -> str:
        """A plain-text table: status, check, detail; each failure's fix on the next line."""
        width = max(len(c.name) for c in self.checks)
        lines = []
        for c in self.checks:
            lines.append(f"{c.status.upper():4}  {c.name:{width}}  {c.detail}")
            if c.fix and c.status != PASS:
                lines.append(f"{'':4}  {'':{width}}  fix: {c.fix}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-serialisable form."""
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


# -- reading the API -------------------------------------------------------------------------


class _Forbidden(Exception):
    """The caller may not read this (HTTP 403)."""


def _read(call, *args, **kwargs) -> dict | None:
    """JSON of a client call (None on 404); _Forbidden on 403."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return json.loads(call(*args, _preload_content=False, **kwargs).data)
    except HTTPError as err:
        raise RuntimeError(f"cannot reach the Kubernetes API: {err}") from None
    except ApiException as err:
        if err.status == 404:
            return None
        if err.status in (401, 403):
            raise _Forbidden(f"HTTP {err.status} {err.reason}") from None
        raise RuntimeError(f"the Kubernetes API answered HTTP {err.status}: {err.reason}") from None


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def check_version(api_client, key: str) -> Check:
    """The version of component ``key`` (:data:`COMPONENTS`) against its floor."""
    from kubernetes import client

    part = COMPONENTS[key]
    apps, name = client.AppsV1Api(api_client), f"{part.name} version"
    where = " or ".join(f"{ns}/{part.deployment}" for ns in part.namespaces)
    hand = f"kubectl -n {part.namespaces[0]} get deploy {part.deployment} -o wide"
    for namespace in part.namespaces:
        try:
            found = _read(apps.read_namespaced_deployment, part.deployment, namespace)
        except _Forbidden as err:
            return Check(name, SKIP, f"cannot read Deployment {where}: {err}", hand)
        if found is not None:
            break
    else:
        return Check(
            name, FAIL, f"no Deployment {where}", f"install {part.name} >= {_dotted(part.floor)}"
        )
    images = [c["image"] for c in found["spec"]["template"]["spec"]["containers"]]
    version = part.version(images)
    if version is None:
        return Check(name, SKIP, f"no {part.image} version in the image tags {images}", hand)
    text = f"{_dotted(version)} ({namespace}/{part.deployment}); needs >= {_dotted(part.floor)}"
    if version < part.floor:
        return Check(
            name, FAIL, text, f"upgrade {part.name} to {_dotted(part.floor)} or newer: {part.why}"
        )
    return Check(name, PASS, text)


def _review(auth, needs: Needs, grant: permissions.Grant) -> dict:
    group, resource, verb, name = grant
    attributes = {"namespace": needs.namespace, "verb": verb, "group": group}
    attributes |= {"resource": resource, **({"name": name} if name else {})}
    account = f"system:serviceaccount:{needs.namespace}:{needs.service_account}"
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": account,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{needs.namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": attributes,
        },
    }
    return _read(auth.create_subject_access_review, body)


def check_permissions(api_client, needs: Needs) -> Check:
    """Whether the run's ServiceAccount may do every verb the pipeline needs."""
    from kubernetes import client

    auth, name = client.AuthorizationV1Api(api_client), "service account permissions"
    account = f"{needs.namespace}/{needs.service_account}"
    denied = []
    for grant in needs.grants():
        try:
            answer = _review(auth, needs, grant)
        except _Forbidden as err:
            return Check(
                name,
                SKIP,
                f"cannot create SubjectAccessReviews: {err}",
                f"kubectl auth can-i --list -n {needs.namespace} "
                f"--as system:serviceaccount:{needs.namespace}:{needs.service_account}",
            )
        if not (answer.get("status") or {}).get("allowed"):
            group, resource, verb, obj = grant
            denied.append(
                f"{verb} {resource}{'.' + group if group else ''}{'/' + obj if obj else ''}"
            )
    if denied:
        return Check(
            name,
            FAIL,
            f"{account} may not: {', '.join(denied)}",
            "kubectl apply -k manifests/single-user (or manifests/multi-user for a Profile "
            "namespace), or bind the run's ServiceAccount to the project's Role",
        )
    return Check(name, PASS, f"{account} may do all {len(needs.grants())} needed verbs")


def check_storage_class(api_client, needs: Needs) -> Check:
    """The workspace's StorageClass exists; its provisioner; RWO-only ones refused for RWX."""
    from kubernetes import client

    name = "workspace storage class"
    try:
        listed = _read(client.StorageV1Api(api_client).list_storage_class)
    except _Forbidden as err:
        return Check(name, SKIP, f"cannot list StorageClasses: {err}", "kubectl get storageclass")
    classes = {c["metadata"]["name"]: c for c in listed["items"]}
    default = [
        n
        for n, c in classes.items()
        if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
    ]
    known = ", ".join(f"{n} ({c['provisioner']})" for n, c in classes.items()) or "none"
    flag = "--workspace-storage-class NAME"
    wanted, modes = needs.workspace.storage_class, "/".join(needs.workspace.access_modes)
    if not wanted:
        return Check(
            name,
            FAIL,
            f"none chosen (the cluster's default is {default[0] if default else 'unset'}); "
            f"classes: {known}",
            f"compile with {flag}: a class that offers {modes}",
        )
    found = classes.get(wanted)
    if found is None:
        return Check(
            name,
            FAIL,
            f"{wanted!r} does not exist; classes: {known}",
            f"{flag}",
        )
    provisioner = found["provisioner"]
    shared = {"ReadWriteMany", "ReadOnlyMany"} & set(needs.workspace.access_modes)
    if shared and provisioner in RWO_ONLY_PROVISIONERS:
        return Check(
            name,
            FAIL,
            f"{wanted} ({provisioner}) offers ReadWriteOnce only, the run asks "
            f"{modes}: the workspace PVC would stay Pending",
            f"{flag} with an RWX class (EFS, Filestore, Azure Files, CephFS, NFS), or "
            "--workspace-access-mode ReadWriteOnce (every task on one node)",
        )
    return Check(
        name,
        PASS,
        f"{wanted} exists ({provisioner}); whether it offers "
        f"{modes} cannot be read from the API: see its driver's docs",
    )


def check_secrets(api_client, needs: Needs) -> Check:
    """The Secrets the compile names exist in the run's namespace, with the keys it names."""
    from kubernetes import client

    core, name, problems = client.CoreV1Api(api_client), "secrets", []
    first = None  # the first Secret to fix, for the example command
    for secret, keys in sorted(needs.secrets.items()):
        try:
            found = _read(core.read_namespaced_secret, secret, needs.namespace)
        except _Forbidden as err:
            return Check(
                name,
                SKIP,
                f"cannot read Secrets in {needs.namespace}: {err}",
                f"kubectl -n {needs.namespace} describe secret {' '.join(sorted(needs.secrets))}",
            )
        if found is None:
            problems.append(f"{secret} is missing")
            first = first or (secret, keys)
            continue
        present = set(found.get("data") or {}) | set(found.get("stringData") or {})
        if missing := [k for k in keys if k not in present]:
            problems.append(f"{secret} has no key {', '.join(missing)}")
            first = first or (secret, keys)
    if problems:
        example = first
        return Check(
            name,
            FAIL,
            f"in {needs.namespace}: {'; '.join(problems)}",
            f"kubectl -n {needs.namespace} create secret generic {example[0]} "
            + " ".join(f"--from-literal={k}=..." for k in example[1])
            + " (docs/cluster.md, step 3)",
        )
    listed = ", ".join(f"{s} ({', '.join(k)})" for s, k in sorted(needs.secrets.items()))
    return Check(name, PASS, f"in {needs.namespace}: {listed or 'none needed'}")


def tolerates(toleration: dict, taint: dict) -> bool:
    """Whether ``toleration`` tolerates ``taint`` (as the scheduler matches them)."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if not toleration.get("key"):
        return toleration.get("operator") == "Exists"
    if toleration["key"] != taint.get("key"):
        return False
    return toleration.get("operator") == "Exists" or toleration.get("value") == taint.get("value")


def _gpu_node_problem(node: dict, needs: Needs) -> str | None:
    """Why the pool's pods cannot run on ``node`` (None: they can)."""
    labels = node["metadata"].get("labels") or {}
    if wrong := [f"{k}={v}" for k, v in needs.gpu.gpu_node_selector.items() if labels.get(k) != v]:
        return f"no label {', '.join(wrong)}"
    taints = [
        t for t in (node.get("spec") or {}).get("taints") or () if t["effect"] != "PreferNoSchedule"
    ]
    untolerated = [
        t for t in taints if not any(tolerates(x.to_dict(), t) for x in needs.gpu.gpu_tolerations)
    ]
    if untolerated:
        return "taint " + ", ".join(map(_taint, untolerated))
    return None


def _taint(taint: dict) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint['key']}{value}:{taint['effect']}"


def check_gpu_nodes(api_client, needs: Needs) -> Check:
    """Nodes that the GPU pool's selector and tolerations reach, with allocatable GPUs."""
    from kubernetes import client

    name = "GPU nodes"
    try:
        nodes = _read(client.CoreV1Api(api_client).list_node)["items"]
    except _Forbidden as err:
        return Check(
            name, SKIP, f"cannot list nodes: {err}", "kubectl get nodes -L nvidia.com/gpu.present"
        )
    with_gpus = [
        n
        for n in nodes
        if int((n.get("status") or {}).get("allocatable", {}).get(GPU_RESOURCE, "0"))
        >= needs.gpu.gpus
    ]
    reached = {n["metadata"]["name"]: _gpu_node_problem(n, needs) for n in with_gpus}
    usable = [n for n, problem in reached.items() if problem is None]
    selector = ",".join(f"{k}={v}" for k, v in needs.gpu.gpu_node_selector.items()) or "any node"
    if usable:
        return Check(
            name,
            PASS,
            f"{len(usable)} node(s) with >= {needs.gpu.gpus} {GPU_RESOURCE} match {selector}: "
            + ", ".join(usable),
        )
    why = (
        "; ".join(f"{n}: {p}" for n, p in reached.items())
        or f"no node has {needs.gpu.gpus} allocatable {GPU_RESOURCE}"
    )
    return Check(
        name,
        FAIL,
        f"no node with >= {needs.gpu.gpus} {GPU_RESOURCE} matches {selector} and the "
        f"tolerations ({why})",
        "compile with the pool's --gpu-node-selector and --gpu-toleration, or install the NVIDIA "
        "device plugin on the GPU nodes",
    )


def check_namespace(api_client, needs: Needs) -> Check:
    """The run namespace lets KServe inject its storage initializer (and Katib its collector)."""
    from kubernetes import client

    name, ns = "namespace labels", needs.namespace
    try:
        found = _read(client.CoreV1Api(api_client).read_namespace, ns)
    except _Forbidden as err:
        return Check(
            name, SKIP, f"cannot read namespace {ns}: {err}", f"kubectl get ns {ns} --show-labels"
        )
    if found is None:
        return Check(name, FAIL, f"namespace {ns} does not exist", f"kubectl create namespace {ns}")
    labels = found["metadata"].get("labels") or {}
    problems, fixes = [], []
    if KSERVE_SKIP_LABEL in labels:
        problems.append(
            f"label {KSERVE_SKIP_LABEL}={labels[KSERVE_SKIP_LABEL]}: KServe's pod mutator skips "
            "it, so the storage initializer is not injected and the predictor finds no model"
        )
        fixes.append(
            "deploy to a namespace without it (the pipeline's namespace parameter), or "
            f"kubectl label ns {ns} {KSERVE_SKIP_LABEL}-"
        )
    key, value = KATIB_INJECTION_LABEL
    if needs.katib and labels.get(key) != value:
        problems.append(f"no label {key}={value}: Katib trials report no metrics")
        fixes.append(f"kubectl label ns {ns} {key}={value}")
    if problems:
        return Check(name, FAIL, f"{ns}: {'; '.join(problems)}", "; ".join(fixes))
    return Check(
        name,
        PASS,
        f"{ns}: KServe injects its storage initializer"
        + ("; Katib its metrics collector" if needs.katib else ""),
    )


def run_checks(api_client, needs: Needs) -> Report:
    """Every preflight check of ``needs`` against the cluster behind ``api_client``."""
    checks = [check_version(api_client, key) for key in needs.components()]
    checks.append(check_permissions(api_client, needs))
    if needs.workspace.enabled:
        checks.append(check_storage_class(api_client, needs))
    checks.append(check_secrets(api_client, needs))
    checks.append(check_gpu_nodes(api_client, needs))
    checks.append(check_namespace(api_client, needs))
    return Report(tuple(checks))


def api_client(kubeconfig: str = "", context: str = ""):
    """An ApiClient from ``kubeconfig`` (empty: the default one) and ``context`` (empty: its
    current one)."""
    from kubernetes import config

    try:
        return config.new_client_from_config(
            config_file=kubeconfig or None, context=context or None
        )
    except (config.ConfigException, FileNotFoundError) as err:
        where = kubeconfig or "the default kubeconfig"
        raise ValueError(
            f"--kubeconfig {where!r}{' --context ' + context if context else ''}: {err}"
        ) from None


def secrets_of_package(package) -> dict[str, tuple[str, ...]]:
    """The Secrets (name: keys) a compiled pipeline's platform spec puts into task pods."""
    import yaml

    with open(package) as stream:
        docs = list(yaml.safe_load_all(stream))
    found: dict[str, set[str]] = {}
    for doc in docs[1:]:
        executors = (
            (doc or {})
            .get("platforms", {})
            .get("kubernetes", {})
            .get("deploymentSpec", {})
            .get("executors", {})
        )
        for executor in executors.values():
            for ref in executor.get("secretAsEnv", ()):
                secret = ref.get("secretName") or (ref.get("secretNameParameter") or {}).get(
                    "runtimeValue", {}
                ).get("constant")
                if secret and not ref.get("optional"):
                    found.setdefault(secret, set()).update(
                        k["secretKey"] for k in ref.get("keyToEnv", ())
                    )
    return {name: tuple(sorted(keys)) for name, keys in found.items()}
