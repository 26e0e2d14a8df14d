"""Deploy: the InferenceService manifest, the rollout against a FAKE Kubernetes API, and the
smoke requests against a real ModelServer.

No Kubernetes API server can run here; ``FakeKubernetesApi`` (tests/fake_kubernetes.py) stands in
for it, spoken to by the real ``kubernetes`` client. The service it reports Ready points at a real
KServe ModelServer on loopback serving the model, so the smoke request is real HTTP.
"""

from pathlib import Path

import pytest
import torch
import yaml
from kserve import V1beta1InferenceService
from support.fake_kubernetes import Controller, FakeKubernetesApi

from invmon.cluster.container_images import DEFAULT_IMAGES
from invmon.cluster.inference_service import (
    DeployError,
    ServiceSpec,
    render_inference_service,
    storage_uri,
    toleration,
)
from invmon.cluster.mesh import render_authorization_policy
from invmon.cluster.typed import check
from invmon.serving.server import LocalServer
from invmon.stages.deploy import (
    DeploySettings,
    deploy_local,
    deploy_to_cluster,
    first_test_image,
    run,
)
from invmon.training.model import ModelNotFound, build_model, read_config, save_model

ROOT = Path(__file__).resolve().parents[1]
# Where the fake API server keeps the InferenceService that _spec() describes.
SERVICE_KEY = ("inferenceservices", "team", "bin-counter")


def _typed(manifest: dict) -> V1beta1InferenceService:
    """Read with the kserve package's typed model; unknown fields raise."""
    return check(manifest, V1beta1InferenceService)


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
        ({"min_replicas": 0}, "scale to zero"),
        ({"canary_traffic_percent": 10}, "needs --deployment-mode Knative"),
        ({"canary_traffic_percent": 120, "deployment_mode": "Knative"}, "between 0 and 100"),
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
    report = run(
        DeploySettings(model_uri=str(model_dir), target="local", arranged=str(arranged_dir))
    )
    assert report.v1_count == report.v2_count == report.in_process_count
    assert report.true_count is not None


def test_local_deploy_fails_loudly_on_a_broken_model_folder(tmp_path, raw_dir):
    with pytest.raises(ModelNotFound, match=r"config\.json"):
        deploy_local(tmp_path, raw_dir / "bin-images" / "00001.jpg")


def test_gpu_pool_placement_is_rendered_and_typed():
    spec = ServiceSpec(
        model_uri="s3://m/x",
        gpus=1,
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=(toleration("nvidia.com/gpu:NoSchedule"),),
        deployment_mode="Knative",
        min_replicas=0,
        max_replicas=4,
    )
    typed = _typed(render_inference_service(spec))
    predictor = typed.spec.predictor
    assert predictor.node_selector == {"nvidia.com/gpu.present": "true"}
    assert predictor.tolerations[0].key == "nvidia.com/gpu"
    assert predictor.tolerations[0].operator == "Exists"
    assert predictor.min_replicas == 0 and predictor.max_replicas == 4
    assert typed.metadata.annotations["serving.kserve.io/deploymentMode"] == "Knative"


def test_a_dry_run_renders_what_a_rollout_would_apply():
    manifest = run(DeploySettings(model_uri="minio://mlpipeline/model", dry_run=True))
    container = manifest["spec"]["predictor"]["containers"][0]
    assert container["env"] == [{"name": "STORAGE_URI", "value": "s3://mlpipeline/model"}]
    assert manifest["metadata"]["namespace"] == "default", "not in a pod: the default namespace"
    assert container["image"] == DEFAULT_IMAGES.image("serve"), "empty: the project's image"


def test_local_is_a_target_on_the_command_line_too():
    from invmon.cli import build_parser

    parser = build_parser(only="deploy")
    for flags in (["--local"], ["--target", "local"]):
        args = parser.parse_args(["deploy", "--model-uri", "m", *flags])
        assert args.command_object.settings is DeploySettings and args.target == "local"
    with pytest.raises(ValueError, match="--target must be one of kserve, local"):
        DeploySettings(model_uri="m", target="cloud")


def test_deploy_monitor_renders_kserves_payload_logger_checked_by_the_typed_schema():
    from invmon.cli import build_parser

    args = build_parser(only="deploy").parse_args(
        [
            "deploy",
            "--model-uri",
            "s3://m/x",
            "--dry-run",
            "--monitor",
            "http://invmon-monitor.team.svc.cluster.local",
        ]
    )
    manifest = args.command_object.run(args.command_object.settings_from(args))
    logger = _typed(manifest).spec.predictor.logger
    assert logger.url == "http://invmon-monitor.team.svc.cluster.local"
    assert logger.mode == "all", "requests and responses: the monitor joins them by ce-id"
    plain = render_inference_service(ServiceSpec(model_uri="s3://m/x"))
    assert "logger" not in plain["spec"]["predictor"], "off unless --monitor is given"


def test_dropping_monitor_removes_the_logger_on_update():
    from invmon.cluster.inference_service import update_patch

    with_logger = render_inference_service(ServiceSpec(model_uri="s3://m/x", monitor="http://m"))
    without = render_inference_service(ServiceSpec(model_uri="s3://m/x"))
    patch = update_patch(without, with_logger, None)
    assert patch["spec"]["predictor"]["logger"] is None


def test_a_monitor_that_is_not_a_url_is_named():
    with pytest.raises(ValueError, match="--monitor 'invmon-monitor:8080' is not a URL"):
        ServiceSpec(model_uri="s3://m/x", monitor="invmon-monitor:8080")


def test_a_bad_toleration_names_deploys_own_option():
    with pytest.raises(ValueError, match="--toleration 'gpu:Sometimes': effect must be one of"):
        toleration("gpu:Sometimes")


# -- rollout against the fake Kubernetes API ---------------------------------------------------


@pytest.fixture(scope="module")
def predictor_server(model_dir):
    """The "predictor pod": a real ModelServer serving the model on loopback."""
    with LocalServer(model_dir) as server:
        yield server


@pytest.fixture
def smoke_image(arranged_dir) -> bytes:
    return first_test_image(arranged_dir)[0].read_bytes()


def _spec(**kwargs) -> ServiceSpec:
    return ServiceSpec(namespace="team", model_uri="s3://models/bin-counter", **kwargs)


def test_rollout_against_fake_api_creates_waits_and_smoke_tests(
    predictor_server, model_dir, smoke_image
):
    with FakeKubernetesApi(Controller(url=predictor_server.url, ready_after=3)) as fake:
        report = deploy_to_cluster(
            _spec(), smoke_image, model_dir=model_dir, api=fake.client(), poll=0.01
        )
        stored = fake.objects[SERVICE_KEY]
    assert report.action == "created" and report.generation == 1
    assert report.smoke.url == predictor_server.url
    assert report.smoke.v1_count == report.smoke.v2_count == report.smoke.expected_count
    assert report.smoke.max_probability_difference <= 0.05
    env = stored["spec"]["predictor"]["containers"][0]["env"]
    assert env == [{"name": "STORAGE_URI", "value": "s3://models/bin-counter"}]
    polls = [r for r in fake.requests if r[0] == "GET"]
    assert len(polls) == 3, "waited until the fake controller reported Ready"


def test_update_replaces_the_spec_and_splits_traffic_in_knative_mode(
    predictor_server, model_dir, smoke_image
):
    with FakeKubernetesApi(Controller(url=predictor_server.url, ready_after=1)) as fake:
        api = fake.client()
        first = deploy_to_cluster(
            _spec(deployment_mode="Knative"), smoke_image, model_dir, api=api, poll=0.01
        )
        fake.objects[SERVICE_KEY]["metadata"]["labels"]["owner"] = "ml-team"
        second = deploy_to_cluster(
            _spec(
                deployment_mode="Knative",
                canary_traffic_percent=10,
                image="registry.example/invmon-serve:0.2.0",
            ),
            smoke_image,
            model_dir,
            api=api,
            poll=0.01,
        )
        stored = fake.objects[SERVICE_KEY]
    assert (first.action, second.action) == ("created", "updated")
    assert second.generation == 2 and second.canary_traffic_percent == 10
    predictor = stored["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["containers"][0]["image"] == "registry.example/invmon-serve:0.2.0"
    assert stored["metadata"]["labels"]["owner"] == "ml-team", "labels others set are kept"
    assert [r[0] for r in fake.requests].count("PATCH") == 1
    assert _verbs(fake.requests) <= _role_verbs("serving.kserve.io", "inferenceservices")


HTTP_VERBS = {"POST": "create", "GET": "get", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _verbs(requests: list[tuple[str, str]]) -> set[str]:
    """The Kubernetes verbs of the HTTP requests the fake API server received."""
    return {HTTP_VERBS[method] for method, _path in requests}


def _role_verbs(group: str, resource: str) -> set[str]:
    """The verbs that the pipeline Roles of both install modes grant on ``resource`` (the
    verbs each of them grants)."""
    granted = []
    for mode in ("single-user", "multi-user"):
        role = yaml.safe_load((ROOT / "manifests" / mode / "pipeline-role.yaml").read_text())
        granted.append(
            {
                verb
                for rule in role["rules"]
                if group in rule["apiGroups"] and resource in rule["resources"]
                for verb in rule["verbs"]
            }
        )
    return set.intersection(*granted)


def test_an_update_removes_settings_dropped_from_the_manifest(predictor_server, smoke_image):
    with FakeKubernetesApi(Controller(url=predictor_server.url, ready_after=0)) as fake:
        api = fake.client()
        gpu = _spec(
            gpus=1,
            node_selector={"pool": "a100"},
            tolerations=(toleration("nvidia.com/gpu:NoSchedule"),),
        )
        deploy_to_cluster(gpu, smoke_image, api=api, poll=0.01)
        deploy_to_cluster(_spec(), smoke_image, api=api, poll=0.01)
        predictor = fake.objects[SERVICE_KEY]["spec"]["predictor"]
        patch = fake.patches[-1]["spec"]["predictor"]
    assert "nodeSelector" not in predictor and "tolerations" not in predictor
    assert patch["nodeSelector"] is None and patch["tolerations"] is None
    assert "nvidia.com/gpu" not in predictor["containers"][0]["resources"]["limits"]


def test_a_stale_update_is_a_conflict_and_is_retried(predictor_server, smoke_image):
    """Someone changes the service between deploy's read and its patch: deploy reads again."""
    with FakeKubernetesApi(Controller(url=predictor_server.url, ready_after=0)) as fake:
        api = fake.client()
        deploy_to_cluster(_spec(), smoke_image, api=api, poll=0.01)
        get = api.get_namespaced_custom_object
        calls = []

        def get_then_someone_edits(*args):
            obj = get(*args)
            if not calls:  # another client's patch lands right after deploy's first read
                api.patch_namespaced_custom_object(*args, {"metadata": {"labels": {"x": "1"}}})
            calls.append(1)
            return obj

        api.get_namespaced_custom_object = get_then_someone_edits
        report = deploy_to_cluster(_spec(image="r/invmon-serve:2"), smoke_image, api=api, poll=0.01)
    assert report.action == "updated" and len(calls) >= 2
    assert fake.objects[SERVICE_KEY]["metadata"]["labels"]["x"] == "1"
    # The other client's patch, deploy's refused (409) one, and its retry after reading again.
    assert [method for method, _ in fake.requests].count("PATCH") == 3


def test_a_service_that_never_becomes_ready_fails_with_its_conditions(smoke_image):
    with (
        FakeKubernetesApi(Controller(never_ready=True)) as fake,
        pytest.raises(DeployError, match="not Ready after") as failure,
    ):
        deploy_to_cluster(_spec(), smoke_image, api=fake.client(), timeout=0.2, poll=0.01)
    message = str(failure.value)
    assert "ImagePullBackOff" in message and "PredictorReady=False" in message


def test_a_model_that_fails_to_load_fails_at_once(smoke_image):
    with FakeKubernetesApi(Controller(failed_load=True)) as fake:
        with pytest.raises(DeployError, match="BlockedByFailedLoad"):
            deploy_to_cluster(_spec(), smoke_image, api=fake.client(), timeout=60, poll=0.01)
        assert len([r for r in fake.requests if r[0] == "GET"]) == 1


def test_switching_deployment_mode_is_refused(smoke_image, predictor_server):
    with FakeKubernetesApi(Controller(url=predictor_server.url, ready_after=0)) as fake:
        api = fake.client()
        deploy_to_cluster(_spec(), smoke_image, api=api, poll=0.01)
        with pytest.raises(DeployError, match="cannot switch it to Knative"):
            deploy_to_cluster(_spec(deployment_mode="Knative"), smoke_image, api=api, poll=0.01)


def test_a_service_answering_with_another_model_fails_the_smoke_check(
    tmp_path, model_dir, smoke_image
):
    torch.manual_seed(1)
    config = read_config(model_dir)
    other = save_model(build_model(config), config, tmp_path / "other")
    # Served as the deploy task's predictor is (staged): the smoke request arrives while the
    # compiled graph is built beside the eager model, which once deadlocked the server (see
    # test_staged_loading.py).
    with (
        LocalServer(other) as wrong,
        FakeKubernetesApi(Controller(url=wrong.url)) as fake,
        pytest.raises(DeployError, match="differ from the in-process model"),
    ):
        deploy_to_cluster(_spec(), smoke_image, model_dir, api=fake.client(), poll=0.01)


# -- a Profile namespace: Istio refuses callers without a sidecar ------------------------------


class _Refusing:
    """A stand-in for the predictor's Istio sidecar on loopback: every request gets HTTP 403 with
    ``body`` (Envoy's RBAC filter answers ``RBAC: access denied`` as text/plain)."""

    def __init__(self, body: bytes, content_type: str = "text/plain"):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(403)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_istios_refusal_skips_the_smoke_check_and_says_what_to_apply(smoke_image, caplog):
    """FAKE Kubernetes API; the "predictor" answers as Istio does without an AuthorizationPolicy."""
    with (
        _Refusing(b"RBAC: access denied") as mesh,
        FakeKubernetesApi(Controller(url=mesh.url, ready_after=0)) as fake,
    ):
        report = deploy_to_cluster(_spec(), smoke_image, api=fake.client(), poll=0.01)
    assert report.action == "created" and report.smoke is None
    assert "HTTP 403 'RBAC: access denied'" in report.smoke_skipped
    assert "manifests/multi-user/predictor-authorizationpolicy.yaml" in report.smoke_skipped
    policy = yaml.safe_load(report.smoke_skipped.split("next time:\n", 1)[1])
    assert policy == render_authorization_policy("bin-counter", "team")
    assert "smoke check skipped" in caplog.text
    assert report.to_dict()["smoke_skipped"] == report.smoke_skipped


def test_other_refusals_still_fail_the_deploy(smoke_image):
    with (
        _Refusing(b'{"error": "forbidden by the model server"}', "application/json") as server,
        FakeKubernetesApi(Controller(url=server.url, ready_after=0)) as fake,
        pytest.raises(DeployError, match="HTTP 403: forbidden by the model server"),
    ):
        deploy_to_cluster(_spec(), smoke_image, api=fake.client(), poll=0.01)


def test_the_authorization_policy_admits_only_the_calling_namespaces_on_inference_paths():
    """Issue 22, item 12: the policy admitted any source; now only the service's own namespace
    and the namespaces named as callers, on the predictor's inference and health paths."""
    policy = render_authorization_policy("counter-v2", "team", callers=("shop-floor",))
    assert policy["metadata"]["namespace"] == "team"
    assert policy["spec"]["selector"] == {
        "matchLabels": {"serving.kserve.io/inferenceservice": "counter-v2"}
    }
    assert policy["spec"]["action"] == "ALLOW"
    (rule,) = policy["spec"]["rules"]
    assert rule["from"] == [{"source": {"namespaces": ["team", "shop-floor"]}}]
    assert rule["to"][0]["operation"]["paths"] == ["/v1/models/*", "/v2/models/*", "/v2/health/*"]
    (rule,) = render_authorization_policy("counter-v2", "team")["spec"]["rules"]
    assert rule["from"] == [{"source": {"namespaces": ["team"]}}]


def test_an_authorization_policy_without_a_namespace_to_scope_to_is_refused():
    with pytest.raises(ValueError, match="namespace"):
        render_authorization_policy("counter-v2", "")


def test_the_shipped_authorization_policy_is_the_rendered_one():
    """The shipped file names the example Profile namespace, which kustomize replaces (the
    kustomize build test checks it follows the install's namespace)."""
    shipped = yaml.safe_load(
        (ROOT / "manifests" / "multi-user" / "predictor-authorizationpolicy.yaml").read_text()
    )
    rendered = render_authorization_policy("bin-counter", "kubeflow-user-example-com")
    del rendered["metadata"]["namespace"]
    assert shipped == rendered


def test_the_service_spec_takes_the_calling_namespaces():
    spec = ServiceSpec(namespace="team", model_uri="s3://m/x", callers=("shop-floor",))
    assert spec.callers == ("shop-floor",)
    with pytest.raises(ValueError, match="--caller-namespace 'Bad_NS'"):
        ServiceSpec(namespace="team", callers=("Bad_NS",))


def test_the_predictor_has_a_startup_probe_and_readiness_settings():
    """Strictly valid (kserve's typed model, and the container as a core Pod by the Kubernetes
    schema), asking the model's ready endpoint, with a start-up budget well above the measured
    start-up (docs/benchmarks.md) and above what --load blocking needs."""
    import kubernetes_validate

    from invmon.cluster.inference_service import STARTUP_BUDGET_S

    manifest = render_inference_service(ServiceSpec(name="shelf", model_uri="s3://m/x"))
    container = _typed(manifest).spec.predictor.containers[0]
    startup, readiness = container.startup_probe, container.readiness_probe
    for probe in (startup, readiness):
        assert (probe.http_get.path, probe.http_get.port) == ("/v2/models/shelf/ready", 8080)
    assert startup.period_seconds * startup.failure_threshold == STARTUP_BUDGET_S >= 120
    assert readiness.failure_threshold >= 2 and readiness.timeout_seconds >= 2
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "predictor"},
        "spec": {"containers": manifest["spec"]["predictor"]["containers"]},
    }
    kubernetes_validate.validate(pod, "1.33.0", strict=True)


def test_the_example_manifest_probes_as_the_deploy_step_renders():
    rendered = render_inference_service(ServiceSpec(model_uri="s3://m/x"))
    example = yaml.safe_load((ROOT / "manifests/templates/inferenceservice.yaml").read_text())
    for probe in ("startupProbe", "readinessProbe"):
        ours = rendered["spec"]["predictor"]["containers"][0][probe]
        assert example["spec"]["predictor"]["containers"][0][probe] == ours, probe


def test_the_serving_image_checks_readiness_with_the_start_up_budget_of_the_probes():
    from invmon.cluster.inference_service import STARTUP_BUDGET_S

    dockerfile = (ROOT / "images/serve/Dockerfile").read_text()
    healthcheck = dockerfile.split("\nHEALTHCHECK", 1)[1].split("\n#", 1)[0]
    assert "/v2/health/ready" in healthcheck
    assert f"--start-period={STARTUP_BUDGET_S}s" in healthcheck


# -- a model in KFP's own object store (issue 22) -----------------------------------------------

ACCESS, SECRET = (
    "c2Vhd2VlZC1hY2Nlc3M=",
    "c2Vhd2VlZC1zZWNyZXQta2V5LTQy",
)  # base64, as the API has them


def _kfp_store_secret(namespace: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "mlpipeline-minio-artifact", "namespace": namespace},
        "type": "Opaque",
        "data": {"accesskey": ACCESS, "secretkey": SECRET},
    }


def test_a_dry_run_for_a_kfp_store_model_runs_as_the_stores_account():
    """A minio:// model is in KFP's store: the service must not run as invmon-s3, whose Secret
    points at AWS S3, but as the account that carries the store's keys."""
    from invmon.cluster.store_credentials import STORE_ACCOUNT

    manifest = run(DeploySettings(model_uri="minio://mlpipeline/model", dry_run=True))
    assert manifest["spec"]["predictor"]["serviceAccountName"] == STORE_ACCOUNT
    s3 = run(DeploySettings(model_uri="s3://bucket/model", dry_run=True))
    assert s3["spec"]["predictor"]["serviceAccountName"] == "invmon-s3"
    chosen = ServiceSpec(service_account="mine")
    given = run(DeploySettings(model_uri="minio://b/m", service=chosen, dry_run=True))
    assert given["spec"]["predictor"]["serviceAccountName"] == "mine"


@pytest.mark.parametrize("namespace", ["kubeflow-user-example-com", "kubeflow"])
def test_deploying_a_kfp_store_model_gives_kserve_the_namespaces_store_keys(namespace, caplog):
    """Against the FAKE Kubernetes API (multi-user: the Profile namespace; single-user:
    kubeflow): deploy copies the namespace's own mlpipeline-minio-artifact keys, as the API holds
    them, into a Secret annotated for KFP's store (SeaweedFS, plain HTTP) under the key names
    KServe reads, and a ServiceAccount carrying it that the InferenceService runs as. A second
    deploy updates both. The values appear in no log and no report."""
    import logging

    from invmon.cluster.store_credentials import STORE_ACCOUNT, STORE_SECRET

    # The project's own logs at every level. (The kubernetes client's DEBUG log prints whole
    # response bodies, Secrets included: never run it at DEBUG on a cluster.)
    caplog.set_level(logging.DEBUG, logger="invmon")
    spec = ServiceSpec(
        namespace=namespace, model_uri="s3://mlpipeline/v2/artifacts/p/r/train/model"
    )
    spec = spec.replace(service_account=STORE_ACCOUNT)
    reports = []
    with (
        _Refusing(b"RBAC: access denied") as mesh,
        FakeKubernetesApi(Controller(url=mesh.url, ready_after=0)) as fake,
    ):
        fake.add("secrets", _kfp_store_secret(namespace))
        for _ in range(2):
            reports.append(
                deploy_to_cluster(
                    spec,
                    b"not an image",
                    api=fake.client(),
                    poll=0.01,
                    kfp_store="http://seaweedfs.kubeflow:9000",
                )
            )
        secret = fake.objects[("secrets", namespace, STORE_SECRET)]
        account = fake.objects[("serviceaccounts", namespace, STORE_ACCOUNT)]
        service = fake.objects[("inferenceservices", namespace, "bin-counter")]
        patched = [p for m, p in fake.requests if m == "PATCH" and "/api/v1/" in p]
    assert secret["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "seaweedfs.kubeflow:9000",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "us-east-1",
    }
    assert secret["data"] == {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}
    assert account["secrets"] == [{"name": STORE_SECRET}]
    assert service["spec"]["predictor"]["serviceAccountName"] == STORE_ACCOUNT
    assert len(patched) == 2  # the second deploy updated the Secret and the ServiceAccount
    for text in [caplog.text, *(str(r.to_dict()) for r in reports)]:
        for value in (ACCESS, SECRET, "seaweed-access", "seaweed-secret-key-42"):
            assert value not in text


def test_a_namespace_without_kfps_store_secret_fails_before_the_rollout():
    from invmon.cluster.store_credentials import STORE_ACCOUNT

    spec = ServiceSpec(
        namespace="team", model_uri="s3://mlpipeline/m", service_account=STORE_ACCOUNT
    )
    with (
        FakeKubernetesApi(Controller(ready_after=0)) as fake,
        pytest.raises(DeployError, match=r"team/mlpipeline-minio-artifact.*HTTP 404"),
    ):
        deploy_to_cluster(spec, b"x", api=fake.client(), poll=0.01, kfp_store="http://s:9000")
    assert SERVICE_KEY not in fake.objects
