"""Synthetic bins: ABID's layout and schema, deterministic for a seed."""

import inspect
import json

from PIL import Image

from invmon.core.settings import default_of
from invmon.data import abid
from invmon.data.synth import make_bin, synthesize
from invmon.stages.synth import SynthSettings


def test_layout_and_schema_match_abid(raw_dir):
    images = sorted(p.name for p in (raw_dir / "bin-images").iterdir())
    documents = sorted(p.name for p in (raw_dir / "metadata").iterdir())
    assert images[0] == "00001.jpg" and len(images) == 120
    assert [d.replace(".json", ".jpg") for d in documents] == images
    saw_null = saw_sku_not_asin = False
    for path in (raw_dir / "metadata").iterdir():
        data = json.loads(path.read_text())
        assert set(data) == {"BIN_FCSKU_DATA", "EXPECTED_QUANTITY"}
        items = data["BIN_FCSKU_DATA"]
        assert data["EXPECTED_QUANTITY"] == sum(i["quantity"] for i in items.values())
        for key, item in items.items():
            assert set(item) == {
                "asin",
                "height",
                "length",
                "name",
                "normalizedName",
                "quantity",
                "weight",
                "width",
            }
            assert item["weight"]["unit"] == "pounds" and item["height"]["unit"] == "IN"
            saw_sku_not_asin |= key != item["asin"]
            saw_null |= any(
                item[d]["value"] is None for d in ("height", "length", "weight", "width")
            )
    assert saw_null and saw_sku_not_asin


def test_images_are_baseline_jpegs_of_abid_like_size(raw_dir):
    for path in sorted((raw_dir / "bin-images").iterdir())[:20]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert not image.info.get("progressive")
            assert 315 <= image.width <= 785 and 240 <= image.height <= 1069


def test_same_seed_same_bin_and_counts_cover_the_range():
    assert make_bin(7, 12, 5) == make_bin(7, 12, 5)
    assert make_bin(7, 12, 5)[1] != make_bin(8, 12, 5)[1]
    counts = {make_bin(1, n, 3)[3] for n in range(1, 60)}
    assert counts == {0, 1, 2, 3}


def test_metadata_count_matches_the_drawn_items():
    _, _, document, count = make_bin(5, 3, 5)
    assert abid.expected_quantity(document) == count


def test_synth_writes_to_s3(s3_url, public_bucket):
    from invmon.data.s3 import make_client

    report = synthesize(
        f"s3://{public_bucket}/abid", 5, seed=1, endpoint_url=s3_url, anonymous=True, workers=1
    )
    keys = {
        o["Key"]
        for o in make_client(s3_url, anonymous=True).list_objects_v2(Bucket=public_bucket)[
            "Contents"
        ]
    }
    assert report.bins == 5
    assert "abid/bin-images/00005.jpg" in keys and "abid/metadata/00001.json" in keys
    assert len(keys) == 10


def test_the_command_draws_with_the_generators_defaults():
    """`invmon synth` without --seed or --max-items draws what synthesize() draws by default."""
    parameters = inspect.signature(synthesize).parameters
    for name in ("seed", "max_items"):
        assert default_of(SynthSettings, name) == parameters[name].default, name


def test_mislabeled_bins_keep_their_photo_and_the_truth_goes_to_its_own_file(tmp_path):
    import csv

    import pytest

    from invmon.cli import main

    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    synthesize(str(clean), 200, seed=4, max_items=5, workers=1)
    args = ["synth", "--out", str(noisy), "--count", "200", "--seed", "4"]
    assert main([*args, "--mislabel-rate", "0.25"]) == 0
    with open(noisy / "truth.csv", newline="") as handle:
        truth = {r["bin_id"]: r for r in csv.DictReader(handle)}
    assert len(truth) == 200
    wrong = 0
    for bin_id, row in truth.items():
        image = f"bin-images/{bin_id}.jpg"
        assert (noisy / image).read_bytes() == (clean / image).read_bytes()
        document = json.loads((noisy / "metadata" / f"{bin_id}.json").read_text())
        recorded = abid.expected_quantity(json.dumps(document).encode())
        assert recorded == int(row["recorded_count"])
        assert recorded == sum(i["quantity"] for i in document["BIN_FCSKU_DATA"].values())
        clean_count = json.loads((clean / "metadata" / f"{bin_id}.json").read_text())
        assert int(row["true_count"]) == clean_count["EXPECTED_QUANTITY"]
        if recorded != int(row["true_count"]):
            wrong += 1
            assert abs(recorded - int(row["true_count"])) == 1 and 0 <= recorded <= 5
    assert 30 <= wrong <= 70  # 25 % of 200, drawn bin by bin
    with pytest.raises(ValueError, match=r"--mislabel-rate must be in \[0, 1\), got 1.5"):
        synthesize(str(tmp_path / "x"), 2, mislabel_rate=1.5)
    with pytest.raises(ValueError, match=r"s3:// --out needs --truth"):
        synthesize("s3://bucket/p", 2, mislabel_rate=0.1)
