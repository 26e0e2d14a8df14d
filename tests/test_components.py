"""The KFP components restate no default of their own: each equals its stage setting's default."""

import dataclasses
import inspect

import pytest

from invmon import components
from invmon.core.settings import Settings, default_of, kind_of
from invmon.stages.arrange import ArrangeSettings
from invmon.stages.ingest import IngestSettings, PlanSettings
from invmon.stages.preprocess import PreprocessSettings

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
]


def _setting_defaults(cls) -> dict:
    """Every setting of ``cls`` that has a default, those of nested settings included."""
    found = {}
    for field in dataclasses.fields(cls):
        kind = kind_of(cls, field)
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
        if name in defaults and parameter.default is not inspect.Parameter.empty
    }
    assert set(paired) == set(shared)
    for name, declared in paired.items():
        assert declared == _as_parameter(defaults[name], declared), name
