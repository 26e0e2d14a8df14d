"""Ingest against a real S3 server on loopback (moto), through boto3."""

import json

import pytest

from invmon.ingest import ingest, read_file_list
from invmon.s3 import make_client
from invmon.synth import synthesize


@pytest.fixture
def seeded(s3_url, public_bucket):
    """A bucket holding 12 synthetic bins under a prefix."""
    synthesize(
        f"s3://{public_bucket}/abid", 12, seed=2, endpoint_url=s3_url, anonymous=True, workers=1
    )
    return f"s3://{public_bucket}/abid"


def test_copies_every_object_in_the_bucket_layout(seeded, s3_url, tmp_path):
    report = ingest(seeded, tmp_path, endpoint_url=s3_url, anonymous=True, workers=8)
    assert (report.objects, report.copied, report.failed) == (24, 24, {})
    assert len(list((tmp_path / "bin-images").glob("*.jpg"))) == 12
    assert len(list((tmp_path / "metadata").glob("*.json"))) == 12
    saved = json.loads((tmp_path / "ingest_report.json").read_text())
    assert saved["copied"] == 24


def test_rerun_skips_what_is_present_and_refetches_a_wrong_size(seeded, s3_url, tmp_path):
    ingest(seeded, tmp_path, endpoint_url=s3_url, anonymous=True)
    (tmp_path / "bin-images" / "00003.jpg").write_bytes(b"partial")
    (tmp_path / "metadata" / "00004.json").unlink()
    report = ingest(seeded, tmp_path, endpoint_url=s3_url, anonymous=True)
    assert (report.copied, report.skipped_present) == (2, 22)
    assert (tmp_path / "bin-images" / "00003.jpg").stat().st_size > 1000


def test_limit_takes_whole_bins(seeded, s3_url, tmp_path):
    report = ingest(seeded, tmp_path, endpoint_url=s3_url, anonymous=True, limit=5)
    assert report.copied == 10
    images = {p.stem for p in (tmp_path / "bin-images").iterdir()}
    documents = {p.stem for p in (tmp_path / "metadata").iterdir()}
    assert images == documents and len(images) == 5


def test_unpadded_and_padded_ids_stay_distinct_bins(s3_url, public_bucket, tmp_path):
    client = make_client(s3_url, anonymous=True)
    for key, body in [
        ("bin-images/121.jpg", b"a" * 10),
        ("bin-images/00121.jpg", b"b" * 20),
        ("metadata/121.json", b"{}"),
        ("metadata/00121.json", b"{ }"),
    ]:
        client.put_object(Bucket=public_bucket, Key=key, Body=body)
    ingest(f"s3://{public_bucket}", tmp_path, endpoint_url=s3_url, anonymous=True)
    assert (tmp_path / "bin-images" / "121.jpg").read_bytes() == b"a" * 10
    assert (tmp_path / "bin-images" / "00121.jpg").read_bytes() == b"b" * 20


def test_file_list_selects_bins_and_keeps_every_class(seeded, s3_url, tmp_path):
    file_list = tmp_path / "file_list.json"
    file_list.write_text(
        json.dumps(
            {
                "1": ["data/metadata/00001.json", "data/metadata/00002.json"],
                "2": ["data/metadata/00007.json"],
            }
        )
    )
    assert read_file_list(file_list, limit=2) == ["00001", "00007"]
    out = tmp_path / "out"
    report = ingest(seeded, out, endpoint_url=s3_url, anonymous=True, file_list=file_list)
    assert report.copied == 6
    assert sorted(p.stem for p in (out / "bin-images").iterdir()) == ["00001", "00002", "00007"]


def test_no_matching_objects_is_an_error(s3_url, public_bucket, tmp_path):
    with pytest.raises(ValueError, match="no bin images or metadata matched"):
        ingest(f"s3://{public_bucket}/nothing-here", tmp_path, endpoint_url=s3_url, anonymous=True)


def test_keys_outside_the_layout_are_refused_and_reported(s3_url, public_bucket, tmp_path):
    client = make_client(s3_url, anonymous=True)
    client.put_object(Bucket=public_bucket, Key="bin-images/00001.jpg", Body=b"x")
    client.put_object(Bucket=public_bucket, Key="bin-images/../../escape.jpg", Body=b"x")
    client.put_object(Bucket=public_bucket, Key="bin-images/sub/00002.jpg", Body=b"x")
    report = ingest(f"s3://{public_bucket}", tmp_path / "out", endpoint_url=s3_url, anonymous=True)
    assert report.copied == 1
    assert len(report.refused_keys) == 2
    assert not (tmp_path / "escape.jpg").exists()


@pytest.mark.parametrize("source", ["bucket/prefix", "s3://", "http://x"])
def test_bad_source_is_named(source, tmp_path):
    with pytest.raises(ValueError, match="S3 URI"):
        ingest(source, tmp_path)
