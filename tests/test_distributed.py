"""Distributed data parallel on CPU with gloo: two processes under torchrun train like one process
on the same global batch, and only rank 0 writes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from invmon import distributed
from invmon.distributed import AllReduceBatchNorm2d


def _train(out, *launcher):
    return [
        *launcher,
        "-m",
        "invmon.cli",
        "train",
        "--data",
        "{shards}",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        # fp64: in fp32, rounding alone moves some of ResNet50's gradients at initialisation by
        # tens of percent (measured), which would hide any real difference.
        "--precision",
        "fp64",
        "--seed",
        "1",
    ]


@pytest.mark.slow
def test_two_processes_train_like_one_on_the_same_global_batch(shards_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    single = [a.replace("{shards}", str(shards_dir)) for a in _train(one, sys.executable)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    ddp = [
        a.replace("{shards}", str(shards_dir))
        for a in _train(two, *torchrun, "--nproc-per-node", "2")
    ]
    a = subprocess.run(single, capture_output=True, text=True, timeout=600, env=env)
    b = subprocess.run(ddp, capture_output=True, text=True, timeout=600, env=env)
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    assert "2 processes" in b.stderr

    ha = json.loads((one / "history.json").read_text())
    hb = json.loads((two / "history.json").read_text())
    assert hb["run"]["processes"] == 2
    for x, y in zip(ha["history"], hb["history"], strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6)
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-6)
        assert y["train_accuracy"] == pytest.approx(x["train_accuracy"], abs=1e-9)
        assert y["accuracy"] == pytest.approx(x["accuracy"], abs=1e-9)
    wa = torch.load(one / "weights.pt", weights_only=True)
    wb = torch.load(two / "weights.pt", weights_only=True)
    assert wa.keys() == wb.keys()  # a plain ResNet50 state dict, loadable by load_model
    for name, tensor in wa.items():  # parameters and BN statistics, relative to their scale
        scale = max(1.0, tensor.abs().max().item())
        assert (tensor - wb[name]).abs().max().item() / scale < 1e-4, name

    # Only rank 0 printed and wrote: the same files, one metric line per epoch.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sum(" epoch=" in line for line in b.stdout.splitlines()) == 2


def test_a_batch_that_does_not_split_evenly_is_refused(monkeypatch):
    from invmon.train import TrainConfig, fit

    monkeypatch.setattr(
        distributed, "init", lambda device: distributed.Distributed(rank=0, world_size=3)
    )
    with pytest.raises(ValueError, match="--batch-size 16 is not divisible by the 3"):
        fit("unused", TrainConfig(batch_size=16, device="cpu"))


def test_environment_is_read_as_torchrun_sets_it():
    assert distributed.from_environment({}) == distributed.Distributed()
    place = distributed.from_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (place.rank, place.world_size, place.local_rank, place.is_main) == (3, 8, 1, False)
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        distributed.from_environment({"RANK": "0", "WORLD_SIZE": "2"})


def test_all_reduce_batchnorm_is_batchnorm_outside_distributed_training():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    converted = AllReduceBatchNorm2d.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    converted.load_state_dict(reference.state_dict())
    assert isinstance(converted[1], AllReduceBatchNorm2d)
    assert converted.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(6, 3, 8, 8)
    assert torch.allclose(converted(x), reference(x))


def _all_reduce_bn_worker(rank: int, init_file: str, batch: torch.Tensor, result_file: str):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    torch.manual_seed(0)
    bn = AllReduceBatchNorm2d(3)
    share = batch[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
    out = bn(share)
    (out * torch.arange(out.numel()).view_as(out)).sum().backward()
    torch.save(
        {"out": out.detach(), "grad": share.grad, "running_var": bn.running_var},
        f"{result_file}.{rank}",
    )
    torch.distributed.destroy_process_group()


def test_all_reduce_batchnorm_matches_batchnorm_on_the_global_batch(tmp_path):
    """Two gloo processes, each with half the batch, compute what BatchNorm2d computes on all
    of it: outputs, input gradients and running statistics."""
    torch.manual_seed(1)
    batch = torch.randn(8, 3, 5, 5) * 3 + 1
    torch.multiprocessing.spawn(
        _all_reduce_bn_worker,
        args=(str(tmp_path / "init"), batch, str(tmp_path / "result")),
        nprocs=2,
    )
    reference = nn.BatchNorm2d(3)
    whole = batch.clone().requires_grad_(True)
    out = reference(whole)
    (out * torch.cat([torch.arange(out.numel() // 2).view_as(out[:4])] * 2)).sum().backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"result.{rank}", weights_only=True)
        rows = slice(rank * 4, (rank + 1) * 4)
        assert torch.allclose(got["out"], out[rows].detach(), atol=1e-5)
        assert torch.allclose(got["grad"], whole.grad[rows], atol=1e-5)
        assert torch.allclose(got["running_var"], reference.running_var, atol=1e-5)
