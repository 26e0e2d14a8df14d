"""DDP check of benchmarks/gpu.py: a few training steps under torchrun against one process.

torchrun starts one process per GPU (gloo processes on a CPU), as our TrainJob starts
``invmon train``; each joins the process group through :func:`invmon.training.distributed.init`
and trains with :func:`invmon.training.loop.train_one_epoch` through the project's DDP wrapping.
The data order is fixed to one process's global batches (each process takes its share of each),
as the DDP equivalence test in tests/ does, so that the loss of every step can be compared with
one process's loss on the same batches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from invmon.training import distributed


@dataclass(frozen=True)
class _GroupOfOne(distributed.Distributed):
    """One process in a process group of one.

    torchrun with one process per GPU on a one-GPU machine gives a world of one, for which
    :func:`invmon.training.distributed.init` joins no group and nothing is wrapped. On such a
    machine this check joins a group of one anyway, so that NCCL, DistributedDataParallel and
    SyncBatchNorm run as they do with several GPUs.
    """

    @property
    def enabled(self) -> bool:
        return True


def _join(device: torch.device) -> distributed.Distributed:
    place = distributed.init(device)
    if place.enabled or "RANK" not in os.environ:
        return place
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(place.local_rank)
    torch.distributed.init_process_group(backend)
    return _GroupOfOne(place.rank, place.world_size, place.local_rank, backend)


def _fixed_global_batches(split, config, epoch, place, device):
    """Step ``epoch`` of one process's epoch, this process's contiguous share of it."""
    from invmon.data.shards import LoaderOptions

    options = LoaderOptions(config.batch_size, shuffle=True, seed=config.seed, drop_last=True)
    loader = split.loader(options)
    images, targets = loader.batches[(epoch - 1) % len(loader)]
    share = config.batch_size // place.world_size
    rows = slice(place.rank * share, (place.rank + 1) * share)
    return [(images[rows], targets[rows])]


def step_losses(params: dict, place: distributed.Distributed) -> list[float]:
    """The loss of each of ``params["steps"]`` training steps (one step per "epoch")."""
    from invmon.data.shards import DatasetIndex
    from invmon.training import loop
    from invmon.training.config import TrainConfig

    device = place.device(torch.device(params["device"]))
    config = TrainConfig(
        batch_size=params["batch_size"],
        epochs=params["steps"],
        device=device.type,
        precision=params["precision"],
        channels_last=True,
        seed=0,
    )
    index = DatasetIndex.read(params["shards"])
    split = index.split("train")
    original = loop.training_batches
    loop.training_batches = _fixed_global_batches
    try:
        loop.seed_everything(config.seed)
        run = loop.build_run(config, index, split, device, place)
        return [
            loop.train_one_epoch(run, split, config, index.preprocessing, epoch)[0]
            for epoch in range(1, config.epochs + 1)
        ]
    finally:
        loop.training_batches = original


def worker(params_file: str) -> None:
    """One torchrun process: train the steps; rank 0 writes the losses to ``params["result"]``."""
    params = json.loads(Path(params_file).read_text())
    place = _join(torch.device(params["device"]))
    try:
        losses = step_losses(params, place)
        if place.is_main:
            result = {
                "losses": losses,
                "processes": place.world_size,
                "backend": place.backend,
                "wrapped": place.enabled,
            }
            Path(params["result"]).write_text(json.dumps(result))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch(script: str, params: dict, processes: int, timeout: float, folder: Path) -> dict:
    """Run ``script --ddp-worker`` under torchrun with ``processes`` per node; its result."""
    params = {**params, "result": str(folder / "ddp-result.json")}
    params_file = folder / "ddp-params.json"
    params_file.write_text(json.dumps(params))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        script,
        "--ddp-worker",
        str(params_file),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # A session of its own, so that a run out of time is ended with torchrun's workers.
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = child.communicate(timeout=timeout)
    except BaseException:  # out of time, or the whole run's budget ran out meanwhile
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise
    if child.returncode != 0:
        raise RuntimeError(f"torchrun exited with {child.returncode}: {output[-2000:]}")
    return json.loads(Path(params["result"]).read_text())


def compare(single: list[float], ddp: list[float], tolerance: float) -> dict:
    """Step-by-step relative differences between the one-process and the DDP losses."""
    differences = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(single, ddp, strict=True)]
    worst = max(differences)
    return {
        "single_losses": single,
        "ddp_losses": ddp,
        "max_relative_difference": worst,
        "tolerance": tolerance,
        "within_tolerance": worst <= tolerance,
    }
