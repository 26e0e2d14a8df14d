"""Settings of a stage: a frozen dataclass whose fields are the only definition of its options.

Each field is made with :func:`setting`, which records its help text and its checks beside its
type and default. Everything else is derived from the fields:

- :func:`add_options` adds the command-line options of a settings class to an ``argparse``
  parser (``batch_size`` becomes ``--batch-size``; a bool that defaults to True becomes
  ``--no-...``; the default is added to the help text);
- :func:`from_args` builds the settings back from the parsed arguments;
- :func:`to_flags` renders the options that reproduce a value, for commands run elsewhere
  (Katib trials and TrainJob nodes run ``invmon train`` with them);
- :class:`Settings` checks every instance when it is made, with errors that name the option and
  what it allows, whoever made it (the command line, a KFP component or a test);
- :func:`overrides_of` derives a twin class whose fields are all optional, for options that
  override defaults coming from elsewhere (a recipe, a search result).

A new option of a stage is one new field: its flag, help, check and remote rendering follow.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields

_KEY = "invmon.setting"
_ORIGIN = "invmon.setting.origin"


@dataclass(frozen=True)
class Spec:
    """What a field's :func:`setting` call recorded besides type and default."""

    help: str
    choices: tuple = ()
    minimum: float | None = None  # value >= minimum
    above: float | None = None  # value > above
    below: float | None = None  # value < below
    maximum: float | None = None  # value <= maximum
    flag: str = ""  # the option's name when it is not --field-name
    aliases: tuple[str, ...] = ()  # further option strings (``--model_dir``)
    cli: bool = True  # False: set by code only
    positional: bool = False
    metavar: str | None = None
    group: str | None = None  # argparse group title of a nested settings class
    parse: Callable[[str], object] | None = None  # text -> one value (KEY=VALUE, ...)
    show_default: bool = True


def setting(default=MISSING, help: str = "", *, default_factory=MISSING, **spec) -> typing.Any:
    """A settings field: ``default`` (none: required), ``help``, and :class:`Spec` entries."""
    metadata = {_KEY: Spec(help=help, **spec)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def share(default: float, help: str, *, zero: bool = True) -> typing.Any:
    """A settings field holding a share or a probability: from 0 (or, with ``zero=False``, above
    it) and below 1, the one range check every such setting makes."""
    bounds = {"minimum": 0} if zero else {"above": 0}
    return setting(default, help, below=1, **bounds)


def inherit(cls, name: str, *, default=MISSING, **changes) -> typing.Any:
    """A settings field that is another settings class's field ``name`` again: the same default,
    help and checks unless ``default`` or Spec ``changes`` say otherwise. The field remembers
    where it came from (:func:`origin_of`), so that a test can hold the two together."""
    field = field_named(cls, name)
    spec = dataclasses.replace(spec_of(field), **changes)
    metadata = {_KEY: spec, _ORIGIN: (cls, name)}
    if default is MISSING and field.default_factory is not MISSING:
        # a mutable default (a dict of node labels) stays a factory: one new value per instance
        return dataclasses.field(default_factory=field.default_factory, metadata=metadata)
    value = default_of(cls, name) if default is MISSING else default
    return dataclasses.field(default=value, metadata=metadata)


def origin_of(field: dataclasses.Field) -> tuple[type, str] | None:
    """The (settings class, field name) a field was inherited from, if it was."""
    return field.metadata.get(_ORIGIN)


def field_named(cls, name: str) -> dataclasses.Field:
    """Field ``name`` of settings class ``cls``; AttributeError naming both when there is none."""
    field = next((f for f in fields(cls) if f.name == name), None)
    if field is None:
        raise AttributeError(f"{cls.__name__} has no setting {name!r}")
    return field


def spec_of(field: dataclasses.Field) -> Spec:
    """The :class:`Spec` of a field (a plain field gets an empty one)."""
    return field.metadata.get(_KEY) or Spec(help="")


def flag_of(field: dataclasses.Field) -> str:
    """The option of a field: ``--batch-size`` for ``batch_size``, unless the spec names one."""
    return spec_of(field).flag or "--" + field.name.replace("_", "-")


def flag_for(cls, name: str) -> str:
    """The option of field ``name`` of ``cls`` (``batch_size``: ``--batch-size``)."""
    return flag_of(field_named(cls, name))


@functools.cache
def _hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


@dataclass(frozen=True)
class _Kind:
    """A field's type, taken apart: the value type, optional, repeated, a mapping, nested."""

    base: type
    optional: bool = False
    repeated: bool = False
    mapping: bool = False
    nested: bool = False


def kind_of(cls, field: dataclasses.Field) -> _Kind:
    """Read ``int``, ``str | None``, ``tuple[str, ...]``, ``dict[str, str]`` or a settings class."""
    hint = _hints(cls)[field.name]
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return _Kind(typing.get_args(hint)[0], optional, repeated=True)
    if origin is dict:
        return _Kind(str, optional, mapping=True)
    if dataclasses.is_dataclass(hint):
        return _Kind(hint, optional, nested=True)
    return _Kind(hint, optional)


def default_of(cls, name: str):
    """The default value of field ``name`` of ``cls``."""
    field = field_named(cls, name)
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    raise ValueError(f"{cls.__name__}.{name} has no default (it is required)")


def help_of(cls, name: str) -> str:
    """The help text of field ``name`` of ``cls``."""
    return spec_of(field_named(cls, name)).help


# -- checks ---------------------------------------------------------------------------------


def _problem(field: dataclasses.Field, value) -> str | None:
    """What is wrong with ``value`` for ``field`` (None: nothing)."""
    spec = spec_of(field)
    if value is None:
        return None
    for item in value if isinstance(value, tuple) else (value,):
        if spec.choices and item not in spec.choices:
            return f"must be one of {', '.join(map(str, spec.choices))}, got {item!r}"
        if (
            isinstance(item, int | float)
            and not isinstance(item, bool)
            and _out_of_range(spec, item)
        ):
            return f"{_range_text(spec)}, got {item}"
    return None


def _out_of_range(spec: Spec, value: float) -> bool:
    return (
        (spec.minimum is not None and value < spec.minimum)
        or (spec.above is not None and value <= spec.above)
        or (spec.maximum is not None and value > spec.maximum)
        or (spec.below is not None and value >= spec.below)
    )


def _range_text(spec: Spec) -> str:
    """``must be >= 1``, ``must be > 0`` or ``must be in [0, 1)``."""
    low = spec.minimum if spec.minimum is not None else spec.above
    high = spec.maximum if spec.maximum is not None else spec.below
    if low is not None and high is not None:
        left = "[" if spec.minimum is not None else "("
        right = "]" if spec.maximum is not None else ")"
        return f"must be in {left}{low:g}, {high:g}{right}"
    if low is not None:
        return f"must be {'>=' if spec.minimum is not None else '>'} {low:g}"
    return f"must be {'<=' if spec.maximum is not None else '<'} {high:g}"


def check(settings) -> None:
    """Raise ValueError naming the first field of ``settings`` whose value its spec refuses."""
    for field in fields(settings):
        problem = _problem(field, getattr(settings, field.name))
        if problem:
            raise ValueError(f"{flag_of(field)} {problem}")


class Settings:
    """Base of settings dataclasses: every instance is checked against its fields' specs."""

    def __post_init__(self):
        check(self)

    def replace(self, **changes):
        """A copy with ``changes`` applied (checked again)."""
        return dataclasses.replace(self, **changes)


# -- command-line options -------------------------------------------------------------------


def _converter(field: dataclasses.Field, kind: _Kind) -> Callable[[str], object]:
    spec = spec_of(field)
    parse = spec.parse or (key_value if kind.mapping else kind.base)

    def convert(text: str):
        try:
            value = parse(text)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err) or f"invalid value {text!r}") from None
        problem = None if spec.choices else _problem(field, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = getattr(kind.base, "__name__", "value")  # argparse names it in its errors
    return convert


def _help(field: dataclasses.Field, default, shown: bool) -> str:
    spec = spec_of(field)
    text = spec.help
    hidden = default is None or default is False or default is MISSING or default in ("", (), {})
    if shown and spec.show_default and not hidden:
        text += f" (default {_shown(default)})"
    return text.replace("%", "%%")


def _shown(value) -> str:
    """A default as it would be typed: ``KEY=VALUE`` pairs, a list joined by commas."""
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items())
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def add_options(parser, cls, *, unset: bool = False, exclude: tuple[str, ...] = ()) -> None:
    """Add the command-line options of settings class ``cls`` to ``parser``.

    A field with no default is a required option (or a positional argument). With ``unset``,
    every option defaults to None, so that the caller can tell which ones were given (see
    :func:`overrides_of`). Nested settings classes add their options in a group of their own
    (groups do not nest: a nested class inside a nested class joins the parser's groups).
    """
    _add_options(parser, parser, cls, unset, exclude)


def _add_options(root, target, cls, unset: bool, exclude: tuple[str, ...]) -> None:
    for field in fields(cls):
        spec = spec_of(field)
        if not spec.cli or field.name in exclude:
            continue
        kind = kind_of(cls, field)
        if kind.nested:
            group = root.add_argument_group(spec.group or spec.help or field.name)
            _add_options(root, group, kind.base, unset, exclude)
            continue
        _add_one(target, cls, field, kind, _default_or_missing(field), unset)


def _default_or_missing(field):
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return MISSING


def _add_one(parser, cls, field, kind: _Kind, default, unset: bool) -> None:
    spec = spec_of(field)
    shown = getattr(cls, "_shown_defaults", {}).get(field.name, default)
    options: dict = {"help": _help(field, shown, True), "dest": field.name}
    names = [flag_of(field), *spec.aliases]
    if spec.positional:
        options.pop("dest")
        names = [field.name]
        options["nargs"] = "+" if kind.repeated else None
        options["metavar"] = spec.metavar or field.name.upper()
        options["type"] = _converter(field, kind)
        parser.add_argument(*names, **{k: v for k, v in options.items() if v is not None})
        return
    if kind.base is bool and not kind.repeated:
        on = shown is not True
        if not on and not spec.flag:
            names = ["--no-" + field.name.replace("_", "-")]
        options.update(action="store_true" if on else "store_false")
        options["help"] = spec.help.replace("%", "%%")
        options["default"] = None if unset else default
        parser.add_argument(*names, **options)
        return
    options["type"] = _converter(field, kind)
    if spec.choices:
        options["choices"] = spec.choices
    if spec.metavar:
        options["metavar"] = spec.metavar
    if kind.repeated or kind.mapping:
        options["action"] = "append"
        options["default"] = None
    elif default is MISSING:
        options["required"] = True
    else:
        options["default"] = None if unset else default
    parser.add_argument(*names, **options)


def from_args(cls, args: argparse.Namespace, **given):
    """Build ``cls`` from parsed arguments; ``given`` values win (fields set by code)."""
    values = {}
    for field in fields(cls):
        if field.name in given:
            values[field.name] = given[field.name]
            continue
        spec, kind = spec_of(field), kind_of(cls, field)
        if kind.nested and spec.cli:
            values[field.name] = from_args(kind.base, args)
            continue
        if not spec.cli or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        if value is None and _default_or_missing(field) is not MISSING:
            continue  # an optional option that was not given: the field's default
        if kind.mapping:
            value = dict(value)
        elif kind.repeated:
            value = tuple(value)
        values[field.name] = value
    return cls(**values)


def to_flags(settings, skip: tuple[str, ...] = ()) -> list[str]:
    """The options that reproduce ``settings`` on a command line (defaults left out)."""
    flags: list[str] = []
    for field in fields(settings):
        spec = spec_of(field)
        value = getattr(settings, field.name)
        if not spec.cli or field.name in skip or value == _default_or_missing(field):
            continue
        kind = kind_of(type(settings), field)
        if kind.nested:
            flags += to_flags(value, skip)
        elif kind.base is bool:
            flags.append(flag_of(field) if value else "--no-" + field.name.replace("_", "-"))
        elif kind.repeated:
            for item in value:
                flags += [flag_of(field), str(item)]
        elif kind.mapping:
            for key, item in value.items():
                flags += [flag_of(field), f"{key}={item}"]
        else:
            flags += [flag_of(field), str(value)]
    return flags


# -- overrides ------------------------------------------------------------------------------


def _given(self) -> dict:
    """The fields of an overrides instance that were set (not None); nested ones as dicts."""
    given = {}
    for f in fields(self):
        value = getattr(self, f.name)
        if hasattr(value, "given"):
            value = value.given() or None
        if value is not None:
            given[f.name] = value
    return given


@functools.cache
def overrides_of(cls) -> type:
    """A twin of settings class ``cls`` whose fields all default to None ("not given").

    Its options show ``cls``'s defaults in their help, are checked like ``cls``'s, and
    ``given()`` returns the values that were set: what a recipe or a search result is overridden
    with.
    """
    twin_fields = []
    for field in fields(cls):
        kind = kind_of(cls, field)
        hint = overrides_of(kind.base) if kind.nested else _hints(cls)[field.name]
        twin_fields.append(
            (
                field.name,
                hint | None if kind.nested or not kind.optional else hint,
                dataclasses.field(default=None, metadata=field.metadata),
            )
        )
    twin = dataclasses.make_dataclass(
        f"{cls.__name__}Overrides",
        twin_fields,
        bases=(Settings,),
        frozen=True,
        namespace={
            "given": _given,
            "__doc__": f"{cls.__name__}'s settings, each None unless given.",
            "_shown_defaults": {f.name: _default_or_missing(f) for f in fields(cls)},
        },
    )
    twin.__module__ = cls.__module__
    return twin


def key_value(text: str) -> tuple[str, str]:
    """Parse ``KEY=VALUE`` (node labels, pipeline parameters)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, value
