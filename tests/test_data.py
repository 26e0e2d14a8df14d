"""The training input pipeline: batches from preprocessed shards, in and out of worker processes."""

import numpy as np
import pytest
import torch

from invmon.data.shards import DatasetIndex, LoaderOptions, augment, epoch_order
from invmon.stages import preprocess
from invmon.stages.preprocess import PreprocessSettings


@pytest.fixture(scope="module")
def many_shards(arranged_dir, tmp_path_factory):
    """The tiny dataset cut into shards of 10 images (9 train shards)."""
    out = tmp_path_factory.mktemp("many-shards")
    preprocess.run(
        PreprocessSettings(
            data=str(arranged_dir), out=str(out), image_size=16, shard_size=10, workers=1
        )
    )
    return DatasetIndex.read(out).split("train")


def _epoch(split, **options):
    return list(split.loader(LoaderOptions(**options)))


def test_batches_are_uint8_images_and_class_indices(many_shards):
    batches = _epoch(many_shards, batch_size=8, shuffle=True, seed=1, augment=True)
    images, targets = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 16, 16)
    assert targets.dtype == torch.int64 and targets.shape == (8,)
    assert sum(len(t) for _, t in batches) == len(many_shards)


def test_an_epoch_visits_every_row_once_in_a_seeded_order(many_shards):
    options = LoaderOptions(batch_size=8, shuffle=True, seed=3)
    order = epoch_order(many_shards, options)
    assert sorted(order) == list(range(len(many_shards)))
    assert np.array_equal(order, epoch_order(many_shards, options))
    other = epoch_order(many_shards, LoaderOptions(batch_size=8, shuffle=True, seed=4))
    assert not np.array_equal(order, other)
    plain = epoch_order(many_shards, LoaderOptions(batch_size=8))
    assert np.array_equal(plain, np.arange(len(many_shards)))


def test_shuffling_mixes_a_window_of_shards_at_a_time(many_shards):
    order = epoch_order(many_shards, LoaderOptions(batch_size=8, shuffle=True, shuffle_window=2))
    shard_of = np.searchsorted(many_shards.offsets, order, side="right") - 1
    first_window = set(shard_of[:20])  # two shards of 10 rows
    assert len(first_window) == 2
    assert not first_window & set(shard_of[20:])


def test_targets_belong_to_their_images(many_shards):
    images, targets = _epoch(many_shards, batch_size=len(many_shards), shuffle=True, seed=2)[0]
    plain_images, plain_targets = _epoch(many_shards, batch_size=len(many_shards))[0]
    lookup = {
        plain_images[i].numpy().tobytes(): int(plain_targets[i]) for i in range(len(plain_targets))
    }
    assert all(lookup[images[i].numpy().tobytes()] == int(targets[i]) for i in range(len(targets)))


def test_worker_processes_deliver_the_same_batches(many_shards):
    options = {"batch_size": 7, "shuffle": True, "seed": 5, "augment": True, "drop_last": True}
    here = _epoch(many_shards, **options)
    workers = _epoch(many_shards, workers=2, prefetch=2, **options)
    assert len(here) == len(workers) == len(many_shards) // 7
    for (a, ta), (b, tb) in zip(here, workers, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)


def test_ranks_read_disjoint_shards_and_take_equal_steps(many_shards):
    orders = [
        epoch_order(many_shards, LoaderOptions(batch_size=4, shuffle=True, rank=r, world_size=3))
        for r in range(3)
    ]
    assert len({len(o) for o in orders}) == 1
    shards = [set(np.searchsorted(many_shards.offsets, o, side="right") - 1) for o in orders]
    assert not (shards[0] & shards[1] or shards[0] & shards[2] or shards[1] & shards[2])


def test_augmentation_mirrors_whole_images_and_keeps_labels():
    batch = torch.arange(4 * 3 * 2 * 3, dtype=torch.uint8).reshape(4, 3, 2, 3)
    out = augment(batch, torch.Generator().manual_seed(0))
    for original, result in zip(batch, out, strict=True):
        assert torch.equal(result, original) or torch.equal(result, original.flip(-1))
    flipped = [not torch.equal(r, o) for r, o in zip(batch, out, strict=True)]
    again = augment(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and any(flipped)


def test_options_suit_the_device():
    cpu = LoaderOptions.for_device("cpu", batch_size=8)
    assert (cpu.workers, cpu.pin_memory) == (0, False)
    # Deriving options for CUDA needs no GPU: the loader only asks for them.
    cuda = LoaderOptions.for_device("cuda", batch_size=8)
    assert cuda.workers >= 1 and cuda.pin_memory
    assert LoaderOptions.for_device("cuda", batch_size=8, workers=0).workers == 0


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": 4, "workers": -1}, "workers"),
        ({"batch_size": 4, "rank": 2, "world_size": 2}, "rank"),
    ],
)
def test_bad_options_are_named(options, named):
    with pytest.raises(ValueError, match=named):
        LoaderOptions(**options)
