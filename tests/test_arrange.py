"""Arrange: labels from EXPECTED_QUANTITY, class folders, a stratified seeded split."""

import json
import shutil

import pytest

from invmon.data.layout import SPLITS, read_manifest
from invmon.stages import arrange
from invmon.stages.arrange import ArrangeSettings, parse_classes, parse_split


def test_layout_manifest_and_counts(arranged_dir, raw_dir):
    rows = read_manifest(arranged_dir)
    assert len(rows) == 120
    for bin_id, count, split in rows:
        image = arranged_dir / split / str(count) / f"{bin_id}.jpg"
        assert image.read_bytes() == (raw_dir / "bin-images" / f"{bin_id}.jpg").read_bytes()
        document = json.loads((raw_dir / "metadata" / f"{bin_id}.json").read_text())
        assert document["EXPECTED_QUANTITY"] == count
    assert len({r[0] for r in rows}) == len(rows)  # no bin in two splits
    dataset = json.loads((arranged_dir / "dataset.json").read_text())
    assert dataset["classes"] == [0, 1, 2, 3, 4, 5] and dataset["kept"] == 120


def test_split_is_stratified_by_count(arranged_dir):
    rows = read_manifest(arranged_dir)
    for count in range(6):
        in_class = [r for r in rows if r[1] == count]
        test = sum(r[2] == "test" for r in in_class)
        assert abs(test - 0.15 * len(in_class)) <= 1


def test_same_seed_same_split_different_seed_different_split(raw_dir, tmp_path):
    arrange.run(ArrangeSettings(raw=str(raw_dir), out=str(tmp_path / "a"), seed=1))
    arrange.run(ArrangeSettings(raw=str(raw_dir), out=str(tmp_path / "b"), seed=1))
    arrange.run(ArrangeSettings(raw=str(raw_dir), out=str(tmp_path / "c"), seed=2))
    assert read_manifest(tmp_path / "a") == read_manifest(tmp_path / "b")
    assert read_manifest(tmp_path / "a") != read_manifest(tmp_path / "c")


def test_drops_are_counted_by_reason(raw_dir, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dir, raw)
    (raw / "metadata" / "00001.json").unlink()  # image without metadata
    (raw / "bin-images" / "00002.jpg").unlink()  # metadata without image
    (raw / "metadata" / "00003.json").write_text("{broken")
    report = arrange.run(ArrangeSettings(raw=str(raw), out=str(tmp_path / "out"), classes="1-3"))
    assert report.dropped["image without metadata"] == 1
    assert report.dropped["metadata without image"] == 1
    assert report.dropped["invalid metadata"] == 1
    assert report.dropped["count outside classes"] > 0
    assert report.kept + sum(report.dropped.values()) == 120
    assert set(report.counts["train"]) == {1, 2, 3}
    assert {p.name for p in (tmp_path / "out" / "train").iterdir()} <= {"1", "2", "3"}


def test_rerun_replaces_the_previous_layout(raw_dir, tmp_path):
    arrange.run(ArrangeSettings(raw=str(raw_dir), out=str(tmp_path), classes="0-5"))
    arrange.run(ArrangeSettings(raw=str(raw_dir), out=str(tmp_path), classes="1-2"))
    folders = {p.name for s in SPLITS for p in (tmp_path / s).iterdir()}
    assert folders == {"1", "2"}


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "raw" / "metadata").mkdir(parents=True)
    with pytest.raises(ValueError, match="no usable bins"):
        arrange.run(ArrangeSettings(raw=str(tmp_path / "raw"), out=str(tmp_path / "out")))


@pytest.mark.parametrize(("text", "expected"), [("0-5", [0, 1, 2, 3, 4, 5]), ("1,3,2", [1, 2, 3])])
def test_parse_classes(text, expected):
    assert parse_classes(text) == expected


@pytest.mark.parametrize("text", ["5", "a-b", "-1-3", "3-1", ""])
def test_bad_classes_are_named(text):
    with pytest.raises(ValueError, match="--classes"):
        parse_classes(text)


def test_settings_name_bad_classes_and_split_when_made():
    with pytest.raises(ValueError, match="--classes"):
        ArrangeSettings(raw="raw", out="out", classes="five")
    with pytest.raises(ValueError, match="--split"):
        ArrangeSettings(raw="raw", out="out", split="0.5,0.5")


@pytest.mark.parametrize("text", ["0.8,0.2", "0.5,0.5,0.5", "x,y,z", "0,0.5,0.5", "1,0,0"])
def test_bad_split_is_named(text):
    with pytest.raises(ValueError, match="--split"):
        parse_split(text)


def test_data_report_has_counts_drops_image_sizes_and_the_split_check(raw_dir, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dir, raw)
    (raw / "metadata" / "00001.json").unlink()
    report = arrange.run(ArrangeSettings(raw=str(raw), out=str(tmp_path / "out"), classes="0-5"))
    text = (tmp_path / "out" / "data_report.md").read_text()
    train = sum(report.counts["train"].values())
    assert f"| **all** | {train} |" in text
    assert "| image without metadata | 1 | `00001` |" in text
    assert "| width (px) |" in text and "| file size (KB) |" in text
    assert "every bin is in exactly one split: yes" in text
    assert report.splits_disjoint
    # synth draws photos 420-560 px wide and 300-420 px high
    assert 420 <= report.images.width[0] <= report.images.width[3] < 560
    assert 300 <= report.images.height[0] <= report.images.height[3] < 420


def test_a_bin_in_two_splits_is_found(arranged_dir, tmp_path):
    from invmon.stages.arrange import splits_overlap

    out = tmp_path / "arranged"
    shutil.copytree(arranged_dir, out)
    assert splits_overlap(out) == {}
    bin_id, count, _ = next(r for r in read_manifest(out) if r[2] == "train")
    leaked = out / "test" / str(count) / f"{bin_id}.jpg"
    leaked.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "train" / str(count) / f"{bin_id}.jpg", leaked)
    assert set(splits_overlap(out)) == {bin_id}


def test_images_are_hard_links_by_default(raw_dir, tmp_path):
    arrange.run(ArrangeSettings(raw=str(raw_dir), out=str(tmp_path / "out")))
    bin_id, count, split = read_manifest(tmp_path / "out")[0]
    arranged = tmp_path / "out" / split / str(count) / f"{bin_id}.jpg"
    assert arranged.stat().st_ino == (raw_dir / "bin-images" / f"{bin_id}.jpg").stat().st_ino


def test_refer_mode_writes_no_image_and_preprocess_reads_the_raw_folder(raw_dir, tmp_path):
    from invmon.data.layout import image_locator
    from invmon.stages import preprocess
    from invmon.stages.preprocess import PreprocessSettings

    report = arrange.run(
        ArrangeSettings(raw=str(raw_dir), out=str(tmp_path / "out"), images="refer")
    )
    assert report.layout == "raw"
    assert not list((tmp_path / "out").rglob("*.jpg"))
    bin_id, count, split = read_manifest(tmp_path / "out")[0]
    assert image_locator(tmp_path / "out")(bin_id, count, split) == (
        raw_dir / "bin-images" / f"{bin_id}.jpg"
    )
    shards = preprocess.run(
        PreprocessSettings(
            data=str(tmp_path / "out"), out=str(tmp_path / "shards"), image_size=16, workers=1
        )
    )
    assert sum(shards.images.values()) == report.kept


def test_raw_may_be_a_workspace_pointer(raw_dir, tmp_path):
    from invmon.data import workspace

    workspace.write_pointer(tmp_path / "artifact", raw_dir)
    report = arrange.run(
        ArrangeSettings(
            raw=str(tmp_path / "artifact"), out=str(tmp_path / "out"), images="link-or-refer"
        )
    )
    assert report.kept == 120 and report.layout == "folders"  # same file system: links
    shutil.rmtree(raw_dir.parent / "gone", ignore_errors=True)
    workspace.write_pointer(tmp_path / "dangling", raw_dir.parent / "gone")
    with pytest.raises(ValueError, match="workspace"):
        arrange.run(ArrangeSettings(raw=str(tmp_path / "dangling"), out=str(tmp_path / "out2")))


def test_bad_image_mode_is_named(raw_dir, tmp_path):
    with pytest.raises(ValueError, match="--images"):
        arrange.run(ArrangeSettings(raw=str(raw_dir), out=str(tmp_path / "out"), images="symlink"))
