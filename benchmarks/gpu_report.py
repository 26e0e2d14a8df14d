"""The report of benchmarks/gpu.py: gpu.json written part by part, every ratio set against its
target, and the text summary with a first reading of where training stands."""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from pathlib import Path

TARGETS = {"loop_vs_bare": 0.9, "loader_vs_training": 1.5}
# The forward pass of ResNet50 at 224 px is about 4.1 G multiply-adds per image; a training step
# (forward and backward) is about three forward passes. For reading img/s against the card's peak.
RESNET50_TRAIN_FLOP_224 = 3 * 2 * 4.1e9
# Published ResNet50 training rates (mixed precision), not ours: for the reading in the summary.
ANCHORS = {"A100, NVIDIA's reference": 2470, "H100, tuned": 7000}


class Report:
    """The figures so far, written after every part, so that a run stopped early leaves them."""

    def __init__(self, out: Path, budget: float, shares: dict[str, float]):
        """``shares``: each part's share of the ``budget`` seconds."""
        self.out, self.budget, self.shares = out, budget, shares
        self.start = time.perf_counter()
        self.data: dict = {"skipped": {}, "errors": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        """Seconds left in the whole budget."""
        return self.budget - (time.perf_counter() - self.start)

    def part(self, name: str, measure, *args) -> dict | None:
        """Run ``measure(seconds, *args)`` if its share of the budget is left; record it."""
        share = self.shares[name] * self.budget
        if self.left() < share:
            self.data["skipped"][name] = f"{self.left():.0f} s left, its share is {share:.0f} s"
            print(f"[gpu] {name}: skipped ({self.data['skipped'][name]})", flush=True)
            return None
        started = time.perf_counter()
        print(f"[gpu] {name} ...", flush=True)
        try:
            result = measure(share, *args)
        except Exception as error:  # one part failing must not cost the others' figures
            self.data["errors"][name] = "".join(traceback.format_exception_only(error)).strip()
            traceback.print_exc()
            result = None
        else:
            self.data[name] = result
        self.data.setdefault("seconds", {})[name] = time.perf_counter() - started
        self.write()
        return result

    def write(self) -> None:
        """Write gpu.json (whole or not at all: a temporary file renamed over it)."""
        self.data["total_seconds"] = time.perf_counter() - self.start
        tmp = self.out / ".gpu.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=float) + "\n")
        os.replace(tmp, self.out / "gpu.json")


# -- the summary -----------------------------------------------------------------------------


def training_rates(data: dict) -> list[float]:
    """Every training rate measured: loop and bare, compiled or not, at every batch size."""
    return [
        run["images_per_second"]
        for part in ("training", "compiled")
        for batch in ((data.get(part) or {}).get("batches") or {}).values()
        for run in (batch.get("loop"), batch.get("bare"))
        if run
    ]


def finish(data: dict, image_size: int) -> None:
    """Set the loader against the fastest training rate; list every ratio with its target."""
    loader, rates = data.get("loader"), training_rates(data)
    if loader and rates:
        loader["training_images_per_second"] = max(rates)
        loader["loader_vs_training"] = loader["images_per_second"] / max(rates)
    data["targets"] = targets(data, image_size)


def targets(data: dict, image_size: int) -> list[dict]:
    """Each ratio measured, with its target where the issue sets one."""
    rows = []
    for part in ("training", "compiled"):
        for size, batch in ((data.get(part) or {}).get("batches") or {}).items():
            if "loop_vs_bare" in batch:
                rows.append(
                    _row(f"{part} loop/bare @{size}", batch["loop_vs_bare"], "loop_vs_bare")
                )
    loader = data.get("loader") or {}
    if loader.get("loader_vs_training") is not None:
        rows.append(_row("loader/training", loader["loader_vs_training"], "loader_vs_training"))
    ddp = data.get("ddp") or {}
    if "max_relative_difference" in ddp:
        rows.append(
            {
                "name": "ddp loss rel. difference",
                "value": ddp["max_relative_difference"],
                "target": f"<= {ddp['tolerance']}",
                "met": ddp["within_tolerance"],
            }
        )
    for size, batch in ((data.get("serving") or {}).get("batches") or {}).items():
        ratio = batch["counter_images_per_second"] / batch["bare_images_per_second"]
        rows.append({"name": f"predictor/bare @{size}", "value": ratio, "target": None})
    rows += _compute_share(data, image_size)
    return rows


def _row(name: str, value: float, target: str) -> dict:
    goal = TARGETS[target]
    return {"name": name, "value": value, "target": f">= {goal}", "met": value >= goal}


def _compute_share(data: dict, image_size: int) -> list[dict]:
    """The fastest training rate as model FLOP/s, a share of the measured matmul peak."""
    peak = (data.get("matmul") or {}).get("tflops")
    rates = training_rates(data)
    if not peak or not rates:
        return []
    flop = RESNET50_TRAIN_FLOP_224 * (image_size / 224) ** 2
    tflops = max(rates) * flop / 1e12
    return [{"name": "training TFLOP/s / matmul peak", "value": tflops / peak, "target": None}]


def summary(data: dict) -> str:
    """The text summary: what ran, the headline figures, then every ratio against its target."""
    env = data["environment"]
    lines = [
        f"{env.get('gpu', env['device'])}: torch {env['torch']}, torchvision "
        f"{env['torchvision']}, Python {env['python']}, {env['cpu_cores']} cores",
    ]
    for part in ("training", "compiled"):
        for size, batch in ((data.get(part) or {}).get("batches") or {}).items():
            if "loop" in batch:
                loop, bare = batch["loop"], batch["bare"]
                lines.append(
                    f"{part:<9} batch {size:>4}: loop {loop['images_per_second']:8.1f} img/s "
                    f"({loop['peak_memory_mib']:.0f} MiB), bare {bare['images_per_second']:8.1f}"
                    f" img/s ({bare['peak_memory_mib']:.0f} MiB)"
                )
    backend = (data.get("compiled") or {}).get("compile_backend")
    if backend and backend != "inductor":
        lines.append(f"compiled with torch.compile's {backend!r} backend, not Inductor")
    if data.get("matmul"):
        lines.append(
            f"bf16 matmul {data['matmul']['size']}: {data['matmul']['tflops']:.1f} TFLOP/s"
        )
    for size, batch in ((data.get("serving") or {}).get("batches") or {}).items():
        lines.append(
            f"predictor batch {size:>3}: {batch['counter_images_per_second']:8.1f} img/s "
            f"p50 {batch['counter_p50_ms']:.2f} ms p99 {batch['counter_p99_ms']:.2f} ms; bare "
            f"{batch['bare_images_per_second']:8.1f} img/s p50 {batch['bare_p50_ms']:.2f} ms"
        )
    for row in data.get("targets", []):
        verdict = "" if row["target"] is None else ("  met" if row["met"] else "  MISSED")
        lines.append(f"{row['name']:<32} {row['value']:8.3f}  {row['target'] or ''}{verdict}")
    for name, why in {**data["skipped"], **data["errors"]}.items():
        lines.append(f"{name}: not measured ({why})")
    return "\n".join(lines + reading(data)) + "\n"


def reading(data: dict) -> list[str]:
    """Where our training rate stands against the published anchors, and the first thing the
    figures say holds it back: the input, the loop's own work, or the GPU's arithmetic."""
    loops = [
        (run["loop"]["images_per_second"], part, size)
        for part in ("training", "compiled")
        for size, run in ((data.get(part) or {}).get("batches") or {}).items()
        if "loop" in run
    ]
    if not loops:
        return []
    best, part, size = max(loops)
    pixels = data["settings"]["image_size"]
    lines = [f"our loop's best: {best:.0f} img/s ({part}, batch {size}, {pixels} px)"]
    lines += [f"  {best / rate:.2f}x of {name} ({rate} img/s)" for name, rate in ANCHORS.items()]
    loader = data.get("loader") or {}
    ratios = [row for row in data.get("targets", []) if "loop/bare" in row["name"]]
    if loader.get("loader_vs_training", math.inf) < TARGETS["loader_vs_training"]:
        lines.append("held back by: input (the loader is under 1.5x the training rate)")
    elif any(not row["met"] for row in ratios):
        lines.append("held back by: the loop's own work (loop/bare under 0.9x)")
    else:
        share = [row for row in data.get("targets", []) if row["name"].startswith("training TFLOP")]
        used = f", {share[0]['value']:.0%} of the matmul peak" if share else ""
        lines.append(f"held back by: the GPU's own work (input and loop keep up{used})")
    return lines
