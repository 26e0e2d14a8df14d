"""Preprocess and the shared transform: decode once, resize, shard."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from invmon.data.layout import read_manifest
from invmon.data.shards import DatasetIndex
from invmon.data.synth import make_bin
from invmon.data.transforms import InvalidImage, Preprocessing, normalize, prepare
from invmon.stages import preprocess
from invmon.stages.preprocess import PreprocessSettings


def _jpeg(width=480, height=330, colour=(200, 180, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def test_prepare_gives_square_uint8_chw():
    array = prepare(_jpeg(), 64)
    assert array.shape == (3, 64, 64) and array.dtype == np.uint8
    assert abs(int(array[0].mean()) - 200) <= 3


def test_prepare_reads_png_too():
    buffer = io.BytesIO()
    Image.new("RGBA", (50, 40), (10, 20, 30, 255)).save(buffer, "PNG")
    assert prepare(buffer.getvalue(), 16).shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all", "not a recognised image"),
        (make_bin(1, 1, 5)[1][:10_000], "could not be decoded"),
    ],
)
def test_prepare_refuses_bad_bytes(data, message):
    with pytest.raises(InvalidImage, match=message):
        prepare(data, 32)


def test_prepare_refuses_images_over_the_pixel_limit():
    with pytest.raises(InvalidImage, match="over the limit"):
        prepare(_jpeg(400, 300), 32, max_pixels=100_000)


def test_normalize_uses_imagenet_statistics():
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(batch, Preprocessing(image_size=16))
    assert torch.allclose(out[0, 0], torch.full((4, 4), (1 - 0.485) / 0.229))
    with pytest.raises(ValueError, match="uint8"):
        normalize(batch.float(), Preprocessing())


def test_shards_hold_every_arranged_image_once(shards_dir, arranged_dir):
    index = DatasetIndex.read(shards_dir)
    manifest = (arranged_dir / "manifest.csv").read_text().splitlines()[1:]
    assert sum(index.splits[s]["images"] for s in ("train", "val", "test")) == len(manifest)
    train = index.split("train")
    assert len(train.images) == -(-len(train) // 40)  # 40 images per shard
    assert all(len(shard) == 40 for shard in train.images[:-1])
    first = train.gather(np.array([0]))[0]
    bin_id = train.ids[0]
    count = train.counts[0]
    source = (arranged_dir / "train" / str(count) / f"{bin_id}.jpg").read_bytes()
    assert np.array_equal(first, prepare(source, 32))


def test_a_bad_image_is_skipped_and_named(arranged_dir, tmp_path):
    import shutil

    data = tmp_path / "arranged"
    shutil.copytree(arranged_dir, data)
    victim = next((data / "train").glob("*/*.jpg"))
    victim.write_bytes(b"\xff\xd8 truncated")
    report = preprocess.run(
        PreprocessSettings(data=str(data), out=str(tmp_path / "out"), image_size=32, workers=1)
    )
    assert report.skipped.keys() == {victim.stem}
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    in_manifest = sum(1 for r in read_manifest(data) if r[2] == "train")
    assert index["splits"]["train"]["images"] == in_manifest - 1


def test_a_stopped_run_resumes_at_the_first_unfinished_shard(arranged_dir, tmp_path):
    out = tmp_path / "shards"
    settings = PreprocessSettings(
        data=str(arranged_dir), out=str(out), image_size=32, shard_size=20, workers=1
    )
    first = preprocess.run(settings)
    total = sum(first.shards.values())
    before = {p: p.stat().st_mtime_ns for p in out.rglob("shard-*")}
    # As if the run had been killed while writing the last train shard:
    last = f"shard-{first.shards['train'] - 1:05d}"
    for name in (f"{last}.done.json", f"{last}.ids.json", f"{last}.labels.npy"):
        (out / "train" / name).unlink()
    (out / "train" / f"{last}.images.npy").rename(out / "train" / f".{last}.images.npy.part")
    (out / "index.json").unlink()
    second = preprocess.run(settings)
    assert second.reused_shards == total - 1
    assert second.images == first.images
    untouched = [p for p in before if last not in p.name]
    assert all(p.stat().st_mtime_ns == before[p] for p in untouched)
    index = DatasetIndex.read(out)
    train = index.split("train")
    assert np.array_equal(train.gather(np.array([len(train) - 1]))[0].shape, (3, 32, 32))
    # Another image size is other data: nothing is reused.
    third = preprocess.run(settings.replace(image_size=16))
    assert third.reused_shards == 0


def test_shard_files_hold_exactly_the_kept_rows(arranged_dir, tmp_path):
    import shutil

    data = tmp_path / "arranged"
    shutil.copytree(arranged_dir, data)
    victims = sorted((data / "train").glob("*/*.jpg"))[:3]
    for victim in victims:
        victim.write_bytes(b"not a jpeg")
    report = preprocess.run(
        PreprocessSettings(
            data=str(data), out=str(tmp_path / "out"), image_size=32, shard_size=1000, workers=2
        )
    )
    assert set(report.skipped) == {v.stem for v in victims}
    images = np.load(tmp_path / "out" / "train" / "shard-00000.images.npy")
    labels = np.load(tmp_path / "out" / "train" / "shard-00000.labels.npy")
    ids = json.loads((tmp_path / "out" / "train" / "shard-00000.ids.json").read_text())
    assert images.shape[0] == labels.shape[0] == len(ids) == report.images["train"]
    row = 5
    count = labels[row]
    source = (data / "train" / str(count) / f"{ids[row]}.jpg").read_bytes()
    assert np.array_equal(images[row], prepare(source, 32))
