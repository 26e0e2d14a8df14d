"""The README's serving example, run byte for byte against a running server.

The commands are read from the README's "Serving" section, not copied here: the only change
made to them is the port of ``localhost:8080`` (a free port instead), and they run in a folder
holding the image files they name. The server is the serving image's entry point with its
defaults (staged loading), as a new user would start it.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from invmon.data.synth import make_bin
from invmon.serving.server import LocalServer

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "localhost:8080"


def serving_commands() -> tuple[list[str], str]:
    """The shell commands of the README's first bash block under "## Serving", and the block."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Serving\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")], block


@pytest.fixture(scope="module")
def server(model_dir):
    with LocalServer(model_dir) as running:
        yield running


@pytest.fixture
def workdir(tmp_path):
    """A folder holding the image files the README's commands name."""
    _, block = serving_commands()
    for name in set(re.findall(r"[\w-]+\.jpg", block)):
        (tmp_path / name).write_bytes(make_bin(seed=11, number=len(name), max_items=5)[1])
    return tmp_path


def run(command: str, server: LocalServer, cwd: Path) -> subprocess.CompletedProcess:
    assert PLACEHOLDER in command, command
    command = command.replace(PLACEHOLDER, f"localhost:{server.port}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_readme_shows_a_v1_curl_and_an_invmon_predict_command():
    commands, _ = serving_commands()
    assert [c.split()[0] for c in commands] == ["curl", "invmon"]


def test_every_serving_command_in_the_readme_works_as_written(server, workdir):
    commands, block = serving_commands()
    shown = re.search(r"# (\{\"predictions\".*)", block).group(1)  # the answer the README shows
    for command in commands:
        result = run(command, server, workdir)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        if command.startswith("curl"):
            answer = json.loads(result.stdout)
            assert "predictions" in answer, answer
            prediction = answer["predictions"][0]
            assert list(prediction) == re.findall(r'"(\w+)": ', shown)[1:]
            assert prediction["count"] in range(6)
        else:
            lines = result.stdout.strip().splitlines()
            named = re.findall(r"[\w-]+\.jpg", command)
            assert [line.split("\t")[0] for line in lines] == named, result.stdout
