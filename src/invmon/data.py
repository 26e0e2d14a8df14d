"""Read preprocessed shards: the training and evaluation input pipeline.

A split is a list of memory-mapped shards of uint8 images. Batches are gathered from them without
decoding anything, turned into tensors and, on the device, normalised (and lightly augmented for
training) a whole batch at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from invmon.preprocess import INDEX_FILE
from invmon.transforms import Preprocessing


@dataclass(frozen=True)
class DatasetIndex:
    """The ``index.json`` of a preprocessed dataset."""

    root: Path
    preprocessing: Preprocessing
    classes: tuple[int, ...]
    splits: dict

    @classmethod
    def read(cls, root: str | Path) -> DatasetIndex:
        """Read the index of the preprocessed dataset under ``root``."""
        path = Path(root) / INDEX_FILE
        if not path.is_file():
            raise ValueError(f"{str(root)!r} is not a preprocessed dataset: {INDEX_FILE} missing")
        data = json.loads(path.read_text())
        return cls(
            root=Path(root),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            classes=tuple(data["classes"]),
            splits=data["splits"],
        )

    def split(self, name: str) -> ShardedSplit:
        """Open one split (``train``, ``val`` or ``test``)."""
        if name not in self.splits:
            raise ValueError(f"split {name!r} not in dataset (has: {', '.join(self.splits)})")
        stems = self.splits[name]["shards"]
        return ShardedSplit(self.root / name, stems, self.classes)


class ShardedSplit:
    """The shards of one split, memory-mapped; labels are mapped to class indices."""

    def __init__(self, folder: Path, stems: list[str], classes: tuple[int, ...]):
        self.classes = classes
        to_index = {count: i for i, count in enumerate(classes)}
        self.images = [np.load(folder / f"{s}.images.npy", mmap_mode="r") for s in stems]
        counts = [np.load(folder / f"{s}.labels.npy") for s in stems]
        self.ids = [
            bin_id for s in stems for bin_id in json.loads((folder / f"{s}.ids.json").read_text())
        ]
        all_counts = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int16)
        self.counts = all_counts.astype(np.int64)
        self.targets = np.asarray([to_index[int(c)] for c in all_counts], dtype=np.int64)
        self.offsets = np.cumsum([0] + [len(a) for a in self.images])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Return the uint8 images at global ``indices`` (sorted within each shard for locality)."""
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        out = np.empty((len(indices), *self.images[0].shape[1:]), dtype=np.uint8)
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            local = indices[where] - self.offsets[shard]
            out[where] = self.images[shard][local]
        return out

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(uint8 images (B,3,S,S), class indices (B,))`` CPU tensors."""
        order = (
            np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        )
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield torch.from_numpy(self.gather(idx)), torch.from_numpy(self.targets[idx])


def augment(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Count-preserving augmentation of a whole uint8 batch: random horizontal flips.

    A mirrored bin holds the same number of items; vertical flips are not used because photos are
    always taken upright (the bin's lip and label are at the bottom).
    """
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    if not flip.any():
        return batch
    batch = batch.clone()
    batch[flip] = batch[flip].flip(-1)
    return batch
