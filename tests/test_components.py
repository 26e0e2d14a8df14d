"""The KFP components restate no default of their own: each equals its stage setting's default."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from invmon import components
from invmon.core.settings import Settings, default_of, kind_of
from invmon.stages.arrange import ArrangeSettings
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
    (components.arrange, ArrangeSettings, ("classes", "split", "seed")),
    (components.preprocess, PreprocessSettings, ("image_size", "shard_size")),
    (
        components.tune,
        TuneSettings,
        (
            "trials",
            "algorithm",
            "backend",
            "max_epochs",
            "early_stopping",
            "objective",
            "recipe",
            "parallel_trials",
            "namespace",
            "s3_secret",
            "gpus",
        ),
    ),
    # The trials' and the final training's recipe settings are TrainConfig's.
    (components.tune, TrainConfig, ("device", "seed", "weights")),
    (
        components.train,
        TrainSettings,
        ("recipe", "checkpoint", "launcher", "num_nodes", "namespace", "s3_secret"),
    ),
    (components.train, TrainConfig, ("device", "seed", "weights")),
    (components.evaluate, EvaluateSettings, ("device",)),
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
    "not given" with the empty value of its type ("" or 0)."""
    return type(declared)() if value is None else value


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
