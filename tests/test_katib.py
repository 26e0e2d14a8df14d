"""Tune's Katib backend: the Experiment (checked against the kubeflow package's typed Katib models),
its trial command wired to the train command's flags, the train command's real stdout read the way
Katib's StdOut collector reads it, and the create/wait logic against a FAKE Kubernetes API server.
"""

import csv
import json
import re
import shlex
import subprocess
import sys

import pytest
import yaml
from support.fake_kubernetes import FakeKubernetesApi, custom_objects_api, fake_kubernetes_server

from invmon.cli import build_parser, main
from invmon.cluster import katib
from invmon.cluster.placement import PodPlacement
from invmon.cluster.volumes import PodVolumes
from invmon.training.config import TrainConfig
from invmon.training.search import ALGORITHMS, Parameter, SearchSpec, default_parameters

# Katib's default StdOut metrics collector filter (BRIEF section 5).
KATIB_FILTER = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")

SETTINGS = katib.TrialSettings(
    data="s3://ml-data/shards",
    image="registry.example.com/invmon-train:1",
    namespace="team-a",
    endpoint_url="http://minio.kubeflow:9000",
    placement=PodPlacement(gpus=2, s3_secret="invmon-s3", service_account="trainer"),
)


def katib_collect(log_text: str, metrics: list[str]) -> list[tuple[str, str, str]]:
    """Katib's text-format collector (file-metricscollector.go, parseLogsInTextFormat) in Python:
    lines mentioning a metric name, an optional leading RFC 3339 timestamp, then every match of
    the default filter whose name is one of ``metrics``. Returns (timestamp, name, value)."""
    found = []
    for line in log_text.split("\n"):
        if not any(m in line for m in metrics):
            continue
        first, _, _ = line.partition(" ")
        stamp = first if RFC3339.fullmatch(first) else "0001-01-01T00:00:00Z"
        for match in KATIB_FILTER.finditer(line):
            name, value = match.group(1).strip(), match.group(2).strip()
            if name in metrics:
                found.append((stamp, name, value))
    return found


def substitute(command: list[str], values: dict) -> list[str]:
    """What Katib does to the trial template: replace ${trialParameters.NAME}."""
    text = shlex.join(command)
    for name, value in values.items():
        text = text.replace(f"${{trialParameters.{name}}}", str(value))
    return shlex.split(text)


def parsed_train_config(command: list[str]) -> TrainConfig:
    """The TrainConfig the real ``invmon train`` parser builds from a trial's command."""
    assert command[:2] == ["invmon", "train"]
    args = build_parser().parse_args(command[1:])
    return args.command_object.settings_from(args).config()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(("objective", "stopping"), [("accuracy", "median"), ("val_loss", "none")])
def test_experiment_is_accepted_by_the_typed_katib_models(algorithm, objective, stopping):
    spec = SearchSpec(
        parameters=default_parameters(8),
        algorithm=algorithm,
        objective_metric=objective,
        early_stopping=stopping,
        max_trials=12,
        parallel_trials=3,
        max_failed_trials=2,
    )
    manifest = katib.render_experiment("counts-search", spec, TrainConfig(), SETTINGS)
    experiment = katib.check_experiment(manifest)
    s = experiment.spec
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1beta1", "Experiment")
    assert s.algorithm.algorithm_name == algorithm
    assert (s.max_trial_count, s.parallel_trial_count, s.max_failed_trial_count) == (12, 3, 2)
    assert s.objective.objective_metric_name == objective
    assert s.objective.type == ("maximize" if objective == "accuracy" else "minimize")
    assert s.metrics_collector_spec.collector.kind == "StdOut"
    assert (s.early_stopping is not None) == (stopping == "median")
    if stopping == "median":
        assert s.early_stopping.algorithm_name == "medianstop"
    assert {p.name for p in s.parameters} == {"lr", "batch_size", "epochs"}
    # The same dict comes back out of the typed models: nothing was dropped or renamed.
    assert experiment.to_dict() == manifest


def test_trial_parameters_are_wired_to_the_train_commands_flags():
    spec = SearchSpec(
        parameters=[
            *default_parameters(6),
            Parameter("label_smoothing", "double", 0.0, 0.2),
            Parameter("weight_decay", "double", 1e-6, 1e-3, log_scale=True),
        ],
        algorithm="tpe",
    )
    base = TrainConfig(class_weights="balanced", early_stopping_patience=2, seed=7)
    manifest = katib.render_experiment("wired", spec, base, SETTINGS)
    template = manifest["spec"]["trialTemplate"]
    container = template["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    assert template["primaryContainerName"] == container["name"]
    assert {p["name"] for p in template["trialParameters"]} == {p.name for p in spec.parameters}
    values = {
        "lr": "0.00123",
        "batch_size": "64",
        "epochs": "5",
        "label_smoothing": "0.05",
        "weight_decay": "0.0001",
    }
    config = parsed_train_config(substitute(container["command"], values))
    assert config == base.replace(
        lr=0.00123, batch_size=64, epochs=5, label_smoothing=0.05, weight_decay=0.0001
    )
    args = build_parser().parse_args(substitute(container["command"], values)[1:])
    assert args.data == SETTINGS.data and args.endpoint_url == SETTINGS.endpoint_url


def test_trial_pod_runs_non_root_on_the_gpu_pool_with_credentials_by_reference():
    manifest = katib.render_experiment("pods", SearchSpec(), TrainConfig(), SETTINGS)
    job = manifest["spec"]["trialTemplate"]["trialSpec"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == SETTINGS.image
    assert container["resources"] == {
        "limits": {"nvidia.com/gpu": "2"},
        "requests": {"ephemeral-storage": "8Gi"},
    }
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["serviceAccountName"] == "trainer"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    assert refs == {"AWS_ACCESS_KEY_ID": "invmon-s3", "AWS_SECRET_ACCESS_KEY": "invmon-s3"}
    assert job["spec"]["backoffLimit"] == 0


def test_grid_tries_the_same_points_as_the_local_grid():
    spec = SearchSpec(parameters=default_parameters(10), algorithm="grid")
    manifest = katib.render_experiment("grid", spec, TrainConfig(), SETTINGS)
    spaces = {p["name"]: p["feasibleSpace"]["list"] for p in manifest["spec"]["parameters"]}
    for parameter in spec.parameters:
        assert [parameter.parse(v) for v in spaces[parameter.name]] == pytest.approx(
            parameter.grid()
        )


def test_a_misspelt_field_is_refused_naming_it():
    manifest = katib.render_experiment("typo", SearchSpec(), TrainConfig(), SETTINGS)
    manifest["spec"]["maxTrialCounts"] = 3
    with pytest.raises(ValueError, match=r"\$\.spec\.maxTrialCounts: not a field"):
        katib.check_experiment(manifest)
    manifest = katib.render_experiment("typo", SearchSpec(), TrainConfig(), SETTINGS)
    manifest["spec"]["objective"]["metricStrategies"][0]["strategy"] = "max"
    with pytest.raises(ValueError, match="metricStrategies"):
        katib.check_experiment(manifest)


def test_trials_read_the_dataset_in_the_runs_workspace_read_only():
    """With the run's workspace PVC, each trial mounts it read-only where the KFP tasks see it
    and trains on the shards in place; /dev/shm and /tmp are volumes, /tmp requested as
    ephemeral storage."""
    volumes = PodVolumes(workspace_claim="run-42-kfp-workspace", shm_size="6Gi")
    settings = katib.TrialSettings(
        data="/kfp-workspace/shards", image=SETTINGS.image, namespace="team-a", volumes=volumes
    )
    manifest = katib.render_experiment("ws", SearchSpec(), TrainConfig(), settings)
    pod = manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "6Gi"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "8Gi"}},
        {
            "name": "workspace",
            "persistentVolumeClaim": {"claimName": "run-42-kfp-workspace", "readOnly": True},
        },
    ]
    assert container["volumeMounts"] == [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": "/tmp"},
        {"name": "workspace", "mountPath": "/kfp-workspace", "readOnly": True},
    ]
    assert container["resources"]["requests"] == {"ephemeral-storage": "8Gi"}
    values = {"lr": "0.001", "batch_size": "32", "epochs": "2"}
    args = build_parser().parse_args(substitute(container["command"], values)[1:])
    assert args.data == "/kfp-workspace/shards"
    assert args.out.startswith("/tmp/")  # the trial's model goes to the /tmp volume


def test_experiment_manifest_keeps_a_workspace_path_and_names_by_claim(monkeypatch):
    volumes = PodVolumes(workspace_claim="run-1-kfp-workspace")
    first = katib.experiment_manifest(
        "/kfp-workspace/shards",
        "/out",
        SearchSpec(),
        TrainConfig(),
        namespace="a",
        volumes=volumes,
    )
    container = first["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["command"][container["command"].index("--data") + 1] == (
        "/kfp-workspace/shards"
    )
    other = katib.experiment_manifest(
        "/kfp-workspace/shards",
        "/out",
        SearchSpec(),
        TrainConfig(),
        namespace="a",
        volumes=PodVolumes(workspace_claim="run-2-kfp-workspace"),
    )
    assert first["metadata"]["name"] != other["metadata"]["name"]


def test_data_outside_the_mounted_workspace_is_refused():
    volumes = PodVolumes(workspace_claim="run-1-kfp-workspace")
    with pytest.raises(ValueError, match=r"'/elsewhere/shards'.*--workspace-claim"):
        katib.TrialSettings(data="/elsewhere/shards", volumes=volumes)
    with pytest.raises(ValueError, match="run name '': the workspace PVC"):
        from invmon.cluster.volumes import workspace_claim

        workspace_claim("")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": "/local/shards"}, "s3://"),
        ({"name": "Bad_Name"}, "experiment name"),
        ({"early_stopping": "hyperband"}, "hyperband"),
    ],
)
def test_bad_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        settings = katib.TrialSettings(data=change.get("data", SETTINGS.data))
        spec = SearchSpec(early_stopping=change.get("early_stopping", "none"))
        katib.render_experiment(change.get("name", "ok"), spec, TrainConfig(), settings)


def test_dry_run_prints_the_experiment_yaml(capsys):
    code = main(
        [
            "tune",
            "--backend",
            "katib",
            "--dry-run",
            "--data",
            "s3://ml-data/shards",
            "--out",
            "unused",
            "--trials",
            "6",
            "--algorithm",
            "bayesianoptimization",
            "--early-stopping",
            "median",
            "--label-smoothing",
            "0.1",
        ]
    )
    assert code == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    experiment = katib.check_experiment(manifest)
    assert experiment.spec.max_trial_count == 6
    command = experiment.spec.trial_template.trial_spec["spec"]["template"]["spec"]["containers"]
    config = parsed_train_config(
        substitute(command[0]["command"], {"lr": "0.001", "batch_size": "32", "epochs": "4"})
    )
    assert config.label_smoothing == 0.1 and config.epochs == 4


# -- the train command's stdout, as Katib's collector reads it --------------------------------


def test_train_stdout_yields_the_metrics_katib_collects(shards_dir, tmp_path):
    """Run the real ``invmon train`` and read its combined stdout/stderr (Katib's sidecar writes
    both to one file) with Katib's collector logic and default filter."""
    out = tmp_path / "model"
    command = ["train", "--data", str(shards_dir), "--out", str(out), "--epochs", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "invmon.cli", *command, "--batch-size", "32", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout
    history = json.loads((out / "history.json").read_text())["history"]
    metrics = ["accuracy", "val_loss", "loss", "epoch"]
    collected = katib_collect(result.stdout, metrics)
    by_name = {m: [float(v) for _, n, v in collected if n == m] for m in metrics}
    assert by_name["epoch"] == [1, 2]
    assert by_name["accuracy"] == pytest.approx([e["accuracy"] for e in history], abs=1e-4)
    assert by_name["val_loss"] == pytest.approx([e["val_loss"] for e in history], abs=1e-4)
    assert by_name["loss"] == pytest.approx([e["loss"] for e in history], abs=1e-4)
    # Every observation carries the line's own timestamp (medianstop orders by it).
    assert all(stamp != "0001-01-01T00:00:00Z" for stamp, _, _ in collected)


# -- create and wait, against a FAKE Kubernetes API server -------------------------------------


def _experiment(spec: SearchSpec) -> dict:
    return katib.render_experiment("search-1", spec, TrainConfig(), SETTINGS)


def _trial(name: str, state: str, lr: str, batch: str, epochs: str, accuracy: str, ran: str):
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Trial",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "labels": {katib.EXPERIMENT_LABEL: "search-1"},
            "creationTimestamp": f"2026-01-05T10:0{name[-1]}:00Z",
        },
        "spec": {
            "parameterAssignments": [
                {"name": "lr", "value": lr},
                {"name": "batch_size", "value": batch},
                {"name": "epochs", "value": epochs},
            ]
        },
        "status": {
            "conditions": [{"type": state, "status": "True"}],
            "observation": {
                "metrics": [
                    {"name": "accuracy", "latest": accuracy, "max": accuracy, "min": "0.2"},
                    {"name": "epoch", "latest": ran, "max": ran, "min": "1"},
                ]
            },
        },
    }


def _succeed_on_third_read(obj: dict, reads: int) -> None:
    if reads == 1:
        obj["status"] = {"conditions": [{"type": "Running", "status": "True"}], "trialsRunning": 2}
    elif reads >= 3:
        obj["status"] = {
            "conditions": [
                {"type": "Running", "status": "False"},
                {"type": "Succeeded", "status": "True", "reason": "ExperimentMaxTrialsReached"},
            ],
            "trialsSucceeded": 2,
            "trialsEarlyStopped": 1,
            "currentOptimalTrial": {
                "bestTrialName": "search-1-b",
                "parameterAssignments": [
                    {"name": "lr", "value": "0.0011"},
                    {"name": "batch_size", "value": "32"},
                    {"name": "epochs", "value": "6"},
                ],
                "observation": {
                    "metrics": [{"name": "accuracy", "latest": "0.8", "max": "0.83", "min": "0.3"}]
                },
            },
        }


def test_wait_writes_best_json_in_the_local_backends_shape(tmp_path):
    fake = FakeKubernetesApi(controller=_succeed_on_third_read)
    fake.add("trials", _trial("search-1-a", "EarlyStopped", "0.002", "16", "8", "0.41", "2"))
    fake.add("trials", _trial("search-1-b", "Succeeded", "0.0011", "32", "6", "0.83", "6"))
    fake.add("trials", _trial("search-1-c", "Succeeded", "0.0004", "64", "5", "0.7", "5"))
    spec = SearchSpec(parameters=default_parameters(8), early_stopping="median")
    sleeps = []
    with fake_kubernetes_server(fake) as url:
        result = katib.run_experiment(
            _experiment(spec), tmp_path, spec, api=custom_objects_api(url), sleep=sleeps.append
        )
    assert ("POST", "/apis/kubeflow.org/v1beta1/namespaces/team-a/experiments") in fake.requests
    assert len(sleeps) == 2  # polled three times
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["parameters"] == {"lr": 0.0011, "batch_size": 32, "epochs": 6}
    assert isinstance(best["parameters"]["batch_size"], int)
    assert best["objective"] == {"metric": "accuracy", "value": 0.83}
    assert result.trial_epochs == 2 + 6 + 5 and result.pruned == 1
    with open(tmp_path / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["state"] for r in rows] == ["EarlyStopped", "Succeeded", "Succeeded"]
    assert json.loads((tmp_path / "search_space.json").read_text())["maxTrialCount"] == 4


def test_a_failed_experiment_raises_with_katibs_reason(tmp_path):
    def fail(obj, reads):
        obj["status"] = {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "ExperimentMaxFailedTrialsReached",
                    "message": "Experiment has failed because max failed count has reached",
                }
            ]
        }

    fake = FakeKubernetesApi(controller=fail)
    spec = SearchSpec()
    with fake_kubernetes_server(fake) as url, pytest.raises(RuntimeError) as err:
        katib.run_experiment(_experiment(spec), tmp_path, spec, api=custom_objects_api(url))
    assert "ExperimentMaxFailedTrialsReached" in str(err.value)
    assert not (tmp_path / "best.json").exists()


def test_waiting_times_out(tmp_path):
    fake = FakeKubernetesApi(controller=lambda obj, reads: None)
    spec = SearchSpec()
    with fake_kubernetes_server(fake) as url, pytest.raises(TimeoutError, match="search-1"):
        katib.run_experiment(
            _experiment(spec), tmp_path, spec, api=custom_objects_api(url), timeout=0.2, poll=0.05
        )


def test_an_existing_experiment_is_followed_not_recreated(tmp_path):
    """A retried tune task finds its Experiment already there and waits for it."""
    fake = FakeKubernetesApi(controller=_succeed_on_third_read)
    spec = SearchSpec(parameters=default_parameters(8))
    manifest = _experiment(spec)
    fake.add("experiments", json.loads(json.dumps(manifest)))
    with fake_kubernetes_server(fake) as url:
        result = katib.run_experiment(
            manifest, tmp_path, spec, api=custom_objects_api(url), sleep=lambda s: None
        )
    assert result.best_parameters["epochs"] == 6
    assert len([r for r in fake.requests if r[0] == "POST"]) == 1


# -- S3 credentials and endpoint of the trial pods, by default --------------------------------


def _trial_env_and_command(data_uri: str, **pods) -> tuple[dict, list[str]]:
    """The trial container's S3 env (variable -> (Secret, key)) and command, as tune's katib
    dry run renders them for data at ``data_uri`` (what the pipeline's tune component passes)."""
    from invmon.cluster.placement import PodOptions
    from invmon.stages import tune

    settings = tune.TuneSettings(
        data="/tmp/shards",
        out="unused",
        backend="katib",
        katib=tune.KatibOptions(
            name="creds", pods=PodOptions(namespace="team-a", **pods), dry_run=True
        ),
        data_uri=data_uri,
    )
    manifest = tune.run(settings)
    katib.check_experiment(manifest)
    container = manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
    }
    return env, container["command"]


def test_trials_reading_kfps_object_store_get_its_secret_and_endpoint_by_default():
    """KFP's object store Secret (mlpipeline-minio-artifact) holds accesskey/secretkey; the trial
    gets them under the AWS SDK's names, and the store's endpoint is SeaweedFS (KFP >= 2.16)."""
    env, command = _trial_env_and_command("minio://mlpipeline/v2/artifacts/run/shards")
    assert env == {
        "AWS_ACCESS_KEY_ID": ("mlpipeline-minio-artifact", "accesskey"),
        "AWS_SECRET_ACCESS_KEY": ("mlpipeline-minio-artifact", "secretkey"),
    }
    assert command[command.index("--endpoint-url") + 1] == "http://seaweedfs.kubeflow:9000"
    assert command[command.index("--data") + 1] == "s3://mlpipeline/v2/artifacts/run/shards"


def test_trials_reading_s3_get_the_projects_secret_by_default():
    env, command = _trial_env_and_command("s3://my-bucket/pipelines/run/shards")
    assert env == {
        "AWS_ACCESS_KEY_ID": ("invmon-s3", "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": ("invmon-s3", "AWS_SECRET_ACCESS_KEY"),
    }
    assert "--endpoint-url" not in command


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("none", {}),
        (
            "store-creds:id:key",
            {
                "AWS_ACCESS_KEY_ID": ("store-creds", "id"),
                "AWS_SECRET_ACCESS_KEY": ("store-creds", "key"),
            },
        ),
        (
            "mlpipeline-minio-artifact",
            {
                "AWS_ACCESS_KEY_ID": ("mlpipeline-minio-artifact", "accesskey"),
                "AWS_SECRET_ACCESS_KEY": ("mlpipeline-minio-artifact", "secretkey"),
            },
        ),
    ],
)
def test_a_given_secret_and_keys_win(given, expected):
    env, _ = _trial_env_and_command("minio://mlpipeline/v2/artifacts/run/shards", s3_secret=given)
    assert env == expected


def test_the_object_store_endpoint_can_be_overridden():
    from invmon.stages import tune

    settings = tune.TuneSettings(
        data="/tmp/shards",
        out="unused",
        backend="katib",
        endpoint_url="http://minio-service.kubeflow:9000",  # KFP <= 2.15
        katib=tune.KatibOptions(name="old-kfp", dry_run=True),
        data_uri="minio://mlpipeline/v2/artifacts/run/shards",
    )
    command = tune.run(settings)["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    assert command[command.index("--endpoint-url") + 1] == "http://minio-service.kubeflow:9000"


@pytest.mark.parametrize("text", ["Bad_Name", "creds:only-one-key", "creds:a:b:c", "creds:a b:c"])
def test_a_bad_secret_is_named(text):
    from invmon.cluster.placement import PodOptions

    with pytest.raises(ValueError, match=re.escape(repr(text))):
        PodOptions(s3_secret=text)


# -- CPU and memory of the trial pods, and trials that never start (issue 22) -------------------


def test_trial_pods_request_cpu_and_memory_from_the_pod_options():
    """Without requests a Profile's ResourceQuota refuses the trial pods (and the wait would run
    for a day); ``--resources`` sets them, with a default."""
    from invmon.cluster.placement import PodOptions

    for options, cpu, memory in (
        (PodOptions(gpus=2, resources="cpu=2/6,memory=12Gi/24Gi"), ("2", "6"), ("12Gi", "24Gi")),
        (PodOptions(), ("4", "8"), ("16Gi", "32Gi")),
    ):
        settings = katib.TrialSettings(
            data="s3://ml-data/shards", placement=options.placement("s3://ml-data/shards")
        )
        manifest = katib.render_experiment("pods", SearchSpec(), TrainConfig(), settings)
        job = manifest["spec"]["trialTemplate"]["trialSpec"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"] == {
            "cpu": cpu[0],
            "memory": memory[0],
            "ephemeral-storage": "8Gi",
        }
        assert container["resources"]["limits"] == {
            "cpu": cpu[1],
            "memory": memory[1],
            "nvidia.com/gpu": str(options.gpus),
        }
    with pytest.raises(ValueError, match="above --shm-size"):
        PodOptions(resources="cpu=1,memory=2Gi", shm_size="4Gi")
    with pytest.raises(ValueError, match="both cpu= and memory= are required"):
        PodOptions(resources="cpu=1")


class FakeClock:
    """Time that passes only when the code under test sleeps (no real waiting in tests)."""

    def __init__(self):
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


SCHEDULER = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes"


def test_a_trial_pod_that_stays_unschedulable_fails_the_wait_naming_the_scheduler(tmp_path):
    """Against the FAKE Kubernetes API: the Experiment keeps running while its trial pod waits
    for a GPU the quota does not allow; the wait fails after the set time, not after a day, and
    names the pod and the scheduler's message. Another Experiment's pod is not ours."""
    from support.fake_kubernetes import pod

    from invmon.cluster.scheduling import POD_GROUP_LABEL, PodsUnschedulable

    spec = SearchSpec()
    manifest = _experiment(spec)
    template = manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]
    assert template["metadata"]["labels"] == {POD_GROUP_LABEL: "search-1"}
    running = {"conditions": [{"type": "Running", "status": "True"}], "trialsRunning": 1}
    fake = FakeKubernetesApi(controller=lambda obj, reads: obj.update(status=running))
    ours = template["metadata"]["labels"]
    fake.add("pods", pod("search-1-abc-x7k", "team-a", ours, unschedulable=SCHEDULER))
    fake.add("pods", pod("search-1-def-q2m", "team-a", ours))
    fake.add("pods", pod("other-1-x", "team-a", {POD_GROUP_LABEL: "other"}, unschedulable="no"))
    clock = FakeClock()
    with fake_kubernetes_server(fake) as url, pytest.raises(PodsUnschedulable) as err:
        katib.run_experiment(
            manifest,
            tmp_path,
            spec,
            api=custom_objects_api(url),
            poll=30,
            sleep=clock.sleep,
            clock=clock,
            unschedulable_timeout=600,
        )
    assert clock.now == 600  # failed at the limit, not after the 24 h timeout
    assert "team-a/search-1-abc-x7k" in str(err.value) and SCHEDULER in str(err.value)
    assert "Katib Experiment team-a/search-1" in str(err.value)
    listed = [p for m, p in fake.requests if p == "/api/v1/namespaces/team-a/pods"]
    assert len(listed) == 21  # every poll, at 0, 30, ..., 600 s


def test_a_pod_that_gets_scheduled_stops_counting(tmp_path):
    """A pod that waits for a while and then starts (a node scaled up) does not fail the wait."""
    from support.fake_kubernetes import pod

    from invmon.cluster.scheduling import POD_GROUP_LABEL

    spec = SearchSpec(parameters=default_parameters(8))
    labels = {POD_GROUP_LABEL: "search-1"}
    clock = FakeClock()
    fake = FakeKubernetesApi()
    fake.add("pods", pod("search-1-a", "team-a", labels, unschedulable=SCHEDULER))

    def controller(obj, reads):
        if reads == 15:  # 420 s in: the cluster autoscaler found a node
            fake.objects[("pods", "team-a", "search-1-a")] = pod("search-1-a", "team-a", labels)
        if reads == 30:  # unschedulable again later: counted from zero
            fake.objects[("pods", "team-a", "search-1-a")] = pod(
                "search-1-a", "team-a", labels, unschedulable=SCHEDULER
            )
        if reads < 45:
            obj["status"] = {"conditions": [{"type": "Running", "status": "True"}]}
        else:
            _succeed_on_third_read(obj, 3)

    fake.controller = controller
    fake.add("trials", _trial("search-1-b", "Succeeded", "0.0011", "32", "6", "0.83", "6"))
    with fake_kubernetes_server(fake) as url:
        katib.run_experiment(
            _experiment(spec),
            tmp_path,
            spec,
            api=custom_objects_api(url),
            poll=30,
            sleep=clock.sleep,
            clock=clock,
            unschedulable_timeout=600,
        )
    assert clock.now == 44 * 30
