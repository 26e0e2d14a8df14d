"""Distributed data parallel on CPU with gloo: N processes train like one process on the same
global batches, only rank 0 writes, and the train command runs as it is under torchrun."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from invmon.stages import preprocess
from invmon.stages.preprocess import PreprocessSettings
from invmon.training import distributed
from invmon.training.config import TrainConfig
from invmon.training.distributed import AllReduceBatchNorm2d
from invmon.training.model import load_model

# fp64: in fp32, rounding alone moves some of ResNet50's gradients at initialisation by tens of
# percent (measured), which would hide any real difference between one process and two.
MECHANICS = TrainConfig(
    epochs=2,
    batch_size=16,
    device="cpu",
    precision="fp64",
    class_weights="balanced",
    label_smoothing=0.1,
    seed=1,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def same_global_batches(split, config, epoch, place, device):
    """Each process's contiguous share of the global batches one process would train on."""
    from invmon.data.shards import LoaderOptions

    options = LoaderOptions(
        config.batch_size, shuffle=True, seed=config.seed * 1000 + epoch, drop_last=True
    )
    share = config.batch_size // place.world_size
    rows = slice(place.rank * share, (place.rank + 1) * share)
    return [(images[rows], targets[rows]) for images, targets in split.loader(options)]


def _fit_worker(rank: int, world: int, port: int, shards: str, out: str):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from invmon.training import loop as train

    train.training_batches = same_global_batches
    train.fit(shards, MECHANICS, out=out, quiet=True)


@pytest.mark.slow
def test_two_processes_compute_what_one_computes_on_the_same_global_batches(shards_dir, tmp_path):
    """The whole fit (process group, DDP, synchronised batch norm, loss normalised by the global
    batch's class weights, metrics summed over processes, evaluation shared out, rank 0 writing)
    with the data order fixed to one process's global batches."""
    one, two = tmp_path / "one", tmp_path / "two"
    for world, out in ((1, one), (2, two)):
        torch.multiprocessing.spawn(
            _fit_worker, args=(world, _free_port(), str(shards_dir), str(out)), nprocs=world
        )
    a = json.loads((one / "history.json").read_text())
    b = json.loads((two / "history.json").read_text())
    assert (a["run"]["processes"], b["run"]["processes"]) == (1, 2)
    for x, y in zip(a["history"], b["history"], strict=True):
        for metric in ("loss", "val_loss", "train_accuracy", "accuracy"):
            assert y[metric] == pytest.approx(x[metric], rel=1e-6), metric
    wa = torch.load(one / "weights.pt", weights_only=True)
    wb = torch.load(two / "weights.pt", weights_only=True)
    assert wa.keys() == wb.keys()  # a plain ResNet50 state dict, loadable by load_model
    for name, tensor in wa.items():  # parameters and BN statistics, relative to their scale
        scale = max(1.0, tensor.abs().max().item())
        assert (tensor - wb[name]).abs().max().item() / scale < 1e-4, name
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


@pytest.fixture(scope="module")
def small_shards(arranged_dir, tmp_path_factory):
    """The test bins in shards of 10, so that two processes get shards of similar total size."""
    out = tmp_path_factory.mktemp("small-shards")
    preprocess.run(
        PreprocessSettings(
            data=str(arranged_dir), out=str(out), image_size=32, shard_size=10, workers=1
        )
    )
    return out


def _train(out, shards, *launcher):
    return [
        *launcher,
        "-m",
        "invmon.cli",
        "train",
        "--data",
        str(shards),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--seed",
        "1",
    ]


@pytest.mark.slow
def test_the_train_command_runs_under_torchrun(small_shards, tmp_path):
    """torchrun with 2 processes (gloo): each reads its own shards; only rank 0 prints and
    writes; the result is a model like one process's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    a = subprocess.run(
        _train(one, small_shards, sys.executable), capture_output=True, text=True, env=env
    )
    b = subprocess.run(
        _train(two, small_shards, *torchrun, "--nproc-per-node", "2"),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    assert "2 processes" in b.stderr
    assert sum(" epoch=" in line for line in b.stdout.splitlines()) == 2
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    ha = json.loads((one / "history.json").read_text())["history"]
    hb = json.loads((two / "history.json").read_text())["history"]
    # Other batches (each process reads its own shards), the same model at the start: the first
    # epoch's loss is close; the strict comparison is the test above.
    assert hb[0]["loss"] == pytest.approx(ha[0]["loss"], rel=0.25)
    _model, config = load_model(two)
    assert config.training["epochs_run"] == 2


def test_a_batch_that_does_not_split_evenly_is_refused(monkeypatch):
    from invmon.training.loop import fit

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
