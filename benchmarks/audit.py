"""Audit throughput against the bare batched model forward, and an audit in 2 parts against 1.

- forward: the model's batched forward (``Counter.predict_uint8``) over the bins' photos already
  decoded and resized: what the audit cannot beat;
- audit: ``invmon audit`` over the same bins from their folder (reading, decoding, scoring,
  writing audit.csv, flagged.csv, summary.json; no photos on review.html): bins/s and its ratio to
  the forward (target at least 70 %: reading and decoding overlap with inference), also without
  the model's load, which an audit pays once (as the forward's load measured it);
- parts: the same bins audited as 2 parts (one after the other here) and merged, against the
  1-part audit: whether audit.csv, flagged.csv and summary.json (but its seconds) are identical.

Bins: the real ABID sample when ABID_SAMPLE_DIR is set (or --source DIR), else --bins synthetic
bins. Model: --model DIR, or a ResNet50 trained here for one epoch on 200 synthetic bins at
--image-size (its speed, not its accuracy, is measured).

    .venv/bin/python benchmarks/audit.py --bins 256 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from invmon.stages.audit import AuditSettings, run
from invmon.stages.audit_parts import (
    AuditMergeSettings,
    AuditPlanSettings,
    merge_parts,
    plan_parts,
)


def forward_bins_per_second(model: Path, source: Path, batch_size: int, device: str):
    """Bins/s of the batched forward alone, over photos decoded beforehand, and the seconds
    that loading the model took (an audit pays them once, whatever its number of bins)."""
    import numpy as np

    from invmon.data.transforms import prepare
    from invmon.serving.counter import Counter

    start = time.perf_counter()
    counter = Counter.from_model_dir(model, device=device, freeze=True)
    load = time.perf_counter() - start
    photos = sorted((source / "bin-images").glob("*.jpg"))
    arrays = np.stack([prepare(p.read_bytes(), counter.image_size) for p in photos])
    counter.predict_uint8(arrays[:batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(arrays), batch_size):
        counter.predict_uint8(arrays[i : i + batch_size])
    return len(arrays) / (time.perf_counter() - start), load


def audit_in_parts(model: Path, source: Path, out: Path, parts: int, **options) -> float:
    """Audit ``source`` as ``parts`` parts one after the other, merge; return the seconds."""
    start = time.perf_counter()
    folders = []
    for part in plan_parts(AuditPlanSettings(source=str(source), parts=parts)):
        folder = out / f"part-{part.index}"
        spec = json.dumps(part.to_dict())
        run(
            AuditSettings(
                source=str(source), out=str(folder), model=str(model), part=spec, **options
            )
        )
        folders.append(str(folder))
    merge_parts(
        AuditMergeSettings(
            parts=tuple(folders), source=str(source), out=str(out / "m"), thumbnails=0
        )
    )
    return time.perf_counter() - start


def _same(one: Path, merged: Path) -> bool:
    def summary(folder):
        data = json.loads((folder / "summary.json").read_text())
        data.pop("seconds")
        return data

    files = ("audit.csv", "flagged.csv")
    same_files = all((one / f).read_text() == (merged / f).read_text() for f in files)
    return same_files and summary(one) == summary(merged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=os.environ.get("ABID_SAMPLE_DIR"))
    parser.add_argument("--bins", type=int, default=256, help="synthetic bins, without --source")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    source = args.source
    if source is None:
        from invmon.data.synth import synthesize

        source = work / "raw"
        synthesize(str(source), args.bins, seed=11, max_items=3, workers=2)
    model = args.model
    if model is None:
        from predictor import train_quick_model

        model = train_quick_model(args.image_size, work / "train", count=200, epochs=1)
    options = {"batch_size": args.batch_size, "device": args.device, "thumbnails": 0}
    forward, load = forward_bins_per_second(model, source, args.batch_size, args.device)
    start = time.perf_counter()
    summary = run(
        AuditSettings(source=str(source), out=str(work / "one"), model=str(model), **options)
    )
    seconds = time.perf_counter() - start
    audit_rate, after_load = summary.bins / seconds, summary.bins / (seconds - load)
    parts_seconds = audit_in_parts(model, source, work / "two", 2, **options)
    result = {
        "bins": summary.bins,
        "forward_bins_per_s": round(forward, 1),
        "audit_bins_per_s": round(audit_rate, 1),
        "audit_vs_forward": round(audit_rate / forward, 3),
        "model_load_s": round(load, 2),
        "audit_bins_per_s_after_load": round(after_load, 1),
        "audit_after_load_vs_forward": round(after_load / forward, 3),
        "two_parts_seconds_one_after_the_other": round(parts_seconds, 1),
        "two_parts_merge_identical": _same(work / "one", work / "two" / "m"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
