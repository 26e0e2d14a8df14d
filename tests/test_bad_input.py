"""Odd objects in a bucket, fed through the real S3 server, ingest, arrange and preprocess.

Each case of what a real bucket holds gets a bin of its own among good ones; the test checks that
each lands in the right report under the right reason, named, and that the run goes on.
"""

import io
import json

import pytest
from PIL import Image

from invmon.data.s3 import make_client
from invmon.data.synth import make_bin
from invmon.stages import arrange, ingest, preprocess
from invmon.stages.arrange import ArrangeSettings
from invmon.stages.ingest import IngestSettings
from invmon.stages.preprocess import PreprocessSettings


def _document(count, **changes) -> bytes:
    item = {
        "asin": "B000TEST00",
        "height": {"unit": "IN", "value": 2.0},
        "length": {"unit": "IN", "value": 3.0},
        "name": "Test item",
        "normalizedName": "Test item",
        "quantity": count,
        "weight": {"unit": "pounds", "value": 0.5},
        "width": {"unit": "IN", "value": 4.0},
    }
    document = {"BIN_FCSKU_DATA": {"B000TEST00": item} if count else {}, "EXPECTED_QUANTITY": count}
    document.update(changes)
    return json.dumps(document).encode()


@pytest.fixture(scope="module")
def bad_bucket(s3_url):
    """Good bins 00001-00040 plus one bin per odd case (ids 00901...)."""
    from conftest import public_bucket_on

    bucket = public_bucket_on(s3_url)
    client = make_client(s3_url, anonymous=True)

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=body)

    for number in range(1, 41):
        bin_id, jpeg, document, _ = make_bin(5, number, 5)
        put(f"bin-images/{bin_id}.jpg", jpeg)
        put(f"metadata/{bin_id}.json", document)
    _, good_jpeg, _, _ = make_bin(5, 99, 5)
    null_dims = json.loads(_document(2))
    null_dims["BIN_FCSKU_DATA"]["B000TEST00"]["height"]["value"] = None
    null_dims["BIN_FCSKU_DATA"]["B000TEST00"]["weight"]["value"] = None
    other_key = json.loads(_document(3))
    other_key["BIN_FCSKU_DATA"] = {"X00FULFIL1": other_key["BIN_FCSKU_DATA"]["B000TEST00"]}
    corrupt = bytearray(good_jpeg)
    corrupt[2:400] = b"\0" * 398  # header destroyed: markers and tables gone
    gif = io.BytesIO()
    Image.new("RGB", (40, 30)).save(gif, "GIF")
    cases = {
        "00901": (None, _document(1)),  # metadata without image
        "00902": (good_jpeg, None),  # image without metadata
        "00903": (good_jpeg[: len(good_jpeg) // 2], _document(1)),  # truncated JPEG
        "00904": (bytes(corrupt), _document(1)),  # corrupt JPEG
        "00905": (b"<html>404 Not Found</html>", _document(1)),  # not an image under .jpg
        "00906": (gif.getvalue(), _document(1)),  # an image, but not JPEG/PNG
        "00907": (good_jpeg, b'{"BIN_FCSKU_DATA": {'),  # invalid JSON
        "00908": (good_jpeg, _document(1, EXPECTED_QUANTITY=None)),  # no usable count
        "00909": (good_jpeg, json.dumps({"BIN_FCSKU_DATA": {}}).encode()),  # no EXPECTED_QUANTITY
        "00910": (good_jpeg, json.dumps(null_dims).encode()),  # null dimensions and weight: kept
        "00911": (good_jpeg, json.dumps(other_key).encode()),  # SKU key is not the ASIN: kept
        "00912": (good_jpeg, _document(0)),  # empty bin: kept
    }
    for bin_id, (image, document) in cases.items():
        if image is not None:
            put(f"bin-images/{bin_id}.jpg", image)
        if document is not None:
            put(f"metadata/{bin_id}.json", document)
    return f"s3://{bucket}"


@pytest.fixture(scope="module")
def through_the_stages(bad_bucket, s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    ingested = ingest.run(IngestSettings(source=bad_bucket, out=str(root / "raw"), s3=s3))
    arranged = arrange.run(
        ArrangeSettings(
            raw=str(root / "raw"), out=str(root / "arranged"), classes="0-5", split="0.7,0.15,0.15"
        )
    )
    shards = preprocess.run(
        PreprocessSettings(
            data=str(root / "arranged"), out=str(root / "shards"), image_size=32, workers=1
        )
    )
    return ingested, arranged, shards, root


def test_ingest_copies_every_object_as_it_is(through_the_stages):
    ingested, *_ = through_the_stages
    assert (ingested.objects, ingested.copied, ingested.failed) == (2 * 40 + 2 * 12 - 2, 102, {})


@pytest.mark.parametrize(
    ("reason", "bins"),
    [
        ("metadata without image", ["00901"]),
        ("image without metadata", ["00902"]),
        ("truncated image", ["00903"]),
        ("unreadable image", ["00904", "00905", "00906"]),
        ("invalid metadata", ["00907", "00908", "00909"]),
    ],
)
def test_each_bad_case_is_dropped_counted_and_named(through_the_stages, reason, bins):
    _, arranged, _, root = through_the_stages
    assert arranged.dropped[reason] == len(bins)
    assert arranged.dropped_bins[reason] == bins
    report = (root / "arranged" / "data_report.md").read_text()
    assert f"| {reason} | {len(bins)} | `{bins[0]}`" in report


def test_problems_say_what_is_wrong(through_the_stages):
    _, arranged, _, _ = through_the_stages
    assert "end-of-image marker" in arranged.problems["00903"]
    assert "not allowed" in arranged.problems["00906"] and "GIF" in arranged.problems["00906"]
    assert "invalid JSON" in arranged.problems["00907"]
    assert "EXPECTED_QUANTITY" in arranged.problems["00908"]
    assert "EXPECTED_QUANTITY" in arranged.problems["00909"]


def test_real_quirks_of_the_metadata_keep_the_bin(through_the_stages):
    _, arranged, shards, root = through_the_stages
    kept = {row.split(",")[0] for row in (root / "arranged" / "manifest.csv").read_text().split()}
    assert {"00910", "00911", "00912"} <= kept
    assert arranged.kept == 43
    assert sum(shards.images.values()) == 43 and shards.skipped == {}


def test_zero_matching_objects_is_an_error_not_an_empty_success(s3_url, tmp_path, s3):
    from conftest import public_bucket_on

    bucket = public_bucket_on(s3_url)
    make_client(s3_url, anonymous=True).put_object(Bucket=bucket, Key="other/x.jpg", Body=b"x")
    with pytest.raises(ValueError, match="no bin images or metadata matched"):
        ingest.run(IngestSettings(source=f"s3://{bucket}", out=str(tmp_path), s3=s3))


def test_a_bucket_of_only_bad_bins_is_an_error_at_arrange(bad_bucket, s3, tmp_path):
    file_list = tmp_path / "bad.json"
    file_list.write_text(json.dumps({"1": ["metadata/00903.json", "metadata/00907.json"]}))
    ingest.run(
        IngestSettings(
            source=bad_bucket, out=str(tmp_path / "raw"), s3=s3, file_list=str(file_list)
        )
    )
    with pytest.raises(ValueError, match="no usable bins"):
        arrange.run(ArrangeSettings(raw=str(tmp_path / "raw"), out=str(tmp_path / "arranged")))
