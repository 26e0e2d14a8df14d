"""Checkpoints: written atomically every epoch; a killed run resumes after its last completed
epoch and ends like an uninterrupted run with the same seed."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from invmon.training.checkpoint import CHECKPOINT_FILE, CheckpointStore, beside
from invmon.training.config import TrainConfig
from invmon.training.loop import fit

EPOCHS = 4


def _train(shards_dir, out, *extra):
    return [
        sys.executable,
        "-m",
        "invmon.cli",
        "train",
        "--data",
        str(shards_dir),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--seed",
        "3",
        *extra,
    ]


def _run(command):
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _epochs_printed(stdout: str) -> list[int]:
    lines = [line for line in stdout.splitlines() if " epoch=" in line]
    return [int(line.split(" epoch=")[1].split()[0]) for line in lines]


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(shards_dir, tmp_path):
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train(shards_dir, killed), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in process.stdout:
        if " epoch=2 " in line:  # printed after epoch 2's checkpoint is written
            process.send_signal(signal.SIGKILL)  # mid-epoch 3, no chance to clean up
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    # The default checkpoint lives beside the model folder, not in it (checkpoint.beside).
    checkpoint = Path(beside(killed))
    assert checkpoint.parent == killed.parent
    saved = torch.load(checkpoint / CHECKPOINT_FILE, weights_only=True)
    assert saved["epoch"] == 2
    assert not (killed / "weights.pt").exists()

    resumed = _run(_train(shards_dir, killed))
    assert resumed.returncode == 0, resumed.stderr
    assert _epochs_printed(resumed.stdout) == [3, 4]
    assert "resuming from" in resumed.stderr and "after epoch 2" in resumed.stderr

    straight = tmp_path / "straight"
    whole = _run(_train(shards_dir, straight))
    assert whole.returncode == 0, whole.stderr
    assert _epochs_printed(whole.stdout) == [1, 2, 3, 4]

    a = json.loads((killed / "history.json").read_text())
    b = json.loads((straight / "history.json").read_text())
    assert [e["epoch"] for e in a["history"]] == [1, 2, 3, 4]
    for x, y in zip(a["history"], b["history"], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)
        assert x["accuracy"] == pytest.approx(y["accuracy"], abs=1e-9)
    assert a["run"]["resumed_after_epoch"] == 2 and b["run"]["resumed_after_epoch"] == 0
    wa = torch.load(killed / "weights.pt", weights_only=True)
    wb = torch.load(straight / "weights.pt", weights_only=True)
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4
    assert not checkpoint.exists()  # removed once the model was saved


def test_a_checkpoint_of_other_settings_is_refused(shards_dir, tmp_path):
    config = TrainConfig(epochs=1, batch_size=32, device="cpu")
    CheckpointStore(tmp_path).save(
        {"config": {**config.__dict__, "lr": 0.5}, "epoch": 1, "model": {}}
    )
    with pytest.raises(ValueError, match=r"lr=0.5 \(now 0.002\).*--no-resume"):
        fit(shards_dir, config, checkpoint=tmp_path, quiet=True)
    # --no-resume starts over and overwrites it.
    result = fit(shards_dir, config, checkpoint=tmp_path, resume=False, quiet=True)
    assert len(result.history) == 1
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["epoch"] == 1


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save({"epoch": 1, "weights": torch.ones(3)})

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save({"epoch": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    assert store.load()["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # no temporary file left


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"{CHECKPOINT_FILE} is not a loadable checkpoint"):
        CheckpointStore(tmp_path).load()


def test_s3_checkpoint_store_round_trip(s3_url, monkeypatch):
    from invmon.data.s3 import make_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    make_client(s3_url).create_bucket(Bucket="ckpt")
    store = CheckpointStore("s3://ckpt/run-1", endpoint_url=s3_url)
    assert store.load() is None
    store.save({"epoch": 3, "weights": torch.arange(4)})
    assert store.load()["epoch"] == 3 and str(store) == "s3://ckpt/run-1/checkpoint.pt"
    store.clear()
    assert store.load() is None
