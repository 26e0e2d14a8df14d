"""invmon doctor (and invmon submit's preflight): each check against a cluster that passes it and
one that fails it.

No Kubernetes API server runs here: every cluster below is the FAKE Kubernetes API of
tests/support/fake_kubernetes.py (FakeKubernetesApi), over real HTTP, read through the real
``kubernetes`` client. A "healthy" fake cluster holds what a working install has (controller
Deployments at current versions, an RWX storage class, KFP's Secret, a GPU node, a namespace
KServe injects into, an authorizer that allows everything); each test breaks one thing.
"""

import pytest
import yaml
from support.fake_kubernetes import FakeKubernetesApi

from invmon.cluster import permissions, preflight
from invmon.cluster.gpu_pool import GpuPool
from invmon.cluster.versions import COMPONENTS, parse_version
from invmon.cluster.workspace import WorkspaceSettings
from invmon.core.settings import field_named, kind_of
from invmon.stages.doctor import DOCTOR, DoctorSettings, run, show

NAMESPACE = "kubeflow"
IMAGES = {
    "kfp": "ghcr.io/kubeflow/kfp-api-server:2.16.0",
    "argo": "quay.io/argoproj/workflow-controller:v3.7.14",
    "katib": "ghcr.io/kubeflow/katib/katib-controller:v0.19.0",
    "trainer": "ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.3.0",
    "kserve": "kserve/kserve-controller:v0.21.0",
}


def _deployment(key: str, image: str) -> dict:
    part = COMPONENTS[key]
    return {
        "metadata": {"name": part.deployment, "namespace": part.namespaces[0]},
        "spec": {"template": {"spec": {"containers": [{"name": "manager", "image": image}]}}},
    }


def _node(name: str, gpus: str = "8", labels=None, taints=None) -> dict:
    return {
        "metadata": {
            "name": name,
            "labels": {"nvidia.com/gpu.present": "true"} if labels is None else labels,
        },
        "spec": {
            "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
            if taints is None
            else taints
        },
        "status": {"allocatable": {"cpu": "32", "nvidia.com/gpu": gpus}},
    }


def healthy(images=IMAGES, **fake_options) -> FakeKubernetesApi:
    """A FAKE cluster on which every check passes (for the default settings below)."""
    fake = FakeKubernetesApi(**fake_options)
    for key, image in images.items():
        fake.add("deployments", _deployment(key, image))
    fake.add(
        "storageclasses",
        {"metadata": {"name": "shared"}, "provisioner": "efs.csi.aws.com"},
    )
    fake.add(
        "storageclasses",
        {
            "metadata": {
                "name": "gp3",
                "annotations": {preflight.DEFAULT_CLASS_ANNOTATION: "true"},
            },
            "provisioner": "ebs.csi.aws.com",
        },
    )
    fake.add(
        "secrets",
        {
            "metadata": {"name": "mlpipeline-minio-artifact", "namespace": NAMESPACE},
            "data": {"accesskey": "eA==", "secretkey": "eA=="},
        },
    )
    fake.add("nodes", _node("gpu-1"))
    fake.add("nodes", _node("cpu-1", gpus="0", labels={}, taints=[]))
    fake.add(
        "namespaces",
        {
            "metadata": {
                "name": NAMESPACE,
                "labels": {"katib.kubeflow.org/metrics-collector-injection": "enabled"},
            }
        },
    )
    return fake


SETTINGS = DoctorSettings(workspace=WorkspaceSettings(storage_class="shared"))


def _gpu(**changes) -> DoctorSettings:
    """SETTINGS with the GPU work compiled otherwise."""
    return SETTINGS.replace(gpu=GpuPool(**changes))


def _workspace(**changes) -> DoctorSettings:
    """SETTINGS with the workspace compiled otherwise."""
    return SETTINGS.replace(workspace=SETTINGS.workspace.replace(**changes))


def _api_client(url: str):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url
    return client.ApiClient(configuration)


def _check(fake: FakeKubernetesApi, name: str, settings=SETTINGS) -> preflight.Check:
    with fake:
        report = run(settings, api_client=_api_client(fake.url))
    return next(c for c in report.checks if c.name == name)


def test_a_healthy_cluster_passes_every_check():
    """FAKE cluster (FakeKubernetesApi): every check passes, and the table says so."""
    settings = _gpu(tune_backend="katib", train_launcher="trainjob")
    with healthy() as fake:
        report = run(settings, api_client=_api_client(fake.url))
    assert report.ok, report.table()
    assert [c.status for c in report.checks] == ["pass"] * 10
    assert show(report).count("PASS") == 10


@pytest.mark.parametrize("key", sorted(IMAGES))
def test_a_controller_below_its_floor_fails_naming_the_upgrade(key):
    """FAKE cluster (FakeKubernetesApi) whose controller runs a version under its floor."""
    old = ".".join(map(str, (*COMPONENTS[key].floor[:-1], COMPONENTS[key].floor[-1] - 1)))
    images = {**IMAGES, key: IMAGES[key].rsplit(":", 1)[0] + f":v{old}"}
    settings = _gpu(tune_backend="katib", train_launcher="trainjob")
    check = _check(healthy(images), f"{COMPONENTS[key].name} version", settings)
    assert check.status == "fail" and old in check.detail
    assert f"upgrade {COMPONENTS[key].name}" in check.fix


def test_katib_and_the_trainer_are_checked_only_when_compiled_in():
    """FAKE cluster (FakeKubernetesApi) without Katib or the Trainer: a local search and a local
    training need neither; compiled in, their absence fails."""
    images = {k: v for k, v in IMAGES.items() if k not in ("katib", "trainer")}
    with healthy(images) as fake:
        assert run(SETTINGS, api_client=_api_client(fake.url)).ok
        report = run(_gpu(tune_backend="katib"), api_client=_api_client(fake.url))
    (failed,) = report.failures()
    assert failed.name == "Katib version" and "no Deployment kubeflow/katib-controller" in (
        failed.detail
    )


def test_versions_are_read_from_image_tags():
    assert parse_version("ghcr.io/kubeflow/kfp-api-server:2.16.0") == (2, 16, 0)
    assert parse_version("kserve/kserve-controller:v0.16.1-rc0") == (0, 16, 1)
    assert parse_version("registry:5000/kserve/kserve-controller:v0.16") == (0, 16)
    assert parse_version("kserve/kserve-controller@sha256:abc") is None
    assert parse_version("kserve/kserve-controller:latest") is None


def test_a_service_account_missing_a_verb_fails_naming_it():
    """FAKE cluster (FakeKubernetesApi) whose authorizer refuses the InferenceService patch."""

    def access(attributes, user):
        return not (attributes["resource"] == "inferenceservices" and attributes["verb"] == "patch")

    check = _check(healthy(access=access), "service account permissions")
    assert check.status == "fail"
    assert "patch inferenceservices.serving.kserve.io" in check.detail
    assert "kubeflow/invmon-pipeline" in check.detail
    assert "manifests/single-user" in check.fix


def test_the_permission_check_asks_for_every_needed_verb_as_the_run_account():
    """FAKE cluster (FakeKubernetesApi) recording the SubjectAccessReviews it answers."""
    fake = healthy()
    settings = _gpu(tune_backend="katib")
    assert _check(fake, "service account permissions", settings).status == "pass"
    asked = {
        (
            r["resourceAttributes"]["group"],
            r["resourceAttributes"]["resource"],
            r["resourceAttributes"]["verb"],
            r["resourceAttributes"].get("name"),
        )
        for r in fake.reviews
    }
    expected = permissions.grants(permissions.POD_NEEDS) | permissions.code_calls(trainjob=False)
    assert asked == expected
    assert {r["user"] for r in fake.reviews} == {"system:serviceaccount:kubeflow:invmon-pipeline"}


def test_a_caller_who_may_not_review_access_gets_a_skip_and_the_command():
    """FAKE cluster (FakeKubernetesApi) refusing SubjectAccessReviews (403): not a failure."""
    check = _check(
        healthy(forbidden_plurals=("subjectaccessreviews",)), "service account permissions"
    )
    assert check.status == "skip" and "kubectl auth can-i" in check.fix


@pytest.mark.parametrize(
    ("storage_class", "message"),
    [
        ("", "none chosen (the cluster's default is gp3)"),
        ("fast", "'fast' does not exist"),
        ("gp3", "gp3 (ebs.csi.aws.com) offers ReadWriteOnce only"),
    ],
)
def test_a_missing_or_rwo_only_storage_class_fails_listing_the_classes(storage_class, message):
    """FAKE cluster (FakeKubernetesApi) with an RWX class (shared) and an EBS default (gp3)."""
    settings = _workspace(storage_class=storage_class)
    check = _check(healthy(), "workspace storage class", settings)
    assert check.status == "fail" and message in check.detail
    assert "--workspace-storage-class" in check.fix


def test_an_existing_storage_class_passes_and_names_its_provisioner():
    """FAKE cluster (FakeKubernetesApi): an RWX class, and an RWO class asked for RWO."""
    check = _check(healthy(), "workspace storage class")
    assert check.status == "pass" and "efs.csi.aws.com" in check.detail
    assert "cannot be read from the API" in check.detail
    settings = _workspace(storage_class="gp3", access_modes=("ReadWriteOnce",))
    assert _check(healthy(), "workspace storage class", settings).status == "pass"


def test_missing_secrets_and_keys_fail_naming_them(tmp_path):
    """FAKE cluster (FakeKubernetesApi) holding only KFP's Secret; the compiled package names
    another Secret, and --secret a key KFP's Secret lacks."""
    package = tmp_path / "pipeline.yaml"
    package.write_text(
        yaml.safe_dump_all(
            [
                {"pipelineInfo": {"name": "x"}},
                {
                    "platforms": {
                        "kubernetes": {
                            "deploymentSpec": {
                                "executors": {
                                    "exec-train": {
                                        "secretAsEnv": [
                                            {
                                                "secretName": "invmon-s3",
                                                "keyToEnv": [
                                                    {
                                                        "secretKey": "AWS_ACCESS_KEY_ID",
                                                        "envVar": "AWS_ACCESS_KEY_ID",
                                                    }
                                                ],
                                            }
                                        ]
                                    }
                                }
                            }
                        }
                    }
                },
            ]
        )
    )
    settings = SETTINGS.replace(
        package=str(package), secrets=("mlpipeline-minio-artifact:accesskey,token",)
    )
    check = _check(healthy(), "secrets", settings)
    assert check.status == "fail"
    assert "invmon-s3 is missing" in check.detail
    assert "mlpipeline-minio-artifact has no key token" in check.detail
    assert "kubectl -n kubeflow create secret generic invmon-s3" in check.fix


def test_present_secrets_pass():
    """FAKE cluster (FakeKubernetesApi) holding KFP's Secret with both keys."""
    check = _check(healthy(), "secrets")
    assert check.status == "pass" and "mlpipeline-minio-artifact" in check.detail


@pytest.mark.parametrize(
    ("settings", "node", "message"),
    [
        (
            _gpu(gpu_node_selector={"pool": "a100"}),
            _node("gpu-1"),
            "no label pool=a100",
        ),
        (_gpu(gpu_tolerations=()), _node("gpu-1"), "taint nvidia.com/gpu:NoSchedule"),
        (_gpu(gpus=16, train_launcher="trainjob"), _node("gpu-1"), "no node has 16 allocatable"),
        (SETTINGS, _node("gpu-1", gpus="0"), "no node has 1 allocatable"),
    ],
    ids=["selector", "toleration", "too-few-gpus", "no-device-plugin"],
)
def test_gpu_nodes_the_pool_cannot_reach_fail(settings, node, message):
    """FAKE cluster (FakeKubernetesApi) whose one GPU node the compiled pool does not reach."""
    fake = healthy()
    fake.objects.pop(("nodes", "", "gpu-1"))
    fake.add("nodes", node)
    check = _check(fake, "GPU nodes", settings)
    assert check.status == "fail" and message in check.detail, check.detail
    assert "--gpu-node-selector" in check.fix


def test_a_reachable_gpu_node_passes():
    """FAKE cluster (FakeKubernetesApi) with one tainted, labelled node of 8 GPUs."""
    check = _check(healthy(), "GPU nodes")
    assert check.status == "pass" and "gpu-1" in check.detail and "cpu-1" not in check.detail


def test_a_control_plane_namespace_fails_as_kserve_would_not_inject():
    """FAKE cluster (FakeKubernetesApi) whose kubeflow namespace carries control-plane, as the
    Kubeflow manifests label it: KServe's storage initializer would not be injected."""
    fake = healthy()
    fake.objects[("namespaces", "", NAMESPACE)]["metadata"]["labels"]["control-plane"] = "kubeflow"
    check = _check(fake, "namespace labels")
    assert check.status == "fail" and "storage initializer is not injected" in check.detail
    assert "control-plane-" in check.fix


def test_katib_needs_its_injection_label_only_when_compiled_in():
    """FAKE cluster (FakeKubernetesApi) whose namespace lacks Katib's injection label."""
    fake = healthy()
    fake.objects[("namespaces", "", NAMESPACE)]["metadata"]["labels"] = {}
    assert _check(fake, "namespace labels").status == "pass"
    check = _check(healthy(), "namespace labels")
    assert check.status == "pass"
    fake = healthy()
    fake.objects[("namespaces", "", NAMESPACE)]["metadata"]["labels"] = {}
    check = _check(fake, "namespace labels", _gpu(tune_backend="katib"))
    assert check.status == "fail" and "metrics-collector-injection" in check.fix


def _kubeconfig(tmp_path, url: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "me"}},
                    {"name": "other", "context": {"cluster": "fake", "user": "me"}},
                ],
                "current-context": "other",
            }
        )
    )
    return str(path)


def test_the_command_reads_the_kubeconfig_and_exits_1_on_a_failure(tmp_path, capsys):
    """FAKE cluster (FakeKubernetesApi) behind a kubeconfig; one check fails (no storage class
    chosen), so invmon doctor prints the table and exits 1."""
    from invmon.cli import main

    with healthy() as fake:
        config = _kubeconfig(tmp_path, fake.url)
        code = main(["doctor", "--kubeconfig", config, "--context", "fake"])
        out = capsys.readouterr()
        assert code == 1
        assert "FAIL  workspace storage class" in out.out and "fix: compile with" in out.out
        assert "1 check(s) failed: workspace storage class" in out.err
        args = ["doctor", "--kubeconfig", config, "--workspace-storage-class", "shared"]
        assert main(args) == 0
        assert "FAIL" not in capsys.readouterr().out


def test_doctor_help_lists_the_options(capsys):
    from invmon.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--kubeconfig", "--context", "--namespace", "--workspace-storage-class"):
        assert option in text


def test_a_missing_kubeconfig_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--kubeconfig"):
        run(DoctorSettings(kubeconfig=str(tmp_path / "nope")))


def test_doctor_defaults_are_the_compile_defaults():
    """The doctor's options describe a compile: same defaults as invmon compile's, and the same
    ServiceAccounts as invmon submit's."""
    from invmon.pipelines.compile import ClusterSettings
    from invmon.pipelines.submit import SERVICE_ACCOUNTS
    from invmon.stages import doctor

    # Both nest the one definition of the GPU pool and the workspace, so every option (flag,
    # default, check) is compile's: equal defaults follow, and the flags are the same.
    for name, cls in (("gpu", GpuPool), ("workspace", WorkspaceSettings)):
        assert kind_of(DoctorSettings, field_named(DoctorSettings, name)).base is cls
        assert kind_of(ClusterSettings, field_named(ClusterSettings, name)).base is cls
    assert doctor.SERVICE_ACCOUNTS == SERVICE_ACCOUNTS
    assert DOCTOR.settings is DoctorSettings


def test_an_unreachable_api_server_is_a_clear_failure(tmp_path):
    """No server at all behind the kubeconfig (a closed loopback port): one line, no traceback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _kubeconfig(tmp_path, f"http://127.0.0.1:{port}")
    with pytest.raises(RuntimeError, match="cannot reach the Kubernetes API"):
        run(SETTINGS.replace(kubeconfig=config))


def test_the_version_is_the_controllers_not_a_sidecars():
    """FAKE cluster (FakeKubernetesApi) whose KServe Deployment runs kube-rbac-proxy first, as
    KServe before 0.15 did; an image without a version tag is a skip, not a pass."""
    fake = healthy()
    deployment = fake.objects[("deployments", "kserve", "kserve-controller-manager")]
    deployment["spec"]["template"]["spec"]["containers"] = [
        {"name": "kube-rbac-proxy", "image": "quay.io/brancz/kube-rbac-proxy:v0.18.0"},
        {"name": "manager", "image": "kserve/kserve-controller:v0.14.1"},
    ]
    check = _check(fake, "KServe version")
    assert check.status == "fail" and check.detail.startswith("0.14.1")
    fake = healthy()
    deployment = fake.objects[("deployments", "kserve", "kserve-controller-manager")]
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = (
        "kserve/kserve-controller:latest"
    )
    assert _check(fake, "KServe version").status == "skip"
