"""Small synthetic datasets for tests and benchmarks: bins in ABID's layout, arranged, in shards.

Every test fixture and benchmark that needs training data made the same three calls (synth,
arrange, preprocess) with its own sizes; this is that sequence once, through the stages' own
``run`` functions, so the data is exactly what the pipeline would make.
"""

from __future__ import annotations

from pathlib import Path

from invmon.data.synth import synthesize
from invmon.stages import arrange, preprocess
from invmon.stages.arrange import ArrangeSettings
from invmon.stages.preprocess import PreprocessSettings


def synthetic_shards(
    root: Path,
    bins: int,
    *,
    seed: int,
    classes: str,
    split: str,
    image_size: int,
    max_items: int | None = None,
    shard_size: int | None = None,
    workers: int | None = None,
) -> Path:
    """Write ``bins`` synthetic bins under ``root/raw``, arrange them into ``root/arranged`` and
    preprocess them into ``root/shards`` at ``image_size``; returns the shards folder.

    ``max_items``, ``shard_size`` and ``workers`` left as None take the defaults of synth and
    preprocess.
    """
    root = Path(root)
    extra = {} if max_items is None else {"max_items": max_items}
    threads = {} if workers is None else {"workers": workers}
    synthesize(str(root / "raw"), bins, seed=seed, **extra, **threads)
    arrange.run(
        ArrangeSettings(
            raw=str(root / "raw"), out=str(root / "arranged"), classes=classes, split=split, seed=0
        )
    )
    sizes = {} if shard_size is None else {"shard_size": shard_size}
    preprocess.run(
        PreprocessSettings(
            data=str(root / "arranged"),
            out=str(root / "shards"),
            image_size=image_size,
            **sizes,
            **threads,
        )
    )
    return root / "shards"
