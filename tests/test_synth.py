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
