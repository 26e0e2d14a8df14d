"""Benchmark: training throughput of invmon's train loop against a bare PyTorch loop.

Both train the same ResNet50 with the original two-layer head, on the same batches (8 images of
224 px, as the reference figures in the product brief), with Adam, at the same precision. The bare
loop is the least a PyTorch training step can be: tensors already normalised in memory, then
forward, loss, backward, step. The train loop is :func:`invmon.training.loop.train_one_epoch` on
preprocessed shards: it also gathers each batch from the memory-mapped shards, flips images,
normalises on the device, steps the learning-rate schedule and the gradient scaler and keeps its
metrics. Also measured: the bare loop in fp32 with the NCHW layout (what bf16 autocast and
channels_last buy on this CPU) and the peak memory of each.

Every measurement runs in a fresh process (peak memory is that process's); the variants alternate
for three rounds and the best round of each counts, which evens out other load on the machine.

    .venv/bin/python benchmarks/train_step.py

Prints a table, then the ratio train loop / bare loop, last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The synthetic training data is test support, kept under tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SIZE = 224
BATCH = 8
BINS = 160  # 80 % of them train: 16 steps of 8 per epoch
ROUNDS = 3
VARIANTS = {
    "bare": "bare PyTorch loop, bf16 autocast + channels_last",
    "loop": "invmon train loop (train_one_epoch), bf16 autocast + channels_last",
    "bare-fp32": "bare PyTorch loop, fp32 + NCHW",
}


def make_dataset(root: Path) -> Path:
    """Synthetic bins through the project's own synth, arrange and preprocess stages."""
    from support.datasets import synthetic_shards

    return synthetic_shards(
        root, BINS, seed=0, classes="0-5", split="0.8,0,0.2", image_size=SIZE, workers=1
    )


def _setup(shards: Path, precision: str):
    import torch

    from invmon.data.shards import DatasetIndex
    from invmon.training.config import TrainConfig
    from invmon.training.loop import build_run, seed_everything

    seed_everything(0)
    index = DatasetIndex.read(shards)
    split = index.split("train")
    config = TrainConfig(
        batch_size=BATCH,
        epochs=2,
        device="cpu",
        precision=precision,
        channels_last=precision != "fp32",
    )
    run = build_run(config, index, split, torch.device("cpu"), _single_process())
    return config, index, split, run


def _single_process():
    from invmon.training.distributed import Distributed

    return Distributed()


def measure_loop(shards: Path) -> float:
    """Images/s of train_one_epoch over the second of two epochs (the first warms up)."""
    from invmon.training.loop import train_one_epoch

    config, index, split, run = _setup(shards, "bf16")
    train_one_epoch(run, split, config, index.preprocessing, epoch=1)
    _loss, _accuracy, images_per_second = train_one_epoch(
        run, split, config, index.preprocessing, epoch=2
    )
    return images_per_second


def measure_bare(shards: Path, precision: str) -> float:
    """Images/s of the plainest loop over the same batches, already normalised in memory."""
    import torch

    from invmon.data.transforms import normalize

    _config, index, split, run = _setup(shards, precision)
    model, optimizer = run.plain_model, run.optimizer
    loss_fn = torch.nn.CrossEntropyLoss()
    layout = torch.channels_last if precision != "fp32" else torch.contiguous_format
    batches = [
        (normalize(images, index.preprocessing).contiguous(memory_format=layout), targets)
        for images, targets in split.batches(BATCH, shuffle=True, seed=1, drop_last=True)
    ]
    model.train()

    def step(inputs, targets):
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            logits = model(inputs)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for inputs, targets in batches:  # warm-up pass, as the loop's first epoch
        step(inputs, targets)
    start = time.perf_counter()
    for inputs, targets in batches:
        step(inputs, targets)
    return BATCH * len(batches) / (time.perf_counter() - start)


def child(variant: str, shards: Path) -> None:
    if variant == "loop":
        value = measure_loop(shards)
    else:
        value = measure_bare(shards, "fp32" if variant == "bare-fp32" else "bf16")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images_per_second": value, "peak_rss_mib": peak}))


def run_child(variant: str, shards: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", variant, "--shards", str(shards)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        child(args.measure, args.shards)
        return
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_dataset(Path(tmp))
        rounds = {v: [] for v in VARIANTS}
        for number in range(ROUNDS):
            for variant in VARIANTS:
                rounds[variant].append(run_child(variant, shards))
                ips = rounds[variant][-1]["images_per_second"]
                print(f"round {number + 1}: {variant:<9} {ips:6.1f} images/s", file=sys.stderr)
    best = {v: max(r, key=lambda m: m["images_per_second"]) for v, r in rounds.items()}
    print(
        f"ResNet50 + head, batch {BATCH} x {SIZE} px, Adam, one timed epoch after a warm-up "
        f"epoch; {torch.get_num_threads()} threads; best of {ROUNDS} rounds"
    )
    print("| variant | images/s | s/step | peak RSS |\n| --- | ---: | ---: | ---: |")
    for variant, label in VARIANTS.items():
        ips = best[variant]["images_per_second"]
        rss = best[variant]["peak_rss_mib"]
        print(f"| {label} | {ips:.1f} | {BATCH / ips:.3f} | {rss:.0f} MiB |")
    speedup = best["bare"]["images_per_second"] / best["bare-fp32"]["images_per_second"]
    print(f"bf16 + channels_last vs fp32 + NCHW (bare loop): {speedup:.2f}x")
    ratio = best["loop"]["images_per_second"] / best["bare"]["images_per_second"]
    print(f"train loop vs bare PyTorch loop: {ratio:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
