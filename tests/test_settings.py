"""Stage settings: one dataclass field gives the option, its help, its check and its rendering."""

import argparse
import re
from dataclasses import dataclass

import pytest

from invmon.core.settings import (
    Settings,
    add_options,
    default_of,
    from_args,
    overrides_of,
    setting,
    to_flags,
)


@dataclass(frozen=True)
class Inner(Settings):
    """A nested group."""

    endpoint_url: str | None = setting(None, help="S3 endpoint")
    anonymous: bool = setting(False, help="unsigned requests")


@dataclass(frozen=True)
class Example(Settings):
    """Every kind of field the stages use."""

    out: str = setting(help="output folder")
    batch_size: int = setting(32, help="images per batch", minimum=1)
    lr: float = setting(2e-3, help="learning rate", above=0)
    dropout: float = setting(0.0, help="dropout", minimum=0, below=1)
    mode: str = setting("fast", help="how", choices=("fast", "slow"))
    channels_last: bool = setting(True, help="keep NCHW")
    labels: dict[str, str] = setting(default_factory=dict, help="node labels")
    tags: tuple[str, ...] = setting((), help="tags")
    s3: Inner = setting(default_factory=Inner, help="S3 access")
    internal: int = setting(0, help="set by code", cli=False)
    seed: int = setting(0, help="random seed")
    empty: str = setting("", help="empty means none")


def _parse(*argv, cls=Example, **kwargs):
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_options(parser, cls, **kwargs)
    return parser, parser.parse_args(list(argv))


def test_options_are_derived_from_the_fields():
    _, args = _parse(
        "--out", "o", "--batch-size", "8", "--no-channels-last", "--labels", "a=b", "--tags", "x"
    )
    settings = from_args(Example, args)
    assert settings == Example(
        out="o", batch_size=8, channels_last=False, labels={"a": "b"}, tags=("x",)
    )
    assert settings.s3 == Inner()


def test_help_shows_each_default_once_and_the_nested_group():
    parser, _ = _parse("--out", "o")
    text = " ".join(parser.format_help().split())
    assert "images per batch (default 32)" in text
    assert "--no-channels-last keep NCHW" in text
    assert "S3 access:" in text and "--endpoint-url" in text
    assert "--internal" not in text
    assert "random seed (default 0)" in text  # 0 is a default worth showing, unlike False or ""
    assert "empty means none (default" not in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "must be >= 1, got 0"),
        (["--lr", "0"], "must be > 0, got 0"),
        (["--dropout", "1"], "must be in [0, 1), got 1"),
        (["--labels", "novalue"], "expected KEY=VALUE"),
    ],
)
def test_the_command_line_refuses_what_the_field_refuses(argv, message):
    with pytest.raises(argparse.ArgumentError, match=re.escape(message)):
        _parse("--out", "o", *argv)


def test_every_instance_is_checked_whoever_makes_it():
    with pytest.raises(ValueError, match=r"--batch-size must be >= 1, got 0"):
        Example(out="o", batch_size=0)
    with pytest.raises(ValueError, match=r"--mode must be one of fast, slow, got 'quick'"):
        Example(out="o", mode="quick")


def test_a_required_field_is_a_required_option(capsys):
    with pytest.raises(SystemExit):
        _parse()
    assert "the following arguments are required: --out" in capsys.readouterr().err


def test_to_flags_reproduces_the_settings_on_a_command_line():
    settings = Example(out="o", lr=0.5, channels_last=False, tags=("a", "b"), labels={"k": "v"})
    flags = to_flags(settings, skip=("out",))
    assert flags == [
        "--lr",
        "0.5",
        "--no-channels-last",
        "--labels",
        "k=v",
        "--tags",
        "a",
        "--tags",
        "b",
    ]
    _, args = _parse("--out", "o", *flags)
    assert from_args(Example, args) == settings


def test_overrides_tell_given_options_from_defaults():
    overrides = overrides_of(Example)
    parser, args = _parse("--lr", "0.1", cls=overrides)
    given = from_args(overrides, args).given()
    assert given == {"lr": 0.1}
    assert "learning rate (default 0.002)" in " ".join(parser.format_help().split())
    with pytest.raises(ValueError, match="--lr must be > 0"):
        overrides(lr=-1.0)


def test_default_of_names_a_missing_setting():
    assert default_of(Example, "batch_size") == 32
    with pytest.raises(AttributeError, match="no setting 'size'"):
        default_of(Example, "size")


def test_an_inherited_mutable_default_stays_one_new_value_per_instance():
    """inherit() of a dict setting made a shared (refused) default; it keeps the factory now, and
    the origin's flag, metavar and checks, with the help the inheriting class gives."""
    from invmon.core.settings import inherit, origin_of, spec_of

    @dataclass(frozen=True)
    class Heir(Settings):
        labels: dict[str, str] = inherit(Example, "labels", help="labels of the heir")  # noqa: RUF009

    first, second = Heir(), Heir()
    assert first.labels == {} and first.labels is not second.labels
    field = next(iter(Heir.__dataclass_fields__.values()))
    assert origin_of(field) == (Example, "labels")
    assert spec_of(field).help == "labels of the heir"
    parser = argparse.ArgumentParser()
    add_options(parser, Heir)
    assert from_args(Heir, parser.parse_args(["--labels", "a=b"])).labels == {"a": "b"}
