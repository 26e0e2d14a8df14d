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


def with_unscorable_bins(raw: Path, out: Path, ids: tuple[str, str, str, str]) -> Path:
    """A copy of the bins at ``raw`` in ``out`` where the four ``ids`` cannot be scored, one of
    each kind: a photo that is not a JPEG, metadata that is not JSON, a missing photo, and a
    recorded count outside the classes."""
    import json
    import shutil

    shutil.copytree(raw, out)
    bad_photo, bad_metadata, missing, out_of_range = ids
    (out / "bin-images" / f"{bad_photo}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (out / "metadata" / f"{bad_metadata}.json").write_text("{not json")
    (out / "bin-images" / f"{missing}.jpg").unlink()
    document = json.loads((out / "metadata" / f"{out_of_range}.json").read_text())
    document["EXPECTED_QUANTITY"] = 9
    (out / "metadata" / f"{out_of_range}.json").write_text(json.dumps(document))
    return out


def tiny_run(out: Path, **changes):
    """The smallest whole `invmon run` the slow tests use: 150 synthetic bins at 32 px, one trial
    and one epoch, and a gate any model passes (a one-epoch model must reach deploy and audit)."""
    from invmon.pipelines.local_run import RunSettings

    return RunSettings(
        synth_bins=150,
        epochs=1,
        trials=1,
        max_epochs=1,
        image_size=32,
        min_accuracy=0.0,
        out=str(out),
        **changes,
    )
