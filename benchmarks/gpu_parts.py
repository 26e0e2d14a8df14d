"""The measurements of benchmarks/gpu.py: synthetic shards, the matrix-product reference, training
(our loop against a bare loop), the shard loader, and the predictor against a bare forward.

Each function measures one thing against its baseline in the same process and returns plain
numbers; gpu.py decides what runs, in which time budget, and writes the report. Only torch,
torchvision, numpy, PIL and invmon are imported, so that this runs on a machine that has PyTorch
and nothing else of ours.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import resource
import shutil
import statistics
import time
from pathlib import Path

import torch

TRAIN_SHARE = 0.8  # of the synthetic bins; the rest is the test split arrange asks for


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only; a process's peak RSS cannot be reset)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated since :func:`reset_peak`; on a CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- data ------------------------------------------------------------------------------------


def make_shards(root: Path, images: int, image_size: int, distinct: int, workers: int) -> Path:
    """Shards of about ``images`` synthetic training bins, written by the project's own stages.

    ``distinct`` bins are drawn by synth (drawing is the slow part), then repeated under new bin
    ids up to ``images`` before arrange and preprocess (which decodes every one, as for real data).
    Returns the shards folder.
    """
    from invmon.data import abid
    from invmon.data.synth import synthesize
    from invmon.stages import arrange, preprocess
    from invmon.stages.arrange import ArrangeSettings
    from invmon.stages.preprocess import PreprocessSettings

    drawn, raw = root / "drawn", root / "raw"
    distinct = min(distinct, images)
    synthesize(str(drawn), distinct, seed=0, workers=workers)
    for folder in (abid.IMAGE_DIR, abid.METADATA_DIR):
        (raw / folder).mkdir(parents=True, exist_ok=True)
    bins = math.ceil(images / TRAIN_SHARE)  # arrange needs a test split beside the train split
    for number in range(1, bins + 1):
        source = abid.format_bin_id((number - 1) % distinct + 1)
        target = abid.format_bin_id(number)
        os.link(drawn / abid.image_key(source), raw / abid.image_key(target))
        shutil.copyfile(drawn / abid.metadata_key(source), raw / abid.metadata_key(target))
    split = f"{TRAIN_SHARE},0,{1 - TRAIN_SHARE:.2f}"
    arranged, shards = root / "arranged", root / "shards"
    arrange.run(ArrangeSettings(raw=str(raw), out=str(arranged), classes="0-5", split=split))
    shard_size = max(8, images // 8)  # several shards: ranks and loader workers read their own
    preprocess.run(
        PreprocessSettings(
            data=str(arranged),
            out=str(shards),
            image_size=image_size,
            shard_size=shard_size,
            workers=workers,
        )
    )
    return shards


# -- the card's reference --------------------------------------------------------------------


def matmul_tflops(device: torch.device, size: int, repeats: int = 10) -> dict:
    """bf16 ``size`` x ``size`` matrix products on random data: the card's practical peak."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    for _ in range(3):
        torch.mm(a, b)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    sync(device)
    seconds = (time.perf_counter() - start) / repeats
    return {"size": size, "seconds_per_product": seconds, "tflops": 2 * size**3 / seconds / 1e12}


# -- training --------------------------------------------------------------------------------


def train_config(device: torch.device, batch_size: int, compile_model: bool, **extra):
    """The recipe every training measurement uses: bf16 autocast, channels_last, Adam."""
    from invmon.training.config import TrainConfig

    return TrainConfig(
        batch_size=batch_size,
        epochs=2,
        device=device.type,
        precision="bf16",
        channels_last=True,
        compile=compile_model,
        seed=0,
        **extra,
    )


@contextlib.contextmanager
def compile_backend(backend: str):
    """Make ``torch.compile`` use ``backend`` meanwhile (the loop calls it with no backend).

    ``inductor`` is torch.compile's own default and leaves it alone; the smoke run on a CPU asks
    for ``eager`` (graph capture only), since Inductor's C++ build of ResNet50 takes minutes there.
    """
    original = torch.compile
    if backend != "inductor":
        torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


def measure_loop(shards: Path, device: torch.device, batch_size: int, compile_model: bool) -> dict:
    """img/s of :func:`invmon.training.loop.train_one_epoch` over its second epoch, on shards."""
    from invmon.data.shards import DatasetIndex
    from invmon.training.distributed import Distributed
    from invmon.training.loop import build_run, seed_everything, train_one_epoch

    reset_peak(device)  # and free what the last measurement left
    seed_everything(0)
    index = DatasetIndex.read(shards)
    split = index.split("train")
    config = train_config(device, batch_size, compile_model)
    run = build_run(config, index, split, device, Distributed())
    start = time.perf_counter()
    train_one_epoch(run, split, config, index.preprocessing, epoch=1)  # warm-up (and compile)
    warm_up = time.perf_counter() - start
    reset_peak(device)
    loss, _accuracy, images_per_second = train_one_epoch(
        run, split, config, index.preprocessing, epoch=2
    )
    result = {
        "images_per_second": images_per_second,
        "steps": max(1, len(split) // batch_size),
        "warm_up_seconds": warm_up,
        "peak_memory_mib": peak_mib(device),
        "loss": loss,
    }
    return result


def _bare_batches(shards: Path, device: torch.device, batch_size: int) -> list:
    """The loop's epoch as batches already normalised, channels_last and on the device."""
    from invmon.data.shards import DatasetIndex
    from invmon.data.transforms import normalize

    index = DatasetIndex.read(shards)
    split = index.split("train")
    drop_last = len(split) > batch_size  # as the loop: a partial batch only if it is the only one
    return [
        (normalize(images.to(device), index.preprocessing), targets.to(device))
        for images, targets in split.batches(batch_size, shuffle=True, seed=1, drop_last=drop_last)
    ]


def measure_bare(
    shards: Path, device: torch.device, batch_size: int, compile_model: bool, warm_up_steps: int = 3
) -> dict:
    """img/s of the plainest training loop (forward, loss, backward, Adam) on tensors already on
    the device, with the same model, precision and layout as :func:`measure_loop`."""
    from invmon.data.shards import DatasetIndex
    from invmon.training.model import ModelConfig, build_model

    reset_peak(device)  # and free what the last measurement left
    torch.manual_seed(0)
    index = DatasetIndex.read(shards)
    model = build_model(ModelConfig(classes=index.classes, preprocessing=index.preprocessing))
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    forward = torch.compile(model) if compile_model else model
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = _bare_batches(shards, device, batch_size)

    def step(inputs, targets):
        with torch.autocast(device.type, torch.bfloat16):
            logits = forward(inputs)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for inputs, targets in batches[:warm_up_steps]:  # warm-up (and compile)
        step(inputs, targets)
    sync(device)
    warm_up = time.perf_counter() - start
    reset_peak(device)
    start = time.perf_counter()
    for inputs, targets in batches:
        step(inputs, targets)
    sync(device)
    seconds = time.perf_counter() - start
    result = {
        "images_per_second": batch_size * len(batches) / seconds,
        "steps": len(batches),
        "warm_up_seconds": warm_up,
        "peak_memory_mib": peak_mib(device),
    }
    return result


# -- input -----------------------------------------------------------------------------------


def measure_loader(shards: Path, device: torch.device, batch_size: int, epochs: int = 2) -> dict:
    """img/s the training input delivers onto the device: the batches train_one_epoch gets
    (:func:`invmon.training.loop.training_batches`, the machine's loader workers and pinned
    memory on CUDA), copied to the device as the loop copies them, and nothing else."""
    from invmon.data.shards import DatasetIndex
    from invmon.training.distributed import Distributed
    from invmon.training.loop import training_batches

    index = DatasetIndex.read(shards)
    split = index.split("train")
    config = train_config(device, batch_size, False)
    images, first_batch = 0, []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        loader = training_batches(split, config, epoch, Distributed(), device)
        for number, (batch, targets) in enumerate(loader):
            batch.to(device, non_blocking=True)
            targets.to(device, non_blocking=True)
            images += len(batch)
            if number == 0:
                first_batch.append(time.perf_counter() - epoch_start)
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_second": images / seconds,
        "workers": loader.options.workers,
        "pin_memory": loader.options.pin_memory,
        "batch_size": batch_size,
        "epochs": epochs,
        "first_batch_seconds": max(first_batch),
    }


# -- serving ---------------------------------------------------------------------------------


def save_random_model(shards: Path, folder: Path) -> Path:
    """A model folder (random weights) for the shards' classes and preprocessing."""
    from invmon.data.shards import DatasetIndex
    from invmon.training.model import ModelConfig, build_model, save_model

    index = DatasetIndex.read(shards)
    config = ModelConfig(classes=index.classes, preprocessing=index.preprocessing)
    torch.manual_seed(0)
    return save_model(build_model(config), config, folder)


def _latencies(call, iterations: int, device: torch.device) -> dict:
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
    return {"p50_ms": statistics.median(times) * 1e3, "p99_ms": p99 * 1e3, "seconds": sum(times)}


def measure_counter(model_dir: Path, device: torch.device, batches, iterations, graph) -> dict:
    """The predictor's path (:meth:`Counter.predict_uint8`: uint8 batch in, counts out, as a
    request runs) against a bare forward of the same model on inputs already on the device."""
    from invmon.serving.counter import Counter
    from invmon.training.model import load_model

    counter = Counter.from_model_dir(model_dir, device=device.type, precision="auto", graph=graph)
    counter.warm_up(batches)
    bare, _config = load_model(model_dir, device)
    dtype = counter.dtype
    size = counter.image_size
    results = {}
    for n in batches:
        uint8 = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
        inputs = counter.to_inputs(uint8)

        def forward(inputs=inputs):
            with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=bool(dtype)):
                return bare(inputs)

        for _ in range(3):
            forward()
        ours = _latencies(lambda uint8=uint8: counter.predict_uint8(uint8), iterations, device)
        plain = _latencies(forward, iterations, device)
        results[str(n)] = {
            "counter_images_per_second": n * iterations / ours["seconds"],
            "counter_p50_ms": ours["p50_ms"],
            "counter_p99_ms": ours["p99_ms"],
            "bare_images_per_second": n * iterations / plain["seconds"],
            "bare_p50_ms": plain["p50_ms"],
            "bare_p99_ms": plain["p99_ms"],
        }
    return {"graph": counter.engine.graph, "precision": counter.precision, "batches": results}
