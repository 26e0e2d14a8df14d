"""What the compiled pipeline asks of a cluster: CPU and memory of every task, /dev/shm where a
DataLoader runs, where evaluate and audit run, which tasks are retried, and the shards that stay
in the run's workspace (read strictly from the compiled YAML and its kfp-kubernetes platform spec).
"""

from pathlib import Path

import pytest
import yaml

from invmon.cluster.gpu_pool import GpuPool
from invmon.cluster.placement import Resources
from invmon.pipelines.cluster_settings import ClusterSettings
from invmon.pipelines.compile import compile_pipeline

DATA = (
    "plan-ingest",
    "ingest",
    "merge-ingest",
    "arrange",
    "preprocess",
    "plan-audit",
    "merge-audit",
)
DATALOADERS = ("tune", "train", "evaluate", "audit")
RESOURCE_KEYS = {
    "resourceCpuRequest",
    "resourceCpuLimit",
    "resourceMemoryRequest",
    "resourceMemoryLimit",
    "cpuRequest",
    "cpuLimit",
    "memoryRequest",
    "memoryLimit",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")


def _tasks(path: Path) -> dict[str, tuple[dict, dict, dict]]:
    """Every container task by name: (the task, its executor's container, its platform spec)."""
    spec, platform = yaml.safe_load_all(path.read_text())
    executors = spec["deploymentSpec"]["executors"]
    platforms = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    found, dags = {}, [spec["root"]["dag"]]
    while dags:
        for name, task in dags.pop()["tasks"].items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                dags.append(component["dag"])
                continue
            label = component["executorLabel"]
            found[name] = (task, executors[label]["container"], platforms.get(label, {}))
    return found


def _expected(resources: Resources) -> dict:
    return {
        "resourceCpuRequest": resources.cpu,
        "resourceCpuLimit": resources.cpu_limit,
        "resourceMemoryRequest": resources.memory,
        "resourceMemoryLimit": resources.memory_limit,
    }


def _group(name: str) -> str:
    if name in DATA:
        return "data"
    if name in ("tune", "train"):
        return "gpu"
    groups = {"evaluate": "evaluate", "audit": "evaluate", "deploy": "control"}
    return {**groups, "register": "control"}[name]


def test_every_task_has_cpu_and_memory_requests_and_limits_of_its_group(compiled):
    settings = ClusterSettings()
    tasks = _tasks(compiled)
    assert set(tasks) == {*DATA, *DATALOADERS, "deploy", "register"}
    for name, (_, container, _) in tasks.items():
        resources = container["resources"]
        assert set(resources) >= RESOURCE_KEYS, name
        given = {k: v for k, v in resources.items() if k.startswith("resource")}
        assert given == _expected(settings.resources(_group(name))), name


def test_resources_are_compile_options(tmp_path):
    from invmon.cli import main

    out = tmp_path / "p.yaml"
    argv = ["compile", "--output", str(out), "--data-resources", "cpu=1/3,memory=2Gi/6Gi"]
    argv += ["--gpu-resources", "cpu=6,memory=40Gi/60Gi", "--shm-size", "12Gi"]
    assert main(argv) == 0
    tasks = _tasks(out)
    arrange = tasks["arrange"][1]["resources"]
    assert arrange["resourceCpuLimit"] == "3" and arrange["resourceMemoryRequest"] == "2Gi"
    train = tasks["train"][1]["resources"]
    assert (train["resourceCpuRequest"], train["resourceCpuLimit"]) == ("6", "6")
    assert train["resourceMemoryLimit"] == "60Gi"
    assert tasks["train"][2]["emptyDirMounts"][0]["sizeLimit"] == "12Gi"
    # Preprocess starts one decoding process per core of its CPU limit.
    parameters = tasks["preprocess"][0]["inputs"]["parameters"]
    assert parameters["workers"]["runtimeValue"]["constant"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu=2", "both cpu= and memory= are required"),
        ("cpu=2,memory=4Gi,gpu=1", "expected cpu=REQUEST"),
        ("cpu=two,memory=4Gi", "not a Kubernetes quantity"),
        ("cpu=4/2,memory=4Gi", "cpu request 4 is above its limit 2"),
    ],
)
def test_bad_resources_are_named(text, message):
    with pytest.raises(ValueError, match=f"--data-resources.*{message}"):
        ClusterSettings(data_resources=text).resources("data")


def test_shm_must_fit_under_the_memory_limit():
    with pytest.raises(ValueError, match="--gpu-resources: memory limit 8Gi must be above"):
        ClusterSettings(gpu_resources="cpu=4,memory=8Gi", shm_size="8Gi")


def test_dataloader_tasks_get_a_memory_backed_dev_shm(compiled):
    for name, (_, _, platform) in _tasks(compiled).items():
        mounts = platform.get("emptyDirMounts", [])
        if name in DATALOADERS:
            assert mounts == [
                {
                    "volumeName": "dshm",
                    "mountPath": "/dev/shm",
                    "medium": "Memory",
                    "sizeLimit": ClusterSettings().shm_size,
                }
            ], name
        else:
            assert mounts == [], name


def test_evaluate_and_audit_can_run_on_the_gpu_pool(compiled, tmp_path):
    default = _tasks(compiled)
    for name in ("evaluate", "audit"):
        assert "accelerator" not in default[name][1]["resources"]
        assert "nodeSelector" not in default[name][2]
    on_gpu = _tasks(compile_pipeline(tmp_path / "p.yaml", ClusterSettings(evaluate_on_gpu=True)))
    for name in ("evaluate", "audit"):
        _, container, platform = on_gpu[name]
        assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert container["resources"]["accelerator"]["resourceCount"] == "1"
        assert platform["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert platform["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]


def test_transient_tasks_are_retried(compiled, tmp_path):
    retried = {n for n, (task, _, _) in _tasks(compiled).items() if "retryPolicy" in task}
    assert retried == {"plan-ingest", "ingest", "deploy"}
    for name in retried:
        policy = _tasks(compiled)[name][0]["retryPolicy"]
        assert policy["maxRetryCount"] == 3 and policy["backoffDuration"] == "30s"
    cluster = ClusterSettings(gpu=GpuPool(tune_backend="katib", train_launcher="trainjob"))
    tasks = _tasks(compile_pipeline(tmp_path / "p.yaml", cluster))
    retried = {n for n, (task, _, _) in tasks.items() if "retryPolicy" in task}
    assert retried == {"plan-ingest", "ingest", "deploy", "tune", "train"}
    never = _tasks(compile_pipeline(tmp_path / "never.yaml", ClusterSettings(retries=0)))
    assert not [n for n, (task, _, _) in never.items() if "retryPolicy" in task]


def test_cluster_backends_wait_in_small_tasks_without_dev_shm(tmp_path):
    cluster = ClusterSettings(gpu=GpuPool(tune_backend="katib", train_launcher="trainjob"))
    tasks = _tasks(compile_pipeline(tmp_path / "p.yaml", cluster))
    for name in ("tune", "train"):
        _, container, platform = tasks[name]
        assert "emptyDirMounts" not in platform
        given = {k: v for k, v in container["resources"].items() if k.startswith("resource")}
        assert given == _expected(cluster.resources("control")), name
        parameters = tasks[name][0]["inputs"]["parameters"]
        assert parameters["shm_size"]["runtimeValue"]["constant"] == cluster.shm_size


def test_shards_stay_in_the_workspace_and_pods_find_its_claim(compiled, tmp_path):
    """Preprocess writes the shards into the workspace; tune, train and evaluate mount it and
    read them in place. Compiled for Katib and TrainJobs, tune and train also get the run's
    workflow name, which names the PVC their trials and nodes mount (kfp.local cannot resolve
    that placeholder, so the local backends do not get it)."""
    tasks = _tasks(compiled)
    for name in ("preprocess", "tune", "train", "evaluate", "audit", "deploy"):
        parameters = tasks[name][0]["inputs"]["parameters"]
        assert parameters["workspace"]["runtimeValue"]["constant"] == "{{$.workspace_path}}"
        assert "run_name" not in parameters
    cluster = ClusterSettings(gpu=GpuPool(tune_backend="katib", train_launcher="trainjob"))
    tasks = _tasks(compile_pipeline(tmp_path / "p.yaml", cluster))
    for name in ("tune", "train"):
        parameters = tasks[name][0]["inputs"]["parameters"]
        assert parameters["workspace"]["runtimeValue"]["constant"] == "{{$.workspace_path}}"
        assert parameters["run_name"]["runtimeValue"]["constant"] == (
            "{{$.pipeline_job_resource_name}}"
        )


# arrange reads recounts, evaluate the starting model, from S3 themselves too.
S3_READERS = ("plan-ingest", "ingest", "arrange", "tune", "train", "evaluate")


def _secret_env(platform: dict) -> list[tuple[str, dict[str, str]]]:
    return [
        (s["secretName"], {k["secretKey"]: k["envVar"] for k in s["keyToEnv"]})
        for s in platform.get("secretAsEnv", [])
    ]


def test_tasks_that_read_s3_themselves_get_the_object_stores_keys(compiled):
    """KFP puts no AWS variables in a task's pod: without these, the train task's boto3 (the
    TrainJob's model, an s3:// checkpoint or weights) and a private source fail with
    NoCredentialsError, after the whole search and training."""
    kfp_keys = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
    for name, (_, _, platform) in _tasks(compiled).items():
        expected = [("mlpipeline-minio-artifact", kfp_keys)] if name in S3_READERS else []
        assert _secret_env(platform) == expected, name


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (
            "invmon-s3",
            [
                (
                    "invmon-s3",
                    {
                        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                    },
                )
            ],
        ),
        ("store:id:key", [("store", {"id": "AWS_ACCESS_KEY_ID", "key": "AWS_SECRET_ACCESS_KEY"})]),
        ("none", []),
    ],
)
def test_the_task_s3_secret_is_a_compile_option(tmp_path, option, expected):
    path = compile_pipeline(tmp_path / "p.yaml", ClusterSettings(s3_secret=option))
    assert _secret_env(_tasks(path)["train"][2]) == expected


def test_a_local_train_task_is_not_given_gpus_it_cannot_use():
    """One training process uses one GPU: --gpus N asked N of a task that used one."""
    with pytest.raises(ValueError, match=r"--gpus 4.*--train-launcher trainjob"):
        ClusterSettings(gpu=GpuPool(gpus=4))


def test_trials_and_tasks_get_one_gpu_and_trainjob_nodes_get_gpus(tmp_path):
    path = compile_pipeline(
        tmp_path / "p.yaml", ClusterSettings(gpu=GpuPool(gpus=4, train_launcher="trainjob"))
    )
    tasks = _tasks(path)
    tune_task, tune_container, _ = tasks["tune"]
    assert tune_container["resources"]["accelerator"]["resourceCount"] == "1"
    assert tune_task["inputs"]["parameters"]["gpus"]["runtimeValue"]["constant"] == 1
    train_task, train_container, _ = tasks["train"]
    assert "accelerator" not in train_container.get("resources", {})
    assert train_task["inputs"]["parameters"]["gpus"]["runtimeValue"]["constant"] == 4


def test_a_gpu_predictor_is_carried_through_the_pipeline_to_the_gpu_pool(tmp_path):
    """Every deploy task rendered a CPU predictor, undoing a GPU patch applied by hand: the GPU,
    node selector and tolerations of the predictor are compile options now."""
    path = compile_pipeline(
        tmp_path / "p.yaml",
        ClusterSettings(serving_gpus=1, gpu=GpuPool(gpu_node_selector={"pool": "l4"})),
    )
    inputs = _tasks(path)["deploy"][0]["inputs"]["parameters"]
    assert inputs["gpus"]["runtimeValue"]["constant"] == 1
    assert inputs["node_selector"]["runtimeValue"]["constant"] == {"pool": "l4"}
    assert inputs["tolerations"]["runtimeValue"]["constant"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    cpu = _tasks(compile_pipeline(tmp_path / "q.yaml"))["deploy"][0]["inputs"]["parameters"]
    assert cpu["gpus"]["runtimeValue"]["constant"] == 0


def _retries_section() -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text()
    start = text.index("**Retries.**")
    return text[start : text.index("**What only a cluster shows.**", start)]


def test_compiled_retries_and_the_argo_setting_they_need_are_documented(tmp_path):
    """``invmon compile`` (the real command, in a temporary folder) writes KFP retry policies that
    carry a count and a backoff but no Argo retryPolicy: the pipeline spec has no such field, and
    KFP's compiler sets none (kubeflow/pipelines backend/src/v2/compiler/argocompiler/
    container.go:667-684 at 2.17.0), so KFP's Argo default ``OnError`` applies and a failing
    main container is not retried. docs/cluster.md must name each retried task with its count,
    and show the cluster-side setting that makes the retries happen, with its upstream source."""
    import subprocess
    import sys

    out = tmp_path / "p.yaml"
    args = ["compile", "--output", str(out), "--tune-backend", "katib"]
    args += ["--train-launcher", "trainjob", "--retries", "3"]
    subprocess.run([sys.executable, "-m", "invmon.cli", *args], check=True, cwd=tmp_path)
    retried = {
        n: task["retryPolicy"] for n, (task, _, _) in _tasks(out).items() if "retryPolicy" in task
    }
    assert set(retried) == {"plan-ingest", "ingest", "deploy", "tune", "train"}
    for policy in retried.values():
        assert set(policy) <= {
            "maxRetryCount",
            "backoffDuration",
            "backoffFactor",
            "backoffMaxDuration",
        }
        assert policy["maxRetryCount"] == 3
    section = _retries_section()
    for name in retried:
        assert f"`{name}`" in section, name
    assert "retryPolicy: Always" in section and "templateDefaults:" in section
    assert "workflow-controller-configmap-patch.yaml:56-59" in section
    assert "workflow/controller/operator.go:1100-1124" in section


def test_the_workspace_lifetime_after_a_failure_is_documented_where_retry_is(compiled):
    """The compiled pipeline sets no Workflow TTL (its pipelineConfig holds only the workspace),
    so KFP's Argo default applies: a finished Workflow, and the workspace PVC it owns, is deleted
    3600 s after it ends (kubeflow/pipelines manifests/kustomize/third-party/argo/base/
    workflow-controller-configmap-patch.yaml:50-55 at 2.17.0). Every place the docs offer Retry
    on a failed run must say so and name the setting that changes it."""
    _, platform = yaml.safe_load_all(compiled.read_text())
    config = platform["platforms"]["kubernetes"]["pipelineConfig"]
    assert set(config) == {"workspace"}  # no resourceTtlOn*: the cluster's default holds
    docs = Path(__file__).resolve().parents[1] / "docs"
    offers = 0
    for path in (docs / "cluster.md", docs / "data.md"):
        for paragraph in path.read_text().split("\n\n"):
            if (
                "Retry** on the failed run" in paragraph
                or "Retry on the failed run: it keeps" in paragraph
            ):
                offers += 1
                assert "secondsAfterFailure" in paragraph, (path.name, paragraph[:80])
    assert offers == 2


def test_an_engine_key_secret_puts_a_prebuild_task_before_deploy(tmp_path):
    """With --engine-key-secret, deploy serves the model with its engine built ahead of time by a
    prebuild task in the engine image (a C++ compiler), with the key from the Secret only; the
    predictor gets the same key from the same Secret. Without it, no task builds an engine."""
    settings = ClusterSettings(engine_key_secret="invmon-engine-key")
    path = compile_pipeline(tmp_path / "p.yaml", settings)
    tasks = _tasks(path)
    task, container, platform = tasks["prebuild"]
    assert container["image"] == settings.images.image("engine")
    keys = {"INVMON_ENGINE_KEY": "INVMON_ENGINE_KEY"}
    assert _secret_env(platform) == [("invmon-engine-key", keys)]
    assert platform["securityContext"]["runAsNonRoot"] is True
    given = {k: v for k, v in container["resources"].items() if k.startswith("resource")}
    assert given == _expected(settings.resources("data"))
    assert task["inputs"]["artifacts"]["model"]["componentInputArtifact"].endswith("model")
    deploy_task = tasks["deploy"][0]
    served = deploy_task["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert served == {"producerTask": "prebuild", "outputArtifactKey": "prebuilt"}
    secret = deploy_task["inputs"]["parameters"]["engine_key_secret"]
    assert secret["runtimeValue"]["constant"] == "invmon-engine-key"
    # audit and register keep the trained model itself
    register_model = tasks["register"][0]["inputs"]["artifacts"]["model"]
    assert register_model["componentInputArtifact"].endswith("model")
    default = _tasks(compile_pipeline(tmp_path / "q.yaml"))
    assert "prebuild" not in default
    assert default["deploy"][0]["inputs"]["parameters"]["engine_key_secret"]["runtimeValue"] == {
        "constant": ""
    }


def test_a_gpu_predictor_gets_no_prebuild_task(tmp_path):
    """A predictor on a GPU never serves a CPU package: building one would be minutes for
    nothing."""
    settings = ClusterSettings(engine_key_secret="invmon-engine-key", serving_gpus=1)
    assert "prebuild" not in _tasks(compile_pipeline(tmp_path / "p.yaml", settings))


def test_a_bad_engine_key_secret_is_named():
    with pytest.raises(ValueError, match=r"--engine-key-secret 'Engine_Key' is not a Secret"):
        ClusterSettings(engine_key_secret="Engine_Key")


def test_the_prebuild_task_and_the_cpu_predictor_share_the_serving_node_selector(tmp_path):
    """A prebuilt engine is specific to the kind of CPU: with --serving-node-selector the task
    that builds it and the predictor that serves it run on the same labelled nodes."""
    labels = {"node.kubernetes.io/instance-type": "c7i.2xlarge"}
    settings = ClusterSettings(engine_key_secret="invmon-engine-key", serving_node_selector=labels)
    tasks = _tasks(compile_pipeline(tmp_path / "p.yaml", settings))
    assert tasks["prebuild"][2]["nodeSelector"] == {"labels": labels}
    deploy_inputs = tasks["deploy"][0]["inputs"]["parameters"]
    assert deploy_inputs["node_selector"]["runtimeValue"]["constant"] == labels
    default = _tasks(compile_pipeline(tmp_path / "q.yaml"))
    assert default["deploy"][0]["inputs"]["parameters"]["node_selector"]["runtimeValue"] == {
        "constant": {}
    }
