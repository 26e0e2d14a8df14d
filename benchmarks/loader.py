"""Benchmark: img/s per core that the training input pipeline delivers, ours vs the original's.

The original project trained from class folders through torchvision's ImageFolder, decoding and
transforming every JPEG again in every epoch (PIL, ``Resize((224, 224))``, a random flip,
``ToTensor``, ``Normalize``) in a DataLoader. Ours reads the preprocessed uint8 shards of the
same photos (:class:`invmon.data.shards.BatchLoader`: gather, flip the whole batch) and normalises
on
the training device. Both run in one process with one thread, so img/s is per core.

    ABID_SAMPLE_DIR=/path/to/abid-sample .venv/bin/python benchmarks/loader.py

Prints img/s per core and peak memory of each, then the ratio, last.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import measure_in_child, report, sample_dir  # benchmarks/common.py

SIZE = 224
BATCH = 32
MIN_SECONDS = 3.0  # each loader runs whole epochs until at least this long


def _epochs(make_batches) -> tuple[int, float]:
    images, epochs, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < MIN_SECONDS or epochs < 2:
        for batch, _targets in make_batches(epochs):
            images += len(batch)
        epochs += 1
    return images, time.perf_counter() - start


def measure_original(arranged: Path) -> dict:
    import torch
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    transform = transforms.Compose(
        [
            transforms.Resize((SIZE, SIZE)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    folder = datasets.ImageFolder(str(arranged / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(folder, batch_size=BATCH, shuffle=True, num_workers=0)
    images, seconds = _epochs(lambda epoch: loader)
    return {"images_per_second": images / seconds, "images": images}


def measure_ours(shards: Path, normalize_on_cpu: bool) -> dict:
    import torch

    from invmon.data.shards import DatasetIndex, LoaderOptions
    from invmon.data.transforms import normalize

    torch.set_num_threads(1)
    index = DatasetIndex.read(shards)
    split = index.split("train")

    def batches(epoch):
        options = LoaderOptions(BATCH, shuffle=True, seed=epoch, augment=True)
        for images, targets in split.loader(options):
            # On a GPU this runs on the device; here it shows the cost if it ran on the CPU.
            yield (normalize(images, index.preprocessing) if normalize_on_cpu else images), targets

    images, seconds = _epochs(batches)
    return {"images_per_second": images / seconds, "images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", nargs=2, metavar=("WHAT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        what, folder = args.measure
        if what == "original":
            report(measure_original(Path(folder)))
        else:
            report(measure_ours(Path(folder), normalize_on_cpu=what == "ours+normalize"))
        return
    from invmon.stages import arrange, preprocess
    from invmon.stages.arrange import ArrangeSettings
    from invmon.stages.preprocess import PreprocessSettings

    sample = sample_dir()
    with tempfile.TemporaryDirectory() as tmp:
        arranged, shards = Path(tmp) / "arranged", Path(tmp) / "shards"
        arrange.run(
            ArrangeSettings(raw=str(sample), out=str(arranged), classes="0-99", split="0.8,0.1,0.1")
        )
        preprocess.run(PreprocessSettings(data=str(arranged), out=str(shards), image_size=SIZE))
        print(f"training split of the ABID sample at {SIZE} px, batches of {BATCH}, one core")
        original = measure_in_child(__file__, "original", str(arranged))
        print(
            f"original (ImageFolder + PIL + transforms): {original['images_per_second']:8.1f} "
            f"img/s per core, peak RSS {original['peak_rss_mib']} MiB"
        )
        ours = measure_in_child(__file__, "ours", str(shards))
        print(
            f"invmon BatchLoader (uint8 shards):         {ours['images_per_second']:8.1f} "
            f"img/s per core, peak RSS {ours['peak_rss_mib']} MiB"
        )
        cpu = measure_in_child(__file__, "ours+normalize", str(shards))
        print(
            f"  ... and normalised on the CPU too:       {cpu['images_per_second']:8.1f} "
            f"img/s per core"
        )
    ratio = ours["images_per_second"] / original["images_per_second"]
    print(
        f"training input per core vs original: {ratio:.1f}x "
        f"({ours['images_per_second']:.0f} vs {original['images_per_second']:.0f} img/s)"
    )


if __name__ == "__main__":
    main()
