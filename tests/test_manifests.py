"""manifests/: every object validates strictly; overlays patch what exists; least privilege."""

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kserve import V1beta1InferenceService

from invmon.cluster.typed import check

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.33.0"
CUSTOM_KINDS = {"InferenceService": V1beta1InferenceService}


def _kustomizations() -> list[Path]:
    return sorted(MANIFESTS.rglob("kustomization.yaml"))


def _objects() -> list[tuple[Path, dict]]:
    """Every Kubernetes object under manifests/ (kustomizations and JSON patches aside)."""
    found = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") not in (None, "Kustomization"):
                found.append((path, doc))
    return found


def validate(obj: dict) -> None:
    """Strict validation: core kinds by kubernetes-validate, custom kinds by typed models."""
    if obj["kind"] in CUSTOM_KINDS:
        check(obj, CUSTOM_KINDS[obj["kind"]])
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
    assert len(objects) >= 8
    for path, obj in objects:
        try:
            validate(obj)
        except Exception as err:
            pytest.fail(f"{path.relative_to(ROOT)} ({obj['kind']}): {err}")


def test_strict_validation_catches_a_misspelt_field():
    namespace = yaml.safe_load((MANIFESTS / "base" / "namespace.yaml").read_text())
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
        assert data["kind"] == "Kustomization"
        for entry in data.get("resources", []):
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry}"
        for patch in data.get("patches", []):
            assert (kustomization.parent / patch["path"]).is_file(), f"{kustomization}: {patch}"


def test_gpu_overlay_yields_a_valid_gpu_inference_service():
    base = yaml.safe_load((MANIFESTS / "base" / "inferenceservice.yaml").read_text())
    patch = yaml.safe_load(
        (MANIFESTS / "overlays" / "gpu-node-pool" / "inferenceservice-gpu.yaml").read_text()
    )
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
        (MANIFESTS / "overlays" / "external-s3" / "kfp-launcher.yaml").read_text()
    )
    assert launcher["metadata"]["name"] == "kfp-launcher"
    assert launcher["data"]["defaultPipelineRoot"].startswith("s3://")
    providers = yaml.safe_load(launcher["data"]["providers"])
    secret_ref = providers["s3"]["default"]["credentials"]["secretRef"]
    secret = yaml.safe_load((MANIFESTS / "templates" / "s3-secret.yaml").read_text())
    assert secret_ref["secretName"] == secret["metadata"]["name"]
    assert {secret_ref["accessKeyKey"], secret_ref["secretKeyKey"]} == set(secret["stringData"])


def test_namespace_lets_katib_collect_metrics():
    namespace = yaml.safe_load((MANIFESTS / "base" / "namespace.yaml").read_text())
    assert namespace["metadata"]["labels"]["katib.kubeflow.org/metrics-collector-injection"] == (
        "enabled"
    )


def test_pipeline_role_is_least_privilege():
    role = yaml.safe_load((MANIFESTS / "base" / "pipeline-role.yaml").read_text())
    assert role["kind"] == "Role"  # namespaced, never a ClusterRole
    allowed_verbs = {"get", "list", "watch", "create", "patch", "delete"}
    granted = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert set(rule["verbs"]) <= allowed_verbs
        for resource in rule["resources"]:
            granted[(tuple(rule["apiGroups"]), resource)] = rule
    assert set(granted) == {
        (("kubeflow.org",), "experiments"),
        (("kubeflow.org",), "trials"),
        (("trainer.kubeflow.org",), "trainjobs"),
        (("serving.kserve.io",), "inferenceservices"),
        (("",), "secrets"),
    }
    secrets = granted[(("",), "secrets")]
    assert secrets["verbs"] == ["get"] and secrets["resourceNames"] == ["invmon-s3"]


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


def _verbs_called(fake) -> set[tuple[str, str, str]]:
    """(API group, resource, RBAC verb) of every request the fake API server received."""
    from support.fake_kubernetes import _PATH

    verbs = set()
    for method, path in fake.requests:
        match = _PATH.match(path)
        verb = {"POST": "create", "GET": "get" if match["name"] else "list"}[method]
        verbs.add((match["group"], match["plural"], verb))
    return verbs


def test_role_grants_exactly_the_custom_object_verbs_tune_and_train_call(tmp_path):
    """Against the FAKE Kubernetes API (no real API server runs here): a Katib search (created,
    then followed when a retried task finds it), and a TrainJob. The Role must allow every call,
    and grant nothing more on these resources."""
    import json

    from support.fake_kubernetes import (
        FakeKubernetesApi,
        custom_objects_api,
        fake_kubernetes_server,
    )
    from test_katib import _experiment, _succeed_on_third_read, _trial
    from test_trainjob import CONFIG, SETTINGS, _complete_on_second_read

    from invmon.cluster import katib, trainjob
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
            )
        called |= _verbs_called(fake)
    fake = FakeKubernetesApi(controller=_complete_on_second_read)
    with fake_kubernetes_server(fake) as url:
        trainjob.run_trainjob(
            trainjob.render_trainjob(CONFIG, SETTINGS),
            api=custom_objects_api(url),
            sleep=lambda s: None,
        )
    called |= _verbs_called(fake)

    role = yaml.safe_load((MANIFESTS / "base" / "pipeline-role.yaml").read_text())
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if resource in ("experiments", "trials", "trainjobs")
    }
    assert called == granted
    assert called == {
        ("kubeflow.org", "experiments", "create"),
        ("kubeflow.org", "experiments", "get"),
        ("kubeflow.org", "trials", "list"),
        ("trainer.kubeflow.org", "trainjobs", "create"),
        ("trainer.kubeflow.org", "trainjobs", "get"),
    }
