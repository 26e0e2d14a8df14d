"""A component's interface (its defaults and descriptions), taken from its stage's settings.

KFP reads a component's interface from its Python signature and docstring: the defaults are what a
run starts from, the docstring's ``Args`` the descriptions the Kubeflow UI shows. A component
writes neither for a parameter that is a stage setting: :func:`stage_interface` fills them in from
the setting of the same name, so that the stage's settings stay the only definition. KFP ships the
function's text without its decorators, and hands the function every input (the driver on a
cluster, and ``kfp.local``, fill in the compiled spec's defaults), so the text needs none.

KFP has no None: a setting whose default is None ("not given") is the empty value of the
parameter's type ("", 0 or False) here, and a component passes ``value or None`` to the stage.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING

from invmon.core.settings import Settings, default_of, kind_of, spec_of


def setting_named(sources: tuple[type, ...], name: str) -> tuple[type, dataclasses.Field] | None:
    """The (class, field) of setting ``name`` in ``sources`` or the settings nested in them,
    nearest first; None when there is none. Override twins (whose fields are all None) are
    passed over: the class they override is a source of its own where a component needs it."""
    queue = list(sources)
    while queue:
        cls = queue.pop(0)
        for field in dataclasses.fields(cls):
            kind = kind_of(cls, field)
            if kind.nested and issubclass(kind.base, Settings):
                if not hasattr(kind.base, "given"):
                    queue.append(kind.base)
            elif field.name == name:
                return cls, field
    return None


def as_parameter(value, annotation):
    """A setting's default as a KFP parameter takes it: None as the empty value of the type,
    tuples as lists, settings objects (tolerations) as their dicts."""
    if value is None:
        return annotation()
    if isinstance(value, tuple):
        return [v.to_dict() if hasattr(v, "to_dict") else v for v in value]
    return value


def _description(field: dataclasses.Field) -> str:
    spec = spec_of(field)
    text = spec.help
    if spec.choices and not all(str(c) in text for c in spec.choices):
        text += f" (one of {', '.join(map(str, spec.choices))})"
    return text


def stage_interface(
    summary: str, *sources: type, notes: dict[str, str], own: tuple[str, ...] = ()
) -> Callable:
    """Decorate a component function (below ``@dsl.component``) with the defaults and the
    docstring of its parameters that are settings of ``sources``.

    ``notes`` describes every other parameter (artifacts, and the component's own, which keep the
    default their text gives), and adds to the help of a setting where the component uses it in
    a way of its own. A parameter that is a setting must not give a default in the text: the
    setting's is the one definition. ``own`` names parameters that only share a setting's name
    (ingest's ``part`` is the plan's dict, the setting its JSON text). A setting without a
    default is a required parameter.
    """

    def decorate(func):
        parameters = inspect.signature(func).parameters.values()
        lines, defaults = [summary, "", "Args:"], []
        for parameter in parameters:
            text, default = _interface_of(parameter, sources, notes, own, func.__name__)
            lines.append(f"    {parameter.name}: {text}")
            if default is not inspect.Parameter.empty:
                defaults.append(default)
            elif defaults:  # Python puts the parameters without a default first
                raise TypeError(f"{func.__name__}: {parameter.name!r} must come before defaults")
        unknown = set(notes) - {p.name for p in parameters}
        if unknown:
            raise TypeError(f"{func.__name__}: notes for no parameter: {sorted(unknown)}")
        func.__defaults__ = tuple(defaults)
        func.__doc__ = "\n".join(lines) + "\n"
        return func

    return decorate


def _interface_of(parameter, sources, notes, own, component):
    """A parameter's description and default (``inspect.Parameter.empty``: required)."""
    # KFP's Input[...] and Output[...] are Annotated types: artifacts, not settings.
    artifact = typing.get_origin(parameter.annotation) is typing.Annotated
    found = None if artifact or parameter.name in own else setting_named(sources, parameter.name)
    given = parameter.default is not inspect.Parameter.empty
    if found is not None and given and parameter.name not in notes:
        raise TypeError(f"{component}.{parameter.name} restates its setting's default")
    if found is None or given:
        if parameter.name not in notes:
            raise TypeError(f"{component}: describe parameter {parameter.name!r}")
        return notes[parameter.name], parameter.default
    cls, field = found
    text = _description(field)
    if parameter.name in notes:
        text += f" ({notes[parameter.name]})"
    if field.default is MISSING and field.default_factory is MISSING:
        return text + ".", inspect.Parameter.empty
    return text + ".", as_parameter(default_of(cls, field.name), parameter.annotation)


def stage_component(stage: str, summary: str, *sources: type, **how) -> Callable:
    """``@dsl.component`` in the stage's image, with its interface from the stage's settings
    (:func:`stage_interface`; ``how``: its ``notes`` and ``own``). KFP ships only the function's
    text, so the function imports what it uses inside its body."""
    from kfp import dsl

    from invmon.cluster.container_images import DEFAULT_IMAGES

    def decorate(func):
        return dsl.component(
            stage_interface(summary, *sources, **how)(func),
            base_image=DEFAULT_IMAGES.for_stage(stage),
            install_kfp_package=False,
        )

    return decorate
