"""GPU check: training, input, DDP and serving on one CUDA GPU, each against a bare baseline.

Prepared to run on a machine with one (or more) NVIDIA GPUs and only PyTorch installed: it needs
torch, torchvision, numpy, PIL and the project's ``src/`` on PYTHONPATH, makes its own synthetic
shards with the project's stages (no data travels), and finishes within ``--budget`` seconds,
each part in its own share of it (a part out of time is skipped and says so)::

    PYTHONPATH=src python benchmarks/gpu.py --out results/

It measures, in one run: the bf16 matrix-product peak; ``train_one_epoch`` on shards against a
bare loop on tensors already on the GPU (bf16 autocast + channels_last, ResNet50 + head, batch
sizes 64/128/256, peak GPU memory); the shard loader against the training rate; a few DDP steps
under torchrun against one process; the predictor's batched path against a bare forward at batch
1/8/32; and last, training again with torch.compile. It writes ``gpu.json`` (every figure) and
``gpu.txt`` (the summary, also printed last) under ``--out``.

``--device cpu --smoke`` runs the same code paths on a CPU with tiny sizes (32 px images, batches
of a few, two gloo processes for DDP, torch.compile's graph capture without Inductor's C++
build), so that a test keeps this script working between GPU runs.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import gpu_ddp  # benchmarks/gpu_ddp.py
import gpu_parts  # benchmarks/gpu_parts.py
import torch
from gpu_report import Report, finish, summary  # benchmarks/gpu_report.py

DDP_TOLERANCE = 0.02  # relative, per step: bf16 autocast, and other kernels for other shapes
# Each part's share of --budget; a part starts only with its share left in the whole budget.
SHARES = {
    "data": 0.10,
    "matmul": 0.03,
    "training": 0.25,
    "loader": 0.07,
    "ddp": 0.15,
    "serving": 0.10,
    "compiled": 0.30,
}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; ``--smoke`` changes the defaults of every size to tiny ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu.json and gpu.txt")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds on a CPU")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (330; smoke 900)")
    parser.add_argument("--image-size", type=int, help="pixels (224; smoke 32)")
    parser.add_argument("--images", type=int, help="training images (3072; smoke 8)")
    parser.add_argument("--distinct", type=int, help="bins drawn, then repeated (256; smoke 4)")
    parser.add_argument("--batch-sizes", help="training batch sizes (64,128,256; smoke 4,8)")
    parser.add_argument("--compile-batch-sizes", help="with torch.compile (256; smoke 8)")
    parser.add_argument(
        "--compile-backend", help="torch.compile backend (inductor; smoke eager: no C++ build)"
    )
    parser.add_argument("--matmul-size", type=int, help="square bf16 products (8192; smoke 128)")
    parser.add_argument("--ddp-processes", type=int, help="torchrun processes (GPUs; CPU 2)")
    parser.add_argument("--ddp-batch-size", type=int, help="global batch of DDP (64; smoke 4)")
    parser.add_argument("--ddp-steps", type=int, help="DDP steps compared (5; smoke 2)")
    parser.add_argument("--ddp-precision", help="DDP steps' precision (bf16; smoke fp64)")
    parser.add_argument("--serve-batches", help="predictor batch sizes (1,8,32; smoke 1,2,4)")
    parser.add_argument("--serve-iterations", type=int, help="timed calls per batch (50; smoke 3)")
    parser.add_argument(
        "--serve-graph", help="predictor graph (auto: as serve picks; smoke frozen)"
    )
    parser.add_argument("--warm-up-steps", type=int, help="bare loop's warm-up (3; smoke 1)")
    parser.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker is None and args.out is None:
        parser.error("--out is required")
    return _with_defaults(args)


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    gpu = {
        "budget": 330.0,
        "image_size": 224,
        "images": 3072,
        "distinct": 256,
        "batch_sizes": "64,128,256",
        "compile_batch_sizes": "256",
        "compile_backend": "inductor",
        "matmul_size": 8192,
        "ddp_batch_size": 64,
        "ddp_steps": 5,
        "ddp_precision": "bf16",
        "serve_batches": "1,8,32",
        "serve_iterations": 50,
        "serve_graph": "auto",
        "warm_up_steps": 3,
    }
    smoke = {
        **gpu,
        "budget": 900.0,
        "image_size": 32,
        "images": 8,
        "distinct": 4,
        "batch_sizes": "4,8",
        "compile_batch_sizes": "8",
        "compile_backend": "eager",
        "matmul_size": 128,
        "ddp_batch_size": 4,
        "ddp_steps": 2,
        # Batches of 2 per process at 32 px leave BatchNorm a handful of values per channel in the
        # last layers, where bf16 rounding alone moves the loss by percents: fp64 shows DDP's own
        # difference.
        "ddp_precision": "fp64",
        "serve_batches": "1,2,4",
        "serve_iterations": 3,
        "serve_graph": "frozen",
        "warm_up_steps": 1,
    }
    for name, value in (smoke if args.smoke else gpu).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batch_sizes", "compile_batch_sizes", "serve_batches"):
        text = getattr(args, name)
        setattr(
            args, name, [int(v) for v in text.split(",") if v] if isinstance(text, str) else text
        )
    return args


def environment(device: torch.device) -> dict:
    """What ran: versions, the card, the cores."""
    import torchvision

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "cpu_cores": len(os.sched_getaffinity(0)),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=props.total_memory / 2**30,
            gpus=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return env


# -- the parts -------------------------------------------------------------------------------


def data_part(seconds: float, args, folder: Path) -> dict:
    """Synthetic shards made here, with every core (one in a smoke run)."""
    from invmon.data.shards import DatasetIndex

    workers = 1 if args.smoke else len(os.sched_getaffinity(0))
    shards = gpu_parts.make_shards(folder, args.images, args.image_size, args.distinct, workers)
    train = len(DatasetIndex.read(shards).split("train"))
    return {"shards": str(shards), "train_images": train, "image_size": args.image_size}


def train_part(seconds: float, args, device, shards: Path, compiled: bool) -> dict:
    """Our loop against the bare loop at each batch size, until the part's time runs out."""
    sizes = args.compile_batch_sizes if compiled else args.batch_sizes
    deadline = time.perf_counter() + seconds
    results = {}
    with gpu_parts.compile_backend(args.compile_backend if compiled else "inductor"):
        for size in sizes:
            if time.perf_counter() > deadline:
                results[str(size)] = {"skipped": "out of this part's time"}
                continue
            loop = gpu_parts.measure_loop(shards, device, size, compiled)
            bare = gpu_parts.measure_bare(shards, device, size, compiled, args.warm_up_steps)
            results[str(size)] = {
                "loop": loop,
                "bare": bare,
                "loop_vs_bare": loop["images_per_second"] / bare["images_per_second"],
            }
    backend = args.compile_backend if compiled else None
    return {"compile_backend": backend, "image_size": args.image_size, "batches": results}


def loader_part(seconds: float, args, device, shards: Path) -> dict:
    """The loader's rate at the largest batch size (set against training in :func:`finish`)."""
    return gpu_parts.measure_loader(shards, device, max(args.batch_sizes))


def ddp_part(seconds: float, args, device, shards: Path, folder: Path) -> dict:
    """A few steps under torchrun (one process per GPU; two gloo processes on a CPU)."""
    processes = args.ddp_processes or (torch.cuda.device_count() if device.type == "cuda" else 2)
    params = {
        "shards": str(shards),
        "device": str(device),
        "batch_size": args.ddp_batch_size,
        "steps": args.ddp_steps,
        "precision": args.ddp_precision,
    }
    single = gpu_ddp.step_losses(params, gpu_ddp.distributed.Distributed())
    gpu_parts.reset_peak(device)
    launched = gpu_ddp.launch(__file__, params, processes, seconds, folder)
    result = gpu_ddp.compare(single, launched.pop("losses"), DDP_TOLERANCE)
    return {
        **launched,
        "global_batch_size": args.ddp_batch_size,
        "precision": args.ddp_precision,
        **result,
    }


def serving_part(seconds: float, args, device, shards: Path, folder: Path) -> dict:
    """The predictor's batched path against a bare forward, on a random-weight model folder."""
    model_dir = gpu_parts.save_random_model(shards, folder / "model")
    return gpu_parts.measure_counter(
        model_dir, device, args.serve_batches, args.serve_iterations, args.serve_graph
    )


def main(argv=None) -> int:
    """Run every part in its budget; write gpu.json and gpu.txt; print the summary."""
    args = parse_args(argv)
    if args.ddp_worker:
        gpu_ddp.worker(args.ddp_worker)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available here (use --device cpu --smoke)")
    if args.smoke:
        # One thread: the smoke run checks code paths, not speed, and shared cores make
        # OpenMP's threads wait on each other.
        torch.set_num_threads(1)
    report = Report(args.out, args.budget, SHARES)
    report.data["environment"] = environment(device)
    report.data["settings"] = {k: v for k, v in vars(args).items() if k != "out"} | {
        "out": str(args.out)
    }
    # The budget is a promise: a part still running when it ends is stopped (and named as
    # failed), the parts after it are skipped, and the report is written all the same.
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(max(1, math.ceil(args.budget)))
    try:
        with tempfile.TemporaryDirectory(prefix="invmon-gpu-") as tmp:
            folder = Path(tmp)
            data = report.part("data", data_part, args, folder)
            if data is not None:
                _measure(report, args, device, Path(data["shards"]), folder)
    except OutOfTime as error:
        report.data["errors"]["budget"] = str(error)
    finally:
        signal.alarm(0)
    finish(report.data, args.image_size)
    report.write()
    text = summary(report.data)
    (args.out / "gpu.txt").write_text(text)
    print(text, end="")
    return 1 if report.data["errors"] else 0


class OutOfTime(Exception):
    """The whole run's ``--budget`` ran out."""


def _out_of_time(signum, frame):
    raise OutOfTime("the run's --budget ran out")


def _measure(report: Report, args, device, shards: Path, folder: Path) -> None:
    report.part("matmul", lambda s: gpu_parts.matmul_tflops(device, args.matmul_size))
    report.part("training", train_part, args, device, shards, False)
    report.part("loader", loader_part, args, device, shards)
    report.part("ddp", ddp_part, args, device, shards, folder)
    report.part("serving", serving_part, args, device, shards, folder)
    # Last: compiling takes the longest and is the likeliest to run out of time.
    report.part("compiled", train_part, args, device, shards, True)


if __name__ == "__main__":
    sys.exit(main())
