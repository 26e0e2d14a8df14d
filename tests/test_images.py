"""images/: one Dockerfile per image; hadolint-clean, pinned bases, non-root final stage."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from invmon.cluster.container_images import IMAGE_NAMES

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "images" / name / "Dockerfile" for name in IMAGE_NAMES]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint is not installed (it is a dev dependency: bash scripts/setup.sh)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IMAGE_NAMES)
def test_hadolint_passes(dockerfile):
    result = subprocess.run([_hadolint(), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IMAGE_NAMES)
def test_final_stage_runs_as_non_root(dockerfile):
    lines = dockerfile.read_text().splitlines()
    final_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    users = [line.split()[1] for line in lines[final_from:] if line.startswith("USER ")]
    assert users, f"{dockerfile}: the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IMAGE_NAMES)
def test_base_images_are_pinned_and_multi_stage(dockerfile):
    text = dockerfile.read_text()
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)", text, flags=re.M)
    assert bases and all(re.search(r":\d+\.\d+\.\d+", b) or "@sha256:" in b for b in bases)
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2
    final = text[text.rindex("\nFROM ") :]
    assert "pip install" not in final  # no build tools or caches
    if dockerfile.parent.name == "engine":  # the compiler is what this image is for
        assert "--no-install-recommends g++=" in final and "rm -rf /var/lib/apt/lists" in final
    else:
        assert "apt-get" not in final


def test_the_engine_image_has_the_serving_images_python_packages():
    """The prebuilt engine must be built with the torch the predictor runs (its manifest says
    which): both images install the project from the same lock file in the same way."""

    def build_stage(name: str) -> str:
        text = (ROOT / "images" / name / "Dockerfile").read_text()
        start = text.index("\nFROM ")
        return text[start : text.index("\nFROM ", start + 1)]

    assert build_stage("engine") == build_stage("serve")


def test_the_train_image_does_not_expose_every_gpu():
    """Issue 22, item 12: NVIDIA_VISIBLE_DEVICES=all in the image makes the NVIDIA runtime hand
    every GPU of the node to a pod that requested none (evaluate, the CPU tasks); the device
    plugin sets the variable for pods that request nvidia.com/gpu."""
    lines = (ROOT / "images" / "train" / "Dockerfile").read_text().splitlines()
    instructions = [line for line in lines if not line.lstrip().startswith("#")]
    assert not [line for line in instructions if "NVIDIA_VISIBLE_DEVICES" in line]
