"""Every invmon command shown in the README and docs parses, and every path they name exists."""

import re
import shlex
from pathlib import Path

import pytest

from invmon.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _shell_lines(text: str) -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def _invmon_commands(path: Path) -> list[list[str]]:
    commands = []
    for line in _shell_lines(path.read_text()):
        for part in re.split(r"&&|;", line.split("#")[0]):
            words = shlex.split(part.strip())
            if words and words[0] in ("invmon", ".venv/bin/invmon"):
                commands.append(words[1:])
    return commands


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_invmon_commands_in_docs_parse(doc):
    parser = build_parser()
    for args in _invmon_commands(doc):
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{doc.name}: `invmon {' '.join(args)}` does not parse")


def test_docs_show_commands_for_every_cluster_step():
    commands = {args[0] for args in _invmon_commands(ROOT / "docs" / "cluster.md")}
    assert {"compile", "submit"} <= commands


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_named_in_docs_exist(doc):
    for path in re.findall(
        r"(?<![\w/.])((?:manifests|scripts|images|pipelines|docs)/[\w./-]*\w)", doc.read_text()
    ):
        assert (ROOT / path).exists(), f"{doc.name} names {path}, which does not exist"
