"""The compiled pipeline: loadable by kfp, GPU stages on the GPU pool, images from images/."""

from pathlib import Path

import pytest
import yaml
from kfp import components

from invmon.cli import main
from invmon.cluster.container_images import IMAGE_NAMES, ImageSet
from invmon.cluster.gpu_pool import GpuPool
from invmon.cluster.placement import parse_toleration
from invmon.cluster.workspace import WorkspaceSettings
from invmon.pipelines.cluster_settings import ClusterSettings
from invmon.pipelines.compile import compile_pipeline

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "pipelines" / "inventory_pipeline.yaml"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")


def _documents(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_loads_with_kfps_own_loader(compiled):
    pipeline = components.load_component_from_file(str(compiled))
    assert pipeline.name == "inventory-monitoring"
    assert {"source", "classes", "image_size", "trials"} <= set(pipeline.component_spec.inputs)


def test_committed_copy_is_current(compiled):
    assert COMMITTED.read_text() == compiled.read_text(), (
        "pipelines/inventory_pipeline.yaml is stale: run "
        "`invmon compile --output pipelines/inventory_pipeline.yaml`"
    )


def test_train_and_tune_ask_for_a_gpu_on_the_gpu_pool(compiled):
    spec, platform = _documents(compiled)
    executors = spec["deploymentSpec"]["executors"]
    for stage in ("train", "tune"):
        resources = executors[f"exec-{stage}"]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        assert platform[f"exec-{stage}"]["nodeSelector"]["labels"] == {
            "nvidia.com/gpu.present": "true"
        }
        assert platform[f"exec-{stage}"]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    assert "accelerator" not in executors["exec-ingest"]["container"].get("resources", {})


def test_every_task_runs_as_non_root(compiled):
    spec, platform = _documents(compiled)
    for name in spec["deploymentSpec"]["executors"]:
        assert platform[name]["securityContext"]["runAsNonRoot"] is True


def test_every_image_has_a_dockerfile(compiled):
    spec, _ = _documents(compiled)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    dockerfiles = {ImageSet().image(n): ROOT / "images" / n / "Dockerfile" for n in IMAGE_NAMES}
    assert images <= set(dockerfiles)
    for image in images:
        assert dockerfiles[image].is_file(), image


def test_registry_tag_and_gpu_pool_are_configurable(tmp_path):
    settings = ClusterSettings(
        images=ImageSet("registry.local:5000/ml", "2.0"),
        gpu=GpuPool(
            gpu_node_selector={"pool": "a100"},
            gpu_tolerations=(parse_toleration("gpu=true:NoSchedule"),),
        ),
    )
    spec, platform = _documents(compile_pipeline(tmp_path / "p.yaml", settings))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert all(
        i.startswith("registry.local:5000/ml/invmon-") and i.endswith(":2.0") for i in images
    )
    assert platform["exec-train"]["nodeSelector"]["labels"] == {"pool": "a100"}
    assert platform["exec-train"]["tolerations"] == [
        {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ]
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    # One training process, one GPU: more are the TrainJob nodes' (test_pipeline_cluster.py).
    assert train["accelerator"]["resourceCount"] == "1"


def test_components_only_import_the_package_in_their_body(compiled):
    spec, _ = _documents(compiled)
    for name, executor in spec["deploymentSpec"]["executors"].items():
        body = executor["container"]["command"][-1]
        assert "from invmon" in body, name
        assert "pip install" not in " ".join(executor["container"]["command"]), name


def test_bad_toleration_is_named():
    with pytest.raises(ValueError, match="--gpu-toleration"):
        parse_toleration("gpu:Sometimes")


CREDENTIAL_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"(?i)aws_secret_access_key\s*[:=]",
    r"(?i)(password|secret_key|token)\s*[:=]\s*\S{8,}",
]


def test_compiled_pipeline_carries_no_credentials(compiled):
    import re

    text = compiled.read_text()
    for pattern in CREDENTIAL_PATTERNS:
        assert not re.search(pattern, text), pattern


def _container_tasks(spec: dict) -> list[dict]:
    """Every task that runs a container, also those inside loops (a loop is a DAG task)."""
    tasks, dags = [], [spec["root"]["dag"]]
    while dags:
        for task in dags.pop()["tasks"].values():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                dags.append(component["dag"])
            else:
                tasks.append(task)
    return tasks


def _uses_workspace(task: dict) -> bool:
    parameters = task.get("inputs", {}).get("parameters", {})
    value = parameters.get("workspace", {}).get("runtimeValue", {}).get("constant")
    return value == "{{$.workspace_path}}"


def test_tasks_that_use_the_workspace_are_never_cached(compiled, tmp_path):
    """A cached output of a workspace task would point into an earlier run's deleted workspace:
    those tasks compile with caching off; the others follow the caching setting."""
    spec, _ = _documents(compiled)
    tasks = {t["taskInfo"]["name"]: t for t in _container_tasks(spec)}
    workspace = {name for name, task in tasks.items() if _uses_workspace(task)}
    # register reads only artifacts and talks to the registry: it follows the caching setting
    # (a retried run then does not register the same version twice).
    assert workspace == set(tasks) - {"plan-ingest", "register"}
    for name, task in tasks.items():
        assert task["cachingOptions"].get("enableCache", False) == (name not in workspace), name
    release = spec["root"]["dag"]["tasks"]["release"]
    assert not release["cachingOptions"].get("enableCache", False)
    off = compile_pipeline(tmp_path / "p.yaml", ClusterSettings(caching=False))
    spec, _ = _documents(off)
    assert not any(t["cachingOptions"].get("enableCache") for t in _container_tasks(spec))
    plain = ClusterSettings(workspace=WorkspaceSettings(enabled=False))
    spec, _ = _documents(compile_pipeline(tmp_path / "q.yaml", plain))
    assert all(t["cachingOptions"]["enableCache"] for t in _container_tasks(spec))


def _executor_inputs(spec: dict, task: str) -> dict:
    for component in spec["root"]["dag"]["tasks"].values():
        if component["taskInfo"]["name"] == task:
            return component["inputs"]["parameters"]
    raise KeyError(task)


def test_ingest_runs_in_parallel_parts_that_are_merged(compiled):
    spec, _ = _documents(compiled)
    root = spec["root"]["dag"]["tasks"]
    loop = next(t for t in root.values() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("plan-ingest-Output")
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    part = next(t for t in body.values() if t["taskInfo"]["name"] == "ingest")
    assert part["retryPolicy"]["maxRetryCount"] == 3
    merge = next(t for t in root.values() if t["taskInfo"]["name"] == "merge-ingest")
    assert (
        merge["inputs"]["artifacts"]["parts"]["taskOutputArtifact"]["producerTask"]
        == (loop["taskInfo"]["name"])
    )
    assert "ingest_parts" in spec["root"]["inputDefinitions"]["parameters"]


def test_data_steps_share_a_workspace_and_arrange_reports_in_markdown(compiled):
    spec, _ = _documents(compiled)
    workspace = yaml.safe_load_all(compiled.read_text())
    settings = list(workspace)[1]["platforms"]["kubernetes"]["pipelineConfig"]["workspace"]
    assert settings["size"] == "250Gi"
    for task in ("merge-ingest", "arrange", "preprocess", "tune", "train", "evaluate"):
        value = _executor_inputs(spec, task)["workspace"]["runtimeValue"]["constant"]
        assert value == "{{$.workspace_path}}", task
    outputs = spec["components"]["comp-arrange"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_workspace_is_read_write_many_unless_compiled_otherwise(compiled, tmp_path):
    """KFP refuses a run whose workspace PVC spec has no access modes (unless its admin set a
    default) and an empty storage class: the modes are always compiled in, ReadWriteMany by
    default, and the storage class only when one is given."""
    _, platform = yaml.safe_load_all(compiled.read_text())
    workspace = platform["platforms"]["kubernetes"]["pipelineConfig"]["workspace"]
    assert workspace == {
        "size": "250Gi",
        "kubernetes": {"pvcSpecPatch": {"accessModes": ["ReadWriteMany"]}},
    }
    sized = ClusterSettings(
        workspace=WorkspaceSettings(
            size="80Gi", storage_class="efs", access_modes=("ReadWriteOnce",)
        )
    )
    _, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "a.yaml", sized).read_text())
    workspace = platform["platforms"]["kubernetes"]["pipelineConfig"]["workspace"]
    assert workspace == {
        "size": "80Gi",
        "kubernetes": {
            "pvcSpecPatch": {"accessModes": ["ReadWriteOnce"], "storageClassName": "efs"}
        },
    }
    plain = compile_pipeline(
        tmp_path / "b.yaml", ClusterSettings(workspace=WorkspaceSettings(enabled=False))
    )
    text = plain.read_text()
    assert "workspace_path" not in text and "pipelineConfig" not in text
    with pytest.raises(ValueError, match="--workspace-access-mode"):
        WorkspaceSettings(access_modes=())


def test_workspace_access_mode_flag_replaces_the_default(tmp_path):
    out = tmp_path / "p.yaml"
    argv = ["compile", "--output", str(out), "--workspace-access-mode", "ReadWriteOnce"]
    assert main([*argv, "--workspace-storage-class", "local-path"]) == 0
    _, platform = yaml.safe_load_all(out.read_text())
    patch = platform["platforms"]["kubernetes"]["pipelineConfig"]["workspace"]["kubernetes"]
    assert patch == {
        "pvcSpecPatch": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path"}
    }


def test_cluster_backends_create_pods_on_the_gpu_pool_without_holding_a_gpu(tmp_path):
    """Compiled for Katib and TrainJobs, tune and train only create objects and wait: they ask
    for no GPU themselves, and hand the GPU pool's placement to the pods they create."""
    settings = ClusterSettings(
        images=ImageSet("registry.local/ml", "3.0"),
        gpu=GpuPool(
            gpu_node_selector={"pool": "h100"},
            gpu_tolerations=(parse_toleration("gpu=true:NoSchedule"),),
            gpus=8,
            tune_backend="katib",
            train_launcher="trainjob",
        ),
    )
    spec, platform = _documents(compile_pipeline(tmp_path / "p.yaml", settings))
    executors = spec["deploymentSpec"]["executors"]
    tasks = spec["root"]["dag"]["tasks"]
    for stage, constant in (("tune", ("backend", "katib")), ("train", ("launcher", "trainjob"))):
        assert "accelerator" not in executors[f"exec-{stage}"]["container"].get("resources", {})
        assert "nodeSelector" not in platform[f"exec-{stage}"]
        inputs = tasks[stage]["inputs"]["parameters"]
        assert inputs[constant[0]]["runtimeValue"]["constant"] == constant[1]
        assert inputs["image"]["runtimeValue"]["constant"] == "registry.local/ml/invmon-train:3.0"
        assert inputs["node_selector"]["runtimeValue"]["constant"] == {"pool": "h100"}
        assert inputs["tolerations"]["runtimeValue"]["constant"] == [
            {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ]
    assert tasks["train"]["inputs"]["parameters"]["gpus"]["runtimeValue"]["constant"] == 8


def test_train_publishes_a_report_and_metrics(compiled):
    spec, _ = _documents(compiled)
    outputs = spec["components"]["comp-train"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="--tune-backend must be one of local, katib"):
        GpuPool(tune_backend="slurm")


@pytest.mark.parametrize(
    "backends", [[], ["--tune-backend", "katib", "--train-launcher", "trainjob"]]
)
def test_compile_registry_and_tag_reach_the_katib_trials_and_the_trainjob(tmp_path, backends):
    """`invmon compile --registry R --tag T` moves the image that tune hands to Katib's trial pods
    and train hands to the TrainJob's nodes, as well as the tasks' own images; the image found in
    the compiled YAML is the one the rendered Experiment and TrainJob run."""
    from invmon.cli import main
    from invmon.cluster import katib, trainjob
    from invmon.training.config import TrainConfig
    from invmon.training.search import SearchSpec

    out = tmp_path / "p.yaml"
    argv = ["compile", "--registry", "cr.example.org/team", "--tag", "7.1", "--output", str(out)]
    assert main([*argv, *backends]) == 0
    spec, _ = _documents(out)
    tasks = spec["root"]["dag"]["tasks"]
    image = "cr.example.org/team/invmon-train:7.1"
    for stage in ("tune", "train"):
        assert tasks[stage]["inputs"]["parameters"]["image"]["runtimeValue"] == {"constant": image}
        executor = spec["deploymentSpec"]["executors"][f"exec-{stage}"]["container"]
        assert executor["image"].startswith("cr.example.org/team/invmon-")
        assert executor["image"].endswith(":7.1")

    settings = katib.TrialSettings(data="s3://b/shards", image=image)
    experiment = katib.render_experiment("e", SearchSpec(), TrainConfig(), settings)
    trial_pod = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    assert trial_pod["containers"][0]["image"] == image
    job = trainjob.render_trainjob(
        TrainConfig(), trainjob.TrainJobSettings("t", "s3://b/shards", "s3://b/model", image=image)
    )
    assert job["spec"]["trainer"]["image"] == image


def test_deploy_and_audit_run_only_behind_the_quality_gate(compiled):
    spec, _ = _documents(compiled)
    root = spec["root"]["dag"]["tasks"]
    assert "deploy" not in root and "audit" not in root
    release = root["release"]
    accuracy = release["inputs"]["parameters"]["accuracy"]["taskOutputParameter"]
    assert accuracy == {"producerTask": "evaluate", "outputParameterKey": "accuracy"}
    tasks = spec["components"][release["componentRef"]["name"]]["dag"]["tasks"]
    (gate,) = tasks.values()
    assert gate["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--accuracy'] >= "
        "inputs.parameter_values['pipelinechannel--min_accuracy']"
    )
    inner = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    # condition-2: the registry's branch (register, when registry_url is set; see test_register.py)
    # plan-audit, the audit parts (in the loop) and merge-audit: the audit, in parallel parts
    assert set(inner) == {"deploy", "plan-audit", "for-loop-3", "merge-audit", "condition-2"}
    assert spec["root"]["inputDefinitions"]["parameters"]["min_accuracy"]["defaultValue"] == 0.4


def test_audit_is_planned_scored_in_parallel_parts_and_merged(compiled):
    spec, _ = _documents(compiled)
    root = spec["root"]["dag"]["tasks"]
    gate = spec["components"][root["release"]["componentRef"]["name"]]["dag"]["tasks"]
    (branch,) = gate.values()
    inner = spec["components"][branch["componentRef"]["name"]]["dag"]["tasks"]
    loop = inner["for-loop-3"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == (
        "pipelinechannel--plan-audit-Output"
    )
    assert loop["dependentTasks"] == ["plan-audit"]
    assert set(spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]) == {"audit"}
    collected = inner["merge-audit"]["inputs"]["artifacts"]["parts"]["taskOutputArtifact"]
    assert collected == {
        "producerTask": "for-loop-3",
        "outputArtifactKey": "pipelinechannel--audit-scores",
    }
    parts = inner["plan-audit"]["inputs"]["parameters"]["parts"]["componentInputParameter"]
    assert parts == "pipelinechannel--audit_parts"
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["audit_parts"]["defaultValue"] == 1.0, "one part by default, as before"


def _task_inputs(spec: dict, task_name: str) -> dict:
    """The input parameters of the task ``task_name``, wherever in the DAG (or a branch) it is."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        if task_name in dag["tasks"]:
            return dag["tasks"][task_name]["inputs"]["parameters"]
    raise AssertionError(f"no task {task_name!r} in the compiled pipeline")


def test_compile_registry_and_tag_set_the_inference_service_image(tmp_path):
    out = tmp_path / "p.yaml"
    main(["compile", "--registry", "registry.local:5000/ml", "--tag", "3.1", "--output", str(out)])
    spec, _ = _documents(out)
    image = _task_inputs(spec, "deploy")["image"]["runtimeValue"]["constant"]
    assert image == "registry.local:5000/ml/invmon-serve:3.1"
    default, _ = _documents(COMMITTED)
    committed = _task_inputs(default, "deploy")["image"]["runtimeValue"]["constant"]
    assert committed == ImageSet().image("serve")


def test_the_search_tunes_the_recipe_the_final_training_uses(compiled):
    """The tune task takes the pipeline's recipe and weights, as the train task does, so
    that its trials train the way the final model will."""
    spec, _ = _documents(compiled)
    tasks = spec["root"]["dag"]["tasks"]
    for task, wiring in (
        ("tune", {"recipe": "recipe", "weights": "weights"}),
        ("train", {"recipe": "recipe", "weights": "weights"}),
    ):
        parameters = tasks[task]["inputs"]["parameters"]
        for name, pipeline_parameter in wiring.items():
            assert parameters[name] == {"componentInputParameter": pipeline_parameter}, task


def test_every_pipeline_parameter_default_is_its_stage_settings_default(compiled):
    """The pipeline restates no default: a parameter that is a stage's setting compiles with the
    stage's default (KFP's empty value for a None), or is listed with the reason it differs."""
    from dataclasses import fields

    from invmon.core.settings import default_of, origin_of
    from invmon.pipelines.parameters import DEFAULTS, DIFFERENT_DEFAULTS, PipelineParameters

    spec, _ = _documents(compiled)
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert set(declared) == {f.name for f in fields(PipelineParameters)}
    inherited = 0
    for field in fields(PipelineParameters):
        value = getattr(DEFAULTS, field.name)
        assert declared[field.name]["defaultValue"] == value, field.name
        origin = origin_of(field)
        if origin is None or field.name in DIFFERENT_DEFAULTS:
            continue
        inherited += 1
        stage_default = default_of(*origin)
        expected = type(value)() if stage_default is None else stage_default
        assert value == expected, (
            f"{field.name}: {value!r}, but {origin[0].__name__} says {expected!r}"
        )
    assert inherited >= 15, "most parameters are stage settings"
