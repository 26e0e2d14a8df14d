"""Deploy: the InferenceService manifest and the local ModelServer check."""

import pytest
from kserve import V1beta1InferenceService

from invmon.deploy import (
    ServiceSpec,
    deploy_local,
    deploy_local_from_dataset,
    render_inference_service,
    storage_uri,
)
from invmon.k8s import to_typed
from invmon.model import ModelNotFound


def _typed(manifest: dict) -> V1beta1InferenceService:
    """Read with the kserve package's typed model; unknown fields raise."""
    return to_typed(manifest, V1beta1InferenceService)


def test_manifest_is_a_valid_inference_service_for_the_custom_predictor():
    spec = ServiceSpec(
        name="bin-counter",
        namespace="team",
        model_uri="s3://models/bin-counter",
        image="registry.example/invmon-serve:1.0",
    )
    manifest = render_inference_service(spec)
    typed = _typed(manifest)
    assert typed.kind == "InferenceService" and typed.metadata.namespace == "team"
    predictor = typed.spec.predictor
    assert predictor.service_account_name == "invmon-s3"
    container = predictor.containers[0]
    assert container.image == "registry.example/invmon-serve:1.0"
    assert {"name": "STORAGE_URI", "value": "s3://models/bin-counter"} in manifest["spec"][
        "predictor"
    ]["containers"][0]["env"]
    assert "--model_dir" in container.args and container.security_context.run_as_non_root
    text = str(manifest).lower()
    assert "secret" not in text and "aws_access" not in text


def test_a_misspelt_field_is_refused():
    manifest = render_inference_service(ServiceSpec(model_uri="s3://m/x"))
    manifest["spec"]["predictor"]["minReplica"] = 2
    with pytest.raises(ValueError, match=r"predictor\.minReplica: not a field"):
        _typed(manifest)


def test_gpu_service_asks_for_a_gpu():
    manifest = render_inference_service(ServiceSpec(model_uri="s3://m/x", gpus=1))
    limits = manifest["spec"]["predictor"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad_Name"}, "--name"),
        ({"deployment_mode": "Serverless"}, "deployment mode"),
        ({"min_replicas": 3, "max_replicas": 2}, "replicas"),
    ],
)
def test_bad_service_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServiceSpec(model_uri="s3://m/x", **kwargs)


def test_storage_uri_maps_kfp_artifact_uris():
    assert (
        storage_uri("minio://mlpipeline/v2/artifacts/model") == "s3://mlpipeline/v2/artifacts/model"
    )
    assert storage_uri("s3://b/m") == "s3://b/m"
    with pytest.raises(ValueError, match="not fetchable"):
        storage_uri("/local/path")


def test_local_deploy_serves_and_checks_real_requests(model_dir, arranged_dir):
    report = deploy_local_from_dataset(model_dir, arranged_dir)
    assert report.v1_count == report.v2_count == report.in_process_count
    assert report.true_count is not None


def test_local_deploy_fails_loudly_on_a_broken_model_folder(tmp_path, raw_dir):
    with pytest.raises(ModelNotFound, match=r"config\.json"):
        deploy_local(tmp_path, raw_dir / "bin-images" / "00001.jpg")
