"""benchmarks/gpu.py, the prepared GPU check, runs its whole smoke version on a CPU.

The GPU machine it is prepared for has PyTorch, torchvision, numpy and PIL and none of our other
dependencies, so the script runs here with those others made unimportable (a ``sitecustomize``
that refuses them, inherited by torchrun's workers and preprocess's pool): a module of the chain
that starts importing boto3, kfp or kserve at import time fails this test. No timing is asserted:
the figures of a CPU smoke run mean nothing; their presence and shape do.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Our dependencies that the GPU machine does not have (its own PyTorch stack is all it has).
ABSENT_THERE = (
    "boto3",
    "botocore",
    "s3transfer",
    "kfp",
    "kserve",
    "kubernetes",
    "kubeflow",
    "moto",
    "optuna",
    "cmaes",
    "tritonclient",
    "fastapi",
    "uvicorn",
)
BLOCKER = f"""
import importlib.abc, sys

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {ABSENT_THERE!r}:
            raise ModuleNotFoundError(f"{{name}} is not installed on the GPU machine", name=name)
        return None

sys.meta_path.insert(0, _Absent())
"""
PARTS = ("data", "matmul", "training", "compiled", "loader", "ddp", "serving")


def _numbers(value, where=""):
    """Every number in a JSON document, with where it is."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for number, item in enumerate(value):
            yield from _numbers(item, f"{where}[{number}]")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    """One smoke run of the script: its gpu.json and gpu.txt."""
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path_factory.mktemp("gpu")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "src")]),
        "OMP_NUM_THREADS": "1",
    }
    script = str(ROOT / "benchmarks" / "gpu.py")
    done = subprocess.run(
        [sys.executable, script, "--device", "cpu", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.txt").read_text()


@pytest.mark.slow
def test_every_part_ran_and_every_figure_is_a_finite_number(smoke):
    data, _text = smoke
    assert data["skipped"] == {} and data["errors"] == {}
    for part in PARTS:
        assert data[part], part
    numbers = list(_numbers(data))
    assert numbers
    assert [where for where, value in numbers if not math.isfinite(value)] == []
    assert data["environment"]["device"] == "cpu"


@pytest.mark.slow
def test_training_compares_the_loop_with_the_bare_loop_at_each_batch_size(smoke):
    data, text = smoke
    sizes = data["settings"]["batch_sizes"]
    assert sorted(data["training"]["batches"]) == sorted(str(s) for s in sizes)
    assert data["compiled"]["compile_backend"] == "eager"  # said, not hidden:
    assert "compiled with torch.compile's 'eager' backend, not Inductor" in text
    for part in ("training", "compiled"):
        for batch in data[part]["batches"].values():
            loop, bare = batch["loop"], batch["bare"]
            assert loop["images_per_second"] > 0 and bare["images_per_second"] > 0
            assert batch["loop_vs_bare"] == pytest.approx(
                loop["images_per_second"] / bare["images_per_second"]
            )
            assert loop["peak_memory_mib"] > 0 and loop["steps"] >= 1


@pytest.mark.slow
def test_the_loader_is_set_against_the_fastest_training_rate(smoke):
    data, _text = smoke
    loader = data["loader"]
    rates = [
        run["images_per_second"]
        for part in ("training", "compiled")
        for batch in data[part]["batches"].values()
        for run in (batch["loop"], batch["bare"])
    ]
    assert loader["training_images_per_second"] == pytest.approx(max(rates))
    assert loader["loader_vs_training"] == pytest.approx(loader["images_per_second"] / max(rates))
    assert loader["workers"] == 0  # on a CPU the loop reads in its own process


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun_train_with_one_process_loss(smoke):
    data, _text = smoke
    ddp = data["ddp"]
    assert (ddp["processes"], ddp["backend"], ddp["wrapped"]) == (2, "gloo", True)
    assert len(ddp["single_losses"]) == len(ddp["ddp_losses"]) == data["settings"]["ddp_steps"]
    assert ddp["within_tolerance"], ddp
    for single, launched in zip(ddp["single_losses"], ddp["ddp_losses"], strict=True):
        assert launched == pytest.approx(single, rel=ddp["tolerance"])


@pytest.mark.slow
def test_the_predictor_path_and_the_bare_forward_at_each_batch(smoke):
    data, _text = smoke
    serving = data["serving"]
    assert serving["graph"] == "frozen"
    assert sorted(serving["batches"], key=int) == [
        str(s) for s in data["settings"]["serve_batches"]
    ]
    for batch in serving["batches"].values():
        for who in ("counter", "bare"):
            assert batch[f"{who}_images_per_second"] > 0
            assert batch[f"{who}_p99_ms"] >= batch[f"{who}_p50_ms"] > 0


@pytest.mark.slow
def test_the_summary_ends_with_every_ratio_and_its_target(smoke):
    data, text = smoke
    names = [row["name"] for row in data["targets"]]
    for prefix in ("training loop/bare", "compiled loop/bare", "loader/training", "ddp loss"):
        assert any(name.startswith(prefix) for name in names), prefix
    assert sum(name.startswith("predictor/bare") for name in names) == 3
    for row in data["targets"]:
        assert row["name"] in text
        if row["target"] is not None:
            assert row["met"] in (True, False)
    assert "matmul" in text and "not measured" not in text
    assert "our loop's best:" in text and "held back by:" in text
