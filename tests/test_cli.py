"""The invmon command line: --help everywhere, one-line errors naming the bad value."""

import subprocess
import sys
from dataclasses import dataclass

import pytest

from invmon import cli
from invmon.cli import build_parser, main
from invmon.core.command import Command, Incomplete
from invmon.core.settings import Settings

COMMANDS = [
    "synth",
    "ingest",
    "ingest-plan",
    "ingest-merge",
    "arrange",
    "preprocess",
    "tune",
    "train",
    "evaluate",
    "deploy",
    "register",
    "serve",
    "recount",
    "monitor",
    "compile",
    "run",
]


def _invmon(*args):
    return subprocess.run(
        [sys.executable, "-m", "invmon.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_every_stage_has_a_subcommand():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(COMMANDS) <= set(choices)


def test_top_level_help_lists_every_command_with_its_help_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    full = build_parser()._subparsers._group_actions[0]
    for choice in full._choices_actions:
        assert f"{choice.dest} {choice.help}" in out


@pytest.mark.parametrize(
    "args", [["--help"], ["synth", "--help"], ["compile", "--help"], ["predict", "--help"]]
)
def test_light_commands_do_not_import_the_heavy_stages(args):
    """Only the command being run has its parser built, so help and the data stages start fast."""
    code = (
        "import sys\n"
        "from invmon.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'kserve', 'kubernetes') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: invmon " + command in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["train", "--data", "d", "--out", "o", "--lr", "fast"], "--lr"),
        (["ingest", "--source", "s3://b", "--out", "o", "--workers", "0"], "--workers"),
        (["tune", "--data", "d", "--out", "o", "--algorithm", "magic"], "--algorithm"),
        (["synth", "--out", "o"], "--count"),
        (["monitor", "--reference", "r", "--p-value", "2"], "--p-value"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_wrong_argument_gets_one_line_error(args, named):
    result = _invmon(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


def test_bad_value_found_by_the_stage_is_one_line_too(tmp_path):
    result = _invmon(
        "arrange", "--raw", str(tmp_path), "--out", str(tmp_path / "o"), "--classes", "five"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--classes" in lines[0]


def test_stages_chain_from_the_command_line(tmp_path):
    for args in (
        ["synth", "--out", str(tmp_path / "raw"), "--count", "30", "--seed", "4"],
        ["arrange", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "arr")],
        [
            "preprocess",
            "--data",
            str(tmp_path / "arr"),
            "--out",
            str(tmp_path / "sh"),
            "--image-size",
            "32",
        ],
    ):
        result = _invmon(*args)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "sh" / "index.json").is_file()


def test_deploy_dry_run_prints_the_manifest(capsys):
    assert main(["deploy", "--model-uri", "s3://models/m", "--name", "counter", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kind: InferenceService" in out and "s3://models/m" in out


@dataclass(frozen=True)
class _NoOptions(Settings):
    """A command without options."""


def _half_done(result, settings):
    raise Incomplete("1 of 2 things failed", output="thing 1: done", details=("thing 2: refused",))


HALF_DONE = Command(_NoOptions, lambda settings: None, description="half", show=_half_done)


def test_a_partial_failure_prints_what_was_done_then_fails(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "half", (f"{__name__}:HALF_DONE", "does half its work"))
    assert main(["half"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "thing 1: done\n"
    assert captured.err == "thing 2: refused\ninvmon half: failed: 1 of 2 things failed\n"
