"""Read preprocessed shards: the training and evaluation input pipeline.

A split is a list of memory-mapped shards of uint8 images. A batch is gathered from them without
decoding anything (a memory copy), lightly augmented as a whole (random horizontal flips), and
handed over as CPU tensors; normalisation happens on the device, a whole batch at a time
(:func:`invmon.data.transforms.normalize`).

:class:`BatchLoader` does this in the training process on CPU (where the model's own threads use
every core), and with worker processes and pinned memory on CUDA, so that copying the next
batches overlaps the GPU's work and host-to-device copies run asynchronously. Shuffling is
"windowed": each epoch visits the shards in a random order and shuffles the rows of a few shards
at a time, so that reads stay sequential within a few files even when the dataset is far larger
than memory. With ``world_size > 1`` each rank reads its own shards (disjoint files per GPU/node).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from invmon.data.layout import INDEX_FILE
from invmon.data.transforms import Preprocessing


@dataclass(frozen=True)
class DatasetIndex:
    """The ``index.json`` of a preprocessed dataset."""

    root: Path
    preprocessing: Preprocessing
    classes: tuple[int, ...]
    splits: dict
    # split -> the bins whose label a recount verified (arrange --recounts); empty: none.
    verified: dict = field(default_factory=dict)

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
            verified=data.get("recount_verified", {}),
        )

    def split(self, name: str) -> ShardedSplit:
        """Open one split (``train``, ``val`` or ``test``)."""
        if name not in self.splits:
            raise ValueError(f"split {name!r} not in dataset (has: {', '.join(self.splits)})")
        stems = self.splits[name]["shards"]
        return ShardedSplit(self.root / name, stems, self.classes)


@dataclass(frozen=True)
class LoaderOptions:
    """How a split is turned into batches.

    ``workers`` processes gather batches ahead of the training loop (``prefetch`` each);
    ``pin_memory`` puts them in page-locked memory for asynchronous copies to a GPU. When
    shuffling, ``shuffle_window`` shards are mixed at a time. ``rank``/``world_size`` give each
    process of a distributed run its own shards and the same number of batches.
    """

    batch_size: int
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    augment: bool = False
    workers: int = 0
    pin_memory: bool = False
    prefetch: int = 4
    shuffle_window: int = 8
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        checks = [
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.workers >= 0, f"loader workers must be >= 0, got {self.workers}"),
            (self.prefetch >= 1, f"prefetch must be >= 1, got {self.prefetch}"),
            (self.shuffle_window >= 1, f"shuffle window must be >= 1, got {self.shuffle_window}"),
            (
                0 <= self.rank < self.world_size,
                f"rank must be in [0, world_size), got {self.rank} of {self.world_size}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def for_device(cls, device: torch.device | str, **options) -> LoaderOptions:
        """Options that suit ``device``: on CUDA, worker processes and pinned memory (the GPU
        must not wait for the CPU); elsewhere none (the model's threads already use every core).
        Explicit ``options`` win."""
        if torch.device(device).type == "cuda":
            options.setdefault("workers", default_workers())
            options.setdefault("pin_memory", True)
        return cls(**options)


def default_workers() -> int:
    """Loader processes on a GPU node: a few per GPU, leaving cores for the training process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = max(1, torch.cuda.device_count())
    return max(1, min(8, (cores or 2) // gpus - 1))


class ShardedSplit:
    """The shards of one split, memory-mapped; labels are mapped to class indices.

    The memory maps are opened lazily in each process, so that a split can be handed to loader
    workers without copying any images.
    """

    def __init__(self, folder: Path, stems: list[str], classes: tuple[int, ...]):
        self.folder, self.stems, self.classes = Path(folder), list(stems), classes
        to_index = {count: i for i, count in enumerate(classes)}
        counts = [np.load(self.folder / f"{s}.labels.npy") for s in stems]
        self.ids = [
            bin_id for s in stems for bin_id in json.loads((folder / f"{s}.ids.json").read_text())
        ]
        all_counts = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int16)
        self.counts = all_counts.astype(np.int64)
        self.targets = np.asarray([to_index[int(c)] for c in all_counts], dtype=np.int64)
        self.offsets = np.cumsum([0] + [len(c) for c in counts])
        self._images: list[np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    @property
    def images(self) -> list[np.ndarray]:
        """The memory-mapped image arrays, one per shard."""
        if self._images is None:
            self._images = [
                np.load(self.folder / f"{s}.images.npy", mmap_mode="r") for s in self.stems
            ]
        return self._images

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Return the uint8 images at global ``indices`` (read in file order within each shard)."""
        images = self.images
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        out = np.empty((len(indices), *images[0].shape[1:]), dtype=np.uint8)
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            local = indices[where] - self.offsets[shard]
            order = np.argsort(local, kind="stable")
            out[where[order]] = images[shard][local[order]]
        return out

    def loader(self, options: LoaderOptions) -> BatchLoader:
        """Batches of this split as ``options`` say (see :class:`BatchLoader`)."""
        return BatchLoader(self, options)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(uint8 images (B,3,S,S), class indices (B,))`` CPU tensors, in this process."""
        options = LoaderOptions(batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        return iter(self.loader(options))


def epoch_order(split: ShardedSplit, options: LoaderOptions) -> np.ndarray:
    """The global row indices one process reads in an epoch, in order.

    Shards are dealt round-robin to the ranks (in a seeded random order when shuffling), so that
    each rank reads its own files; when shuffling, the rows of ``shuffle_window`` shards at a time
    are shuffled together. Every rank gets the same number of rows, so that all take the same
    number of steps.
    """
    rng = np.random.default_rng(options.seed)
    count = len(split.stems)
    shards = rng.permutation(count) if options.shuffle else np.arange(count)
    dealt = [shards[r :: options.world_size] for r in range(options.world_size)]
    sizes = np.diff(split.offsets)
    share = min(int(sizes[d].sum()) for d in dealt)
    mine = dealt[options.rank]
    step = options.shuffle_window if options.shuffle else max(1, len(mine))
    parts = []
    for first in range(0, len(mine), step):
        window = mine[first : first + step]
        rows = np.concatenate([np.arange(split.offsets[s], split.offsets[s + 1]) for s in window])
        parts.append(rng.permutation(rows) if options.shuffle else rows)
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return order[:share]


class _Batches(torch.utils.data.Dataset):
    """Batch ``i`` of an epoch, gathered and augmented: what a loader worker computes."""

    def __init__(self, split: ShardedSplit, order: np.ndarray, options: LoaderOptions):
        self.split, self.options = split, options
        stop = len(order) - (len(order) % options.batch_size if options.drop_last else 0)
        self.starts = range(0, stop, options.batch_size)
        self.order = order[:stop]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order[self.starts[i] : self.starts[i] + self.options.batch_size]
        images = torch.from_numpy(self.split.gather(idx))
        if self.options.augment:
            # Seeded by (epoch seed, batch number): the same flips whichever worker makes it.
            generator = torch.Generator().manual_seed(self.options.seed * 1_000_003 + i)
            images = augment(images, generator)
        return images, torch.from_numpy(self.split.targets[idx])


class BatchLoader:
    """Iterable over an epoch's ``(uint8 images (B,3,S,S), class indices (B,))`` CPU tensors.

    With ``workers == 0`` batches are made in this process when asked for; otherwise a
    ``torch.utils.data.DataLoader`` runs that many worker processes, keeps ``prefetch`` batches
    per worker ready, and (with ``pin_memory``) pins them for ``.to(device, non_blocking=True)``.
    """

    def __init__(self, split: ShardedSplit, options: LoaderOptions):
        self.split, self.options = split, options
        self.batches = _Batches(split, epoch_order(split, options), options)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.options.workers == 0:
            pin = self.options.pin_memory and torch.cuda.is_available()
            for i in range(len(self.batches)):
                images, targets = self.batches[i]
                yield (images.pin_memory(), targets.pin_memory()) if pin else (images, targets)
            return
        yield from torch.utils.data.DataLoader(
            self.batches,
            batch_size=None,
            shuffle=False,
            num_workers=self.options.workers,
            prefetch_factor=self.options.prefetch,
            pin_memory=self.options.pin_memory and torch.cuda.is_available(),
            persistent_workers=False,
        )


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
