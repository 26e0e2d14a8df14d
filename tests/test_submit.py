"""invmon submit: typed parameters, the install mode's namespace and ServiceAccount, and a run
created through the real kfp.Client over HTTP.

No Kubeflow Pipelines API server can run here, so the client talks to FakeKfpApiServer, a small
FAKE HTTP server on loopback that answers the three endpoints a submission uses (healthz reports
single-user or multi-user as the test says) and records them.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from invmon.cluster.container_images import ImageSet
from invmon.pipelines.cluster_settings import ClusterSettings
from invmon.pipelines.submit import SUBMIT, parse_params, submit


class FakeKfpApiServer:
    """A fake KFP v2beta1 REST API: healthz, experiments, runs. Records what it was sent."""

    def __init__(self, multi_user: bool = False):
        self.requests: list[tuple[str, str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                fake.requests.append(("GET", self.path, {}))
                if self.path.startswith("/apis/v2beta1/healthz"):
                    self._answer({"multi_user": multi_user})
                elif self.path.startswith("/apis/v2beta1/experiments"):
                    self._answer({"experiments": [], "total_size": 0})
                else:
                    self.send_error(404)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(("POST", self.path, body))
                if self.path == "/apis/v2beta1/experiments":
                    self._answer({"experiment_id": "exp-1", "display_name": body["display_name"]})
                elif self.path.startswith("/apis/v2beta1/runs"):
                    self._answer(
                        {
                            "run_id": "run-42",
                            "display_name": body["display_name"],
                            "experiment_id": body["experiment_id"],
                        }
                    )
                else:
                    self.send_error(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posted(self, path: str) -> dict:
        return next(body for method, p, body in self.requests if method == "POST" and p == path)

    def close(self):
        self.server.shutdown()


@pytest.fixture
def kfp_api():
    server = FakeKfpApiServer()
    yield server
    server.close()


@pytest.fixture
def multi_user_kfp_api():
    server = FakeKfpApiServer(multi_user=True)
    yield server
    server.close()


def test_submit_creates_an_experiment_and_a_run_with_typed_parameters(kfp_api):
    run = submit(
        kfp_api.url,
        params=["classes=1-5", "trials=8", "anonymous=false"],
        experiment="audit",
        enable_caching=False,
        settings=ClusterSettings(images=ImageSet("registry.example/ml", "9.9")),
    )
    assert run.run_id == "run-42" and run.url.endswith("/#/runs/details/run-42")
    assert kfp_api.posted("/apis/v2beta1/experiments")["display_name"] == "audit"
    body = kfp_api.posted("/apis/v2beta1/runs")
    assert body["experiment_id"] == "exp-1"
    assert body["service_account"] == "invmon-pipeline"
    assert body["runtime_config"]["parameters"] == {
        "classes": "1-5",
        "trials": 8,
        "anonymous": False,
    }
    # With kubernetes settings, kfp sends the pipeline and platform specs side by side.
    spec = body["pipeline_spec"]["pipeline_spec"]
    platform = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    assert spec["pipelineInfo"]["name"] == "inventory-monitoring"
    assert "nodeSelector" in platform["deploymentSpec"]["executors"]["exec-train"]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert all(i.startswith("registry.example/ml/") and i.endswith(":9.9") for i in images)
    caching = {
        t.get("cachingOptions", {}).get("enableCache", False)
        for t in spec["root"]["dag"]["tasks"].values()
    }
    assert caching == {False}


def test_caching_stays_on_by_default(kfp_api):
    submit(kfp_api.url)
    spec = kfp_api.posted("/apis/v2beta1/runs")["pipeline_spec"]["pipeline_spec"]
    tasks = spec["root"]["dag"]["tasks"]
    # A ParallelFor is a DAG task without caching options of its own. Tasks that use the run's
    # workspace are never cached (their results point into it), nor is the release DAG, made of
    # such tasks; the others are, by default.
    containers = [t for n, t in tasks.items() if "parameterIterator" not in t and n != "release"]
    for task in containers:
        workspace = task["inputs"]["parameters"].get("workspace", {}).get("runtimeValue", {})
        uses_workspace = workspace.get("constant") == "{{$.workspace_path}}"
        assert task["cachingOptions"].get("enableCache", False) != uses_workspace, task
    assert tasks["plan-ingest"]["cachingOptions"]["enableCache"]


TYPES = {"trials": "NUMBER_INTEGER", "anonymous": "BOOLEAN", "source": "STRING"}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["trails=3"], "not a pipeline parameter"),
        (["trials=many"], "expected a integer"),
        (["anonymous=maybe"], "true or false"),
        (["source"], "NAME=VALUE"),
    ],
)
def test_bad_parameters_are_named(pairs, message):
    with pytest.raises(ValueError, match=message):
        parse_params(pairs, TYPES)


def test_token_must_come_from_a_set_variable(kfp_api, monkeypatch):
    monkeypatch.delenv("KFP_TEST_TOKEN", raising=False)
    with pytest.raises(ValueError, match="KFP_TEST_TOKEN"):
        submit(kfp_api.url, token_env="KFP_TEST_TOKEN")


def _queries(server: FakeKfpApiServer, prefix: str) -> list[str]:
    return [path for method, path, _ in server.requests if path.startswith(prefix)]


def _namespace(path: str) -> str:
    """The namespace a request's query names ("" when none or empty: all single-user knows)."""
    return parse_qs(urlparse(path).query, keep_blank_values=True).get("namespace", [""])[0]


def test_single_user_runs_in_kfps_namespace_as_the_projects_account(kfp_api):
    """The fake healthz says single-user: no namespace reaches the server, and the pods run as
    invmon-pipeline, which manifests/single-user creates in kubeflow."""
    run = submit(kfp_api.url)
    assert (run.install, run.namespace, run.service_account) == (
        "single-user",
        None,
        "invmon-pipeline",
    )
    assert kfp_api.posted("/apis/v2beta1/runs")["service_account"] == "invmon-pipeline"
    assert not kfp_api.posted("/apis/v2beta1/experiments").get("namespace")
    assert _queries(kfp_api, "/apis/v2beta1/healthz")
    listed = _queries(kfp_api, "/apis/v2beta1/experiments?")
    assert listed and all(_namespace(q) == "" for q in listed)


def test_multi_user_runs_in_the_profile_namespace_as_default_editor(multi_user_kfp_api):
    """The fake healthz says multi-user: the experiment and the run are the Profile's."""
    run = submit(multi_user_kfp_api.url, namespace="team-a")
    assert (run.install, run.namespace, run.service_account) == (
        "multi-user",
        "team-a",
        "default-editor",
    )
    assert multi_user_kfp_api.posted("/apis/v2beta1/runs")["service_account"] == "default-editor"
    assert multi_user_kfp_api.posted("/apis/v2beta1/experiments")["namespace"] == "team-a"
    listed = _queries(multi_user_kfp_api, "/apis/v2beta1/experiments?")
    assert listed and all(_namespace(q) == "team-a" for q in listed)


def test_a_given_service_account_and_install_mode_win(multi_user_kfp_api):
    run = submit(
        multi_user_kfp_api.url,
        namespace="team-a",
        service_account="ml-runner",
        install="multi-user",
    )
    assert run.service_account == "ml-runner"
    assert multi_user_kfp_api.posted("/apis/v2beta1/runs")["service_account"] == "ml-runner"


def test_a_namespace_on_single_user_is_refused_naming_why(kfp_api):
    with pytest.raises(ValueError, match=r"--namespace 'invmon': single-user .* \(kubeflow\)"):
        submit(kfp_api.url, namespace="invmon")
    assert not any(path.startswith("/apis/v2beta1/runs") for _, path, _ in kfp_api.requests)


def test_multi_user_needs_a_profile_namespace(multi_user_kfp_api, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no kfp context file naming a namespace
    with pytest.raises(ValueError, match="--namespace PROFILE is required"):
        submit(multi_user_kfp_api.url)


def test_the_command_line_takes_the_install_mode(kfp_api):
    from invmon.cli import build_parser

    args = build_parser().parse_args(["submit", "--host", kfp_api.url, "--install", "single-user"])
    settings = SUBMIT.settings_from(args)
    assert settings.install == "single-user" and settings.service_account == ""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "--host", kfp_api.url, "--install", "both"])


def _submit_settings(*options: str):
    from invmon.cli import build_parser

    return SUBMIT.settings_from(build_parser().parse_args(["submit", *options]))


def _cluster_for_submit():
    """The healthy FAKE cluster of tests/test_doctor.py (FakeKubernetesApi), plus the project's
    S3 Secret in case the compile names it."""
    from test_doctor import healthy

    fake = healthy()
    fake.add(
        "secrets",
        {
            "metadata": {"name": "invmon-s3", "namespace": "kubeflow"},
            "data": {"AWS_ACCESS_KEY_ID": "eA==", "AWS_SECRET_ACCESS_KEY": "eA=="},
        },
    )
    return fake


def test_submit_runs_the_preflight_and_refuses_a_cluster_that_fails_it(kfp_api):
    """FAKE KFP API and FAKE cluster (FakeKubernetesApi): no workspace storage class chosen, so
    the preflight fails with its table and no run is created."""
    from test_doctor import _api_client

    from invmon.pipelines.submit import run

    settings = _submit_settings("--host", kfp_api.url)
    with _cluster_for_submit() as fake, pytest.raises(RuntimeError) as failure:
        run(settings, api_client=_api_client(fake.url))
    assert "FAIL  workspace storage class" in str(failure.value)
    assert "--no-preflight" in str(failure.value)
    assert fake.reviews  # the run's ServiceAccount was checked
    assert not any(path.startswith("/apis/v2beta1/runs") for _, path, _ in kfp_api.requests)


def test_submit_starts_the_run_when_the_preflight_passes(kfp_api):
    """FAKE KFP API and FAKE cluster (FakeKubernetesApi) on which every check passes."""
    from test_doctor import _api_client

    from invmon.pipelines.submit import run

    settings = _submit_settings("--host", kfp_api.url, "--workspace-storage-class", "shared")
    with _cluster_for_submit() as fake:
        submitted = run(settings, api_client=_api_client(fake.url))
    assert submitted.run_id == "run-42"
    users = {review["user"] for review in fake.reviews}
    assert users == {"system:serviceaccount:kubeflow:invmon-pipeline"}


def test_no_preflight_skips_the_cluster(kfp_api, tmp_path):
    """FAKE KFP API; --no-preflight never reads a kubeconfig (none exists here)."""
    from invmon.pipelines.submit import run

    settings = _submit_settings(
        "--host",
        kfp_api.url,
        "--no-preflight",
        "--kubeconfig",
        str(tmp_path / "none"),
        "--workspace-storage-class",
        "shared",
    )
    assert run(settings).run_id == "run-42"


def test_without_a_preflight_submit_still_refuses_a_workspace_without_a_storage_class(kfp_api):
    """FAKE KFP API. The cluster's default class is ReadWriteOnce on EKS, GKE and AKS: a
    ReadWriteMany workspace there stays Pending, and the run with it, so the choice is explicit."""
    from invmon.pipelines.submit import run

    settings = _submit_settings("--host", kfp_api.url, "--no-preflight")
    with pytest.raises(ValueError, match="--workspace-storage-class") as refused:
        run(settings)
    assert "invmon doctor" in str(refused.value)
    assert not [r for r in kfp_api.requests if r[0] == "POST"]


def test_compile_without_a_storage_class_says_which_option_sets_it(tmp_path, capsys):
    from invmon.cli import main

    main(["compile", "--output", str(tmp_path / "p.yaml")])
    assert "--workspace-storage-class" in capsys.readouterr().out
    main(["compile", "--output", str(tmp_path / "q.yaml"), "--workspace-storage-class", "nfs"])
    assert "--workspace-storage-class" not in capsys.readouterr().out
