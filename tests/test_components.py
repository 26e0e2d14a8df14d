"""The KFP components restate no default of their own: each equals its stage setting's default."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from invmon import components
from invmon.core.settings import Settings, default_of, kind_of
from invmon.stages.arrange import ArrangeSettings
from invmon.stages.audit import AuditSettings
from invmon.stages.audit_parts import AuditMergeSettings
from invmon.stages.deploy import DeploySettings
from invmon.stages.evaluate import EvaluateSettings
from invmon.stages.ingest import IngestSettings, PlanSettings
from invmon.stages.preprocess import PreprocessSettings
from invmon.stages.train import TrainSettings
from invmon.stages.tune import TuneSettings
from invmon.training.config import TrainConfig

# (component, the settings of the stage it calls, its parameters that are also settings).
# A parameter is paired with the setting of the same name (nested settings, such as the S3
# options, by their own field names); the list keeps the test from passing by matching nothing.
SAME_MEANING = [
    (
        components.plan_ingest,
        PlanSettings,
        ("endpoint_url", "anonymous", "file_list", "limit"),
    ),
    (
        components.ingest,
        IngestSettings,
        ("endpoint_url", "anonymous", "file_list", "limit", "workers"),
    ),
    (
        components.arrange,
        ArrangeSettings,
        ("classes", "split", "seed", "recounts", "endpoint_url", "anonymous"),
    ),
    (components.preprocess, PreprocessSettings, ("image_size", "shard_size", "workers")),
    (
        components.tune,
        TuneSettings,
        (
            "trials",
            "algorithm",
            "backend",
            "max_epochs",
            "batch_sizes",
            "early_stopping",
            "objective",
            "recipe",
            "parallel_trials",
            "endpoint_url",
            "image",
            "namespace",
            "s3_secret",
            "gpus",
            "tolerations",
            "shm_size",
            "resources",
            "unschedulable_timeout",
        ),
    ),
    # The trials' and the final training's recipe settings are TrainConfig's.
    (components.tune, TrainConfig, ("device", "seed", "weights")),
    (
        components.train,
        TrainSettings,
        (
            "recipe",
            "checkpoint",
            "launcher",
            "num_nodes",
            "endpoint_url",
            "image",
            "namespace",
            "s3_secret",
            "gpus",
            "tolerations",
            "shm_size",
            "resources",
            "unschedulable_timeout",
        ),
    ),
    (components.train, TrainConfig, ("device", "seed", "weights", "init_model")),
    (components.evaluate, EvaluateSettings, ("device", "init_model", "endpoint_url")),
    (components.audit, AuditSettings, ("threshold", "device")),
    (components.merge_audit, AuditMergeSettings, ("thumbnails",)),
]


# Parameters named like a setting that mean something else, and what.
OTHER_MEANING = {
    ("train", "epochs"): "0 is the number of epochs the search chose",
}


def _setting_defaults(cls) -> dict:
    """Every setting of ``cls`` that has a default, those of nested settings included."""
    found = {}
    for field in dataclasses.fields(cls):
        kind = kind_of(cls, field)
        if kind.nested and hasattr(kind.base, "given"):
            continue  # overrides of another class's settings have no defaults of their own
        if kind.nested and issubclass(kind.base, Settings):
            found.update(_setting_defaults(kind.base))
        elif field.default is not dataclasses.MISSING:
            found[field.name] = default_of(cls, field.name)
    return found


def _as_parameter(value, declared):
    """A setting's default as a KFP parameter says it: KFP has no None, so a component says
    "not given" with the empty value of its type ("" or 0); a tuple is a list."""
    if value is None:
        return type(declared)()
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(
    ("component", "settings", "shared"), SAME_MEANING, ids=lambda v: getattr(v, "name", None)
)
def test_component_defaults_are_the_stage_settings_defaults(component, settings, shared):
    parameters = inspect.signature(component.python_func).parameters
    defaults = _setting_defaults(settings)
    paired = {
        name: parameter.default
        for name, parameter in parameters.items()
        if name in defaults
        and parameter.default is not inspect.Parameter.empty
        and (component.name, name) not in OTHER_MEANING
    }
    assert set(paired) == set(shared)
    for name, declared in paired.items():
        assert declared == _as_parameter(defaults[name], declared), name


# The deploy component's settings are nested in the service's, and it says "not given" with -1,
# since 0 is a canary share. {parameter: the setting it sets}, nested settings by their path;
# every parameter with a default is listed, but the pipeline's workspace path, which is not a
# stage setting.
DEPLOY_PARAMETERS = {
    "target": "target",
    "name": "service.name",
    "namespace": "service.namespace",
    "image": "service.image",
    "service_account": "service.service_account",
    "deployment_mode": "service.deployment_mode",
    "min_replicas": "service.min_replicas",
    "max_replicas": "service.max_replicas",
    "cpu": "service.cpu",
    "memory": "service.memory",
    "gpus": "service.gpus",
    "node_selector": "service.node_selector",
    "tolerations": "service.tolerations",
    "monitor": "service.monitor",
    "engine_key_secret": "service.engine_key_secret",
    "store_endpoint": "store_endpoint",
    "canary_traffic_percent": "service.canary_traffic_percent",
    "timeout": "timeout",
}
DEPLOY_NOT_GIVEN = {"canary_traffic_percent": -1}


def _default(cls, path: str):
    """The default of the setting at ``path`` (``service.image``: field image of field service)."""
    *outer, name = path.split(".")
    for field in outer:
        cls = type(default_of(cls, field))
    return default_of(cls, name)


def test_deploy_component_defaults_are_the_deploy_settings_defaults():
    parameters = inspect.signature(components.deploy.python_func).parameters
    defaults = {
        name: parameter.default
        for name, parameter in parameters.items()
        if parameter.default is not inspect.Parameter.empty and name != "workspace"
    }
    assert set(defaults) == set(DEPLOY_PARAMETERS)
    for parameter, path in DEPLOY_PARAMETERS.items():
        declared = defaults[parameter]
        if DEPLOY_NOT_GIVEN.get(parameter) == declared:
            declared = None
        assert declared == _as_parameter(_default(DeploySettings, path), declared), parameter


class _Artifact:
    """What a component body uses of a KFP artifact: a local path and its metadata."""

    def __init__(self, path):
        self.path, self.metadata = str(path), {}


def test_the_data_components_chain_from_a_bucket_to_shards(s3_url, public_bucket, tmp_path):
    """The bodies, run as KFP runs them (without KFP): each builds its stage's settings."""
    from invmon.data.synth import synthesize

    source = f"s3://{public_bucket}/abid"
    synthesize(source, 30, seed=5, endpoint_url=s3_url, anonymous=True, workers=1)
    s3 = {"endpoint_url": s3_url, "anonymous": True}
    plan = components.plan_ingest.python_func(source=source, parts=2, **s3)
    assert len(plan) == 2
    parts = [_Artifact(tmp_path / f"part{n}") for n in range(len(plan))]
    for part, artifact in zip(plan, parts, strict=True):
        components.ingest.python_func(source=source, part=part, raw=artifact, **s3)
    raw = _Artifact(tmp_path / "raw")
    components.merge_ingest.python_func(parts=parts, raw=raw)
    assert raw.metadata["copied"] == 60
    arranged, report = _Artifact(tmp_path / "arranged"), _Artifact(tmp_path / "report.md")
    components.arrange.python_func(raw=raw, arranged=arranged, report=report)
    assert arranged.metadata["bins"] == 30
    assert Path(report.path).read_text().startswith("# Data report")
    shards = _Artifact(tmp_path / "shards")
    components.preprocess.python_func(arranged=arranged, shards=shards, image_size=32)
    assert sum(shards.metadata["images"].values()) == 30


def test_with_a_workspace_the_shards_stay_in_it_and_are_read_in_place(
    arranged_dir, model_dir, tmp_path
):
    """Preprocess writes the shards into the workspace and hands on a pointer; evaluate reads
    them there. The artifact that object storage would carry is a few hundred bytes."""
    from invmon.data import workspace as shared

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    shards = _Artifact(tmp_path / "shards")
    components.preprocess.python_func(
        arranged=_Artifact(arranged_dir),
        shards=shards,
        image_size=32,
        workers=1,
        workspace=str(workspace),
    )
    assert [p.name for p in Path(shards.path).iterdir()] == [shared.POINTER_FILE]
    assert Path(shards.path, shared.POINTER_FILE).stat().st_size < 1000
    assert shared.resolve(shards.path) == workspace / "shards"
    assert (workspace / "shards" / "index.json").is_file()

    from kfp import dsl

    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    confusion = dsl.ClassificationMetrics(name="confusion", uri=str(tmp_path / "confusion"))
    report = dsl.HTML(name="report", uri=str(tmp_path / "report.html"))
    accuracy, *_ = components.evaluate.python_func(
        model=dsl.Model(name="model", uri=str(model_dir)),
        shards=dsl.Dataset(name="shards", uri=shards.path),
        metrics=metrics,
        confusion=confusion,
        report=report,
        reference=dsl.Artifact(name="reference", uri=str(tmp_path / "reference")),
        device="cpu",
        workspace=str(workspace),
    )
    assert 0.0 <= accuracy <= 1.0
    assert (tmp_path / "reference" / "reference.json").is_file()
    assert "<svg" in Path(report.path).read_text()


def test_a_component_that_restates_a_settings_default_is_refused():
    """The stage's setting is the one definition: a default in the component's text is an error
    when the component is defined, not a drift found later."""
    from invmon.components.interface import stage_interface

    def arrange(classes: str = "1-5"):
        pass

    with pytest.raises(TypeError, match=r"arrange\.classes restates"):
        stage_interface("Arrange.", ArrangeSettings, notes={})(arrange)


def test_a_components_interface_comes_from_its_stage():
    """Defaults and the docstring KFP turns into the UI's descriptions: the setting's default
    (None as the empty value), its help and choices; the component's own parameters keep theirs."""
    from invmon.components.interface import stage_interface

    def audit(threshold: float, device: str, workspace: str = ""):
        pass

    stage_interface("Audit.", AuditSettings, notes={"workspace": "Where bins live."})(audit)
    defaults = {n: p.default for n, p in inspect.signature(audit).parameters.items()}
    assert defaults == {
        "threshold": default_of(AuditSettings, "threshold"),
        "device": "auto",
        "workspace": "",
    }
    assert "    workspace: Where bins live." in audit.__doc__
    assert audit.__doc__.startswith("Audit.\n\nArgs:\n    threshold: ")
