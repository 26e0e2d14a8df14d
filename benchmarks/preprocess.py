"""Benchmark: img/s per core of preprocessing the real ABID sample, ours vs the original's way.

The original project decoded and transformed every photo with PIL and torchvision in each epoch:
``Image.open(path).convert("RGB")`` then ``Resize((224, 224))``, ``ToTensor()``, ``Normalize``.
Ours is ``invmon.data.transforms.prepare`` (the function the predictor also runs), once per photo,
writing uint8 shards. Each measurement runs in its own process (one thread per process), so that
its peak memory is its own.

    ABID_SAMPLE_DIR=/path/to/abid-sample .venv/bin/python benchmarks/preprocess.py

Prints img/s per core and peak memory of each, then the ratio, last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import measure_in_child, report, sample_dir  # benchmarks/common.py

SIZE = 224
PASSES = 3  # each photo is processed this many times, for steadier figures


def _photos(arranged: Path) -> list[Path]:
    return sorted(arranged.glob("*/*/*.jpg"))


def measure_original(arranged: Path) -> dict:
    import torch
    from PIL import Image
    from torchvision import transforms

    torch.set_num_threads(1)
    transform = transforms.Compose(
        [
            transforms.Resize((SIZE, SIZE)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    photos = _photos(arranged)
    start = time.perf_counter()
    for _ in range(PASSES):
        for path in photos:
            transform(Image.open(path).convert("RGB"))
    seconds = time.perf_counter() - start
    return {"images_per_second": PASSES * len(photos) / seconds, "images": PASSES * len(photos)}


def measure_prepare(arranged: Path) -> dict:
    from invmon.data.transforms import prepare

    photos = _photos(arranged)
    start = time.perf_counter()
    for _ in range(PASSES):
        for path in photos:
            prepare(path.read_bytes(), SIZE)
    seconds = time.perf_counter() - start
    return {"images_per_second": PASSES * len(photos) / seconds, "images": PASSES * len(photos)}


def measure_stage(arranged: Path, workers: int) -> dict:
    from invmon.stages import preprocess
    from invmon.stages.preprocess import PreprocessSettings

    out = Path(tempfile.mkdtemp())
    try:
        result = preprocess.run(
            PreprocessSettings(
                data=str(arranged), out=str(out), image_size=SIZE, shard_size=256, workers=workers
            )
        )
    finally:
        shutil.rmtree(out)
    images = sum(result.images.values())
    return {"images_per_second": images / result.seconds, "images": images, "workers": workers}


def arrange_sample(raw: Path, out: Path, copies: int) -> Path:
    """Arrange the sample (``copies`` times over, under new bin ids) into class folders."""
    from invmon.stages import arrange
    from invmon.stages.arrange import ArrangeSettings

    if copies > 1:
        many = out / "raw"
        for folder in ("bin-images", "metadata"):
            (many / folder).mkdir(parents=True)
            for path in (raw / folder).iterdir():
                for copy in range(copies):
                    os.link(path, many / folder / f"{path.stem}x{copy}{path.suffix}")
        raw = many
    arrange.run(
        ArrangeSettings(
            raw=str(raw), out=str(out / "arranged"), classes="0-99", split="0.8,0.1,0.1"
        )
    )
    return out / "arranged"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", nargs=2, metavar=("WHAT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        what, folder = args.measure
        if what == "original":
            report(measure_original(Path(folder)))
        elif what == "prepare":
            report(measure_prepare(Path(folder)))
        else:
            report(measure_stage(Path(folder), int(what.split("-")[1])))
        return
    sample = sample_dir()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        one = arrange_sample(sample, Path(tmp) / "x1", 1)
        # The stage measured on the sample repeated (under new ids): start-up is then a small
        # part of the time, and peak memory can be compared at two dataset sizes.
        two = arrange_sample(sample, Path(tmp) / "x2", 2)
        eight = arrange_sample(sample, Path(tmp) / "x8", 8)
        photos = len(_photos(one))
        print(f"{photos} photos of the ABID sample at {SIZE} px; one process per measurement")
        original = measure_in_child(__file__, "original", str(one))
        print(
            f"original (PIL + torchvision transforms, per image): "
            f"{original['images_per_second']:7.1f} img/s per core, "
            f"peak RSS {original['peak_rss_mib']} MiB"
        )
        ours = measure_in_child(__file__, "prepare", str(one))
        print(
            f"invmon.data.transforms.prepare (one core):               "
            f"{ours['images_per_second']:7.1f} img/s per core, "
            f"peak RSS {ours['peak_rss_mib']} MiB"
        )
        smaller = measure_in_child(__file__, f"stage-{cores}", str(two))
        stage = measure_in_child(__file__, f"stage-{cores}", str(eight))
        print(
            f"invmon preprocess ({cores} processes, shards written):    "
            f"{stage['images_per_second'] / cores:7.1f} img/s per core "
            f"({stage['images_per_second']:.1f} img/s, {stage['images']} images)"
        )
        print(
            f"  peak RSS of the writing process: {smaller['self_rss_mib']} MiB for "
            f"{smaller['images']} images, {stage['self_rss_mib']} MiB for {stage['images']}; "
            f"largest process {smaller['peak_rss_mib']} / {stage['peak_rss_mib']} MiB"
        )
    ratio = ours["images_per_second"] / original["images_per_second"]
    stage_ratio = stage["images_per_second"] / cores / original["images_per_second"]
    print(
        f"preprocess per core vs original per-image transforms: {ratio:.2f}x (prepare), "
        f"{stage_ratio:.2f}x (whole stage, shards written)"
    )


if __name__ == "__main__":
    main()
