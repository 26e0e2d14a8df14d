"""Ingest against a real S3 server on loopback (moto), through boto3."""

import itertools
import json

import pytest

from invmon.data.abid import read_file_list
from invmon.data.bucket_copy import Part
from invmon.data.s3 import make_client
from invmon.data.synth import synthesize
from invmon.stages import ingest
from invmon.stages.ingest import IngestSettings, MergeSettings, PlanSettings


@pytest.fixture
def seeded(s3_url, public_bucket):
    """A bucket holding 12 synthetic bins under a prefix."""
    synthesize(
        f"s3://{public_bucket}/abid", 12, seed=2, endpoint_url=s3_url, anonymous=True, workers=1
    )
    return f"s3://{public_bucket}/abid"


def test_copies_every_object_in_the_bucket_layout(seeded, s3, tmp_path):
    report = ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3, workers=8))
    assert (report.objects, report.copied, report.failed) == (24, 24, {})
    assert len(list((tmp_path / "bin-images").glob("*.jpg"))) == 12
    assert len(list((tmp_path / "metadata").glob("*.json"))) == 12
    saved = json.loads((tmp_path / "ingest_report.json").read_text())
    assert saved["copied"] == 24


def test_rerun_skips_what_is_present_and_refetches_a_wrong_size(seeded, s3, tmp_path):
    ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3))
    (tmp_path / "bin-images" / "00003.jpg").write_bytes(b"partial")
    (tmp_path / "metadata" / "00004.json").unlink()
    report = ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3))
    assert (report.copied, report.skipped_present) == (2, 22)
    assert (tmp_path / "bin-images" / "00003.jpg").stat().st_size > 1000


def test_limit_takes_whole_bins(seeded, s3, tmp_path):
    report = ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3, limit=5))
    assert report.copied == 10
    images = {p.stem for p in (tmp_path / "bin-images").iterdir()}
    documents = {p.stem for p in (tmp_path / "metadata").iterdir()}
    assert images == documents and len(images) == 5


def test_each_bin_is_copied_whole_in_bin_order(seeded, s3, tmp_path, monkeypatch):
    """The metadata folder was listed only after every image key: a copy stopped halfway held
    images without their documents. Both folders are now listed side by side, and each bin's
    image and metadata are taken together."""
    from invmon.data.bucket_copy import _Copier

    taken, real_copy = [], _Copier.copy

    def spy(self, obj):
        taken.append(obj.relative)
        return real_copy(self, obj)

    monkeypatch.setattr(_Copier, "copy", spy)
    ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3, workers=1))
    ids = sorted(p.stem for p in (tmp_path / "bin-images").iterdir())
    assert taken == [key for i in ids for key in (f"bin-images/{i}.jpg", f"metadata/{i}.json")]


def test_a_limited_copy_stops_listing_after_its_bins(seeded, s3, tmp_path, monkeypatch):
    """``--limit 2`` of ABID listed all 1,070,468 keys (1,071 requests) before the copy ended:
    the metadata folder came after every image. Now the listing stops at the first bin past
    the limit: with first pages of 3 keys, one page of each folder."""
    from invmon.data import bucket_copy
    from invmon.data.s3 import ObjectReader

    monkeypatch.setattr(bucket_copy, "FIRST_PAGE", 3)
    listed, real_list = [], ObjectReader.list

    def spy(self, prefix, **options):
        for item in real_list(self, prefix, **options):
            listed.append(item.key)
            yield item

    monkeypatch.setattr(ObjectReader, "list", spy)
    report = ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3, limit=2))
    assert (report.objects, report.copied) == (4, 4)
    assert len(listed) <= 6  # the old copy listed all 24 keys


def test_unpadded_and_padded_ids_stay_distinct_bins(s3_url, public_bucket, tmp_path, s3):
    client = make_client(s3_url, anonymous=True)
    for key, body in [
        ("bin-images/121.jpg", b"a" * 10),
        ("bin-images/00121.jpg", b"b" * 20),
        ("metadata/121.json", b"{}"),
        ("metadata/00121.json", b"{ }"),
    ]:
        client.put_object(Bucket=public_bucket, Key=key, Body=body)
    ingest.run(IngestSettings(source=f"s3://{public_bucket}", out=str(tmp_path), s3=s3))
    assert (tmp_path / "bin-images" / "121.jpg").read_bytes() == b"a" * 10
    assert (tmp_path / "bin-images" / "00121.jpg").read_bytes() == b"b" * 20


def test_file_list_selects_bins_and_keeps_every_class(seeded, s3, tmp_path):
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
    report = ingest.run(
        IngestSettings(source=seeded, out=str(out), s3=s3, file_list=str(file_list))
    )
    assert report.copied == 6
    assert sorted(p.stem for p in (out / "bin-images").iterdir()) == ["00001", "00002", "00007"]


def test_no_matching_objects_is_an_error(s3, public_bucket, tmp_path):
    with pytest.raises(ValueError, match="no bin images or metadata matched"):
        ingest.run(
            IngestSettings(source=f"s3://{public_bucket}/nothing-here", out=str(tmp_path), s3=s3)
        )


def test_keys_outside_the_layout_are_refused_and_reported(s3_url, public_bucket, tmp_path, s3):
    client = make_client(s3_url, anonymous=True)
    client.put_object(Bucket=public_bucket, Key="bin-images/00001.jpg", Body=b"x")
    client.put_object(Bucket=public_bucket, Key="bin-images/../../escape.jpg", Body=b"x")
    client.put_object(Bucket=public_bucket, Key="bin-images/sub/00002.jpg", Body=b"x")
    report = ingest.run(
        IngestSettings(source=f"s3://{public_bucket}", out=str(tmp_path / "out"), s3=s3)
    )
    assert report.copied == 1
    assert len(report.refused_keys) == 2
    assert not (tmp_path / "escape.jpg").exists()


@pytest.mark.parametrize("source", ["bucket/prefix", "s3://", "http://x"])
def test_bad_source_is_named(source, tmp_path):
    with pytest.raises(ValueError, match="S3 URI"):
        ingest.run(IngestSettings(source=source, out=str(tmp_path)))


# -- parts, file lists from S3, verification ---------------------------------------------------


@pytest.fixture
def two_families(s3_url, public_bucket):
    """A bucket holding padded ids 00001..00030 and un-padded ids 1..12 (different bins)."""
    client = make_client(s3_url, anonymous=True)
    ids = [f"{n:05d}" for n in range(1, 31)] + [str(n) for n in range(1, 13)]
    for bin_id in ids:
        client.put_object(
            Bucket=public_bucket, Key=f"bin-images/{bin_id}.jpg", Body=bin_id.encode()
        )
        client.put_object(Bucket=public_bucket, Key=f"metadata/{bin_id}.json", Body=b"{}")
    return f"s3://{public_bucket}", ids


def test_parts_cover_both_id_families_once(two_families, s3, tmp_path):
    source, ids = two_families
    plan = ingest.plan_parts(PlanSettings(source=source, s3=s3, parts=4))
    assert len(plan) == 4 and sum(p.objects for p in plan) == 2 * len(ids)
    folders = []
    for part in plan:
        out = tmp_path / f"part{part.index}"
        report = ingest.run(
            IngestSettings(source=source, out=str(out), s3=s3, part=json.dumps(part.to_dict()))
        )
        assert report.copied == report.objects > 0
        folders.append(out)
    per_part = [{p.stem for p in (f / "bin-images").iterdir()} for f in folders]
    assert sum(len(s) for s in per_part) == len(ids)  # disjoint
    assert set().union(*per_part) == set(ids)  # complete, "1" and "00001" both kept
    merged = ingest.merge_parts(
        MergeSettings(parts=tuple(map(str, folders)), out=str(tmp_path / "merged"))
    )
    assert (merged.copied, merged.objects, merged.failed) == (2 * len(ids), 2 * len(ids), {})
    assert (tmp_path / "merged" / "bin-images" / "1.jpg").read_bytes() == b"1"
    assert (tmp_path / "merged" / "bin-images" / "00001.jpg").read_bytes() == b"00001"


def test_part_ranges_round_trip_through_kfp_style_dicts():
    part = Part(2, 5, "00100", "121", objects=40)
    # KFP hands loop items over as JSON, with numbers turned into floats.
    as_loop_item = {**part.to_dict(), "index": 2.0, "count": 5.0, "objects": 40.0}
    assert Part.from_dict(as_loop_item) == Part.from_dict(part.to_dict()) == part
    assert Part.parse("00100:121") == Part(start="00100", stop="121")
    # A range holds whole bins: a bin's image and metadata keys sort the same way.
    assert part.holds("00100.jpg") and part.holds("1209.json") and not part.holds("121.jpg")
    with pytest.raises(ValueError, match="--part"):
        Part.parse("00100")
    with pytest.raises(ValueError, match="not a bin id"):
        Part.parse("../x:")


def test_plan_with_limit_keeps_the_first_bins(two_families, s3, tmp_path):
    source, _ = two_families
    plan = ingest.plan_parts(PlanSettings(source=source, s3=s3, limit=7, parts=3))
    copied = set()
    for part in plan:
        ingest.run(
            IngestSettings(
                source=source,
                out=str(tmp_path / "o"),
                s3=s3,
                part=json.dumps(part.to_dict()),
                limit=7,
            )
        )
    copied = {p.stem for p in (tmp_path / "o" / "bin-images").iterdir()}
    assert len(copied) == 7
    assert copied == {f"{n:05d}" for n in range(1, 8)}  # key order: 00001 < ... < 1 < 10


def test_file_list_can_live_in_the_bucket(seeded, s3_url, tmp_path, s3):
    bucket = seeded.split("/")[2]
    make_client(s3_url, anonymous=True).put_object(
        Bucket=bucket, Key="lists/file_list.json", Body=b'{"3": ["data/metadata/00005.json"]}'
    )
    report = ingest.run(
        IngestSettings(
            source=seeded, out=str(tmp_path), s3=s3, file_list=f"s3://{bucket}/lists/file_list.json"
        )
    )
    assert report.copied == 2
    assert [p.name for p in (tmp_path / "bin-images").iterdir()] == ["00005.jpg"]


def test_etag_verification_refetches_same_size_different_content(seeded, s3, tmp_path):
    ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3))
    image = tmp_path / "bin-images" / "00002.jpg"
    original = image.read_bytes()
    image.write_bytes(b"\0" * len(original))  # right size, wrong bytes
    by_size = ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3))
    assert by_size.copied == 0 and image.read_bytes() != original
    by_etag = ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3, verify="etag"))
    assert by_etag.copied == 1 and image.read_bytes() == original


def test_keys_escaping_the_output_are_refused_with_their_reason(
    s3_url, public_bucket, tmp_path, s3
):
    client = make_client(s3_url, anonymous=True)
    client.put_object(Bucket=public_bucket, Key="bin-images/00001.jpg", Body=b"x")
    client.put_object(Bucket=public_bucket, Key="metadata/00001.json", Body=b"{}")
    client.put_object(Bucket=public_bucket, Key="metadata/../../../escape.json", Body=b"{}")
    out = tmp_path / "out"
    report = ingest.run(IngestSettings(source=f"s3://{public_bucket}", out=str(out), s3=s3))
    assert report.copied == 2
    assert report.refused_keys == {
        "metadata/../../../escape.json": "key would be written outside the output"
    }
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "00001.jpg",
        "00001.json",
        "ingest_report.json",
    ]


def test_absolute_looking_keys_are_refused_and_never_written(s3_url, public_bucket, tmp_path, s3):
    client = make_client(s3_url, anonymous=True)
    client.put_object(Bucket=public_bucket, Key="abid/bin-images/00002.jpg", Body=b"y")
    client.put_object(Bucket=public_bucket, Key=f"abid/bin-images/{tmp_path}/evil.jpg", Body=b"x")
    client.put_object(Bucket=public_bucket, Key="abid/metadata//etc/evil.json", Body=b"{}")
    out = tmp_path / "out"
    report = ingest.run(IngestSettings(source=f"s3://{public_bucket}/abid", out=str(out), s3=s3))
    assert report.copied == 1
    assert set(report.refused_keys) == {
        f"abid/bin-images/{tmp_path}/evil.jpg",
        "abid/metadata//etc/evil.json",
    }
    assert not (tmp_path / "evil.jpg").exists()
    assert [p.name for p in out.rglob("*.jpg")] == ["00002.jpg"]


def test_a_key_resolving_outside_the_output_is_never_written(tmp_path):
    from invmon.data.bucket_copy import _Copier

    copier = _Copier(reader=None, source=None, out=tmp_path / "out", verify="size")
    for key in ("/etc/passwd", "bin-images/../../x.jpg"):
        with pytest.raises(ValueError, match="outside"):
            copier.target(key)


def test_a_bucket_that_cannot_be_listed_is_named(s3, tmp_path):
    with pytest.raises(
        ValueError, match=r"cannot list s3://no-such-bucket-here: HTTP 404 NoSuchBucket"
    ):
        ingest.run(IngestSettings(source="s3://no-such-bucket-here", out=str(tmp_path), s3=s3))


def test_the_listing_runs_ahead_of_the_copy_and_hands_on_its_error():
    """The workers took the next object under a lock while the listing fetched its next page, so
    every worker waited out each page's round trip; the listing now runs ahead on a thread of its
    own, bounded, and an error of the listing is raised where its object would have been taken."""
    import threading

    from invmon.core.ahead import produced_ahead

    listed = threading.Event()

    def listing():
        yield from range(5)
        listed.set()  # all five were listed before the first was taken
        raise RuntimeError("page 2 failed")

    ahead = produced_ahead(listing(), 10)
    assert next(ahead) == 0 and listed.wait(5)
    assert list(itertools.islice(ahead, 4)) == [1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="page 2 failed"):
        next(ahead)

    stopped = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            stopped.set()

    early = produced_ahead(endless(), 3)
    assert next(early) == 0
    early.close()  # the copy stopped: the producer stops too instead of blocking forever
    assert stopped.wait(5)


def test_a_short_copy_lists_each_prefix_once_and_shows_the_exact_total(
    seeded, s3, tmp_path, monkeypatch, capsys
):
    """The progress total came from a second listing of every image key, run at once beside the
    copy: for a bucket of a few thousand objects that was a third more listing work for the
    server, whose CPU the copy shares. A listing that ends within COUNT_AFTER seconds now gives
    the exact total itself, and the images are listed once."""
    from invmon.data.s3 import ObjectReader

    listed, real_list = [], ObjectReader.list

    def spy(self, prefix, **options):
        listed.append(prefix)
        return real_list(self, prefix, **options)

    monkeypatch.setattr(ObjectReader, "list", spy)
    ingest.run(IngestSettings(source=seeded, out=str(tmp_path), s3=s3, workers=4))
    assert sorted(listed) == ["abid/bin-images/", "abid/metadata/"]
    assert "ingest: 24/24 objects (100%)" in capsys.readouterr().err


def test_a_long_listing_still_gets_an_estimated_total_early(seeded, s3, tmp_path, monkeypatch):
    """A listing still running after COUNT_AFTER seconds (a whole ABID bucket) gets the images-only
    count beside it, so that progress shows an ETA long before the listing ends."""
    import threading

    from invmon.core.progress import Progress
    from invmon.data import bucket_copy
    from invmon.data.s3 import ObjectReader, S3Uri, make_client

    monkeypatch.setattr(bucket_copy, "COUNT_AFTER", 0.0)
    uri = S3Uri.parse(seeded)
    reader = ObjectReader(make_client(s3.endpoint_url, anonymous=True), uri.bucket)
    progress, listed = Progress("ingest", unit="objects"), threading.Event()
    bucket_copy._count_in_background(reader, uri, bucket_copy.WHOLE, progress, listed)
    for _ in range(100):
        if progress.total is not None:
            break
        threading.Event().wait(0.05)
    assert progress.total == 24  # two objects per image key


@pytest.mark.parametrize(
    "endpoint, bucket, region",
    [
        ("http://127.0.0.1:9000", "abid", None),
        ("http://minio.local:9000/", "abid-benchmark", None),
        (None, "aft-vbi-pds", None),
        (None, "aft-vbi-pds", "eu-west-1"),
        (None, "my.dotted.bucket", None),
        (None, "my.dotted.bucket", "us-west-2"),
    ],
)
def test_unsigned_urls_are_the_ones_botocore_would_send(endpoint, bucket, region, monkeypatch):
    """A public bucket is read without a boto3 client; its URLs must be the ones an unsigned boto3
    client presigns: objects (quoted keys) and listing pages (every query parameter)."""
    from invmon.data.s3 import ObjectReader

    botocore_made = ObjectReader(make_client(endpoint, anonymous=True, region=region), bucket)
    if region:
        monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    made_here = ObjectReader(None, bucket, endpoint_url=endpoint)
    for operation, params in [
        ("get_object", {"Key": "bin-images/00001.jpg"}),
        ("head_object", {"Key": "metadata/a b+c~.json"}),
        ("list_objects_v2", {"Prefix": "bin-images/", "EncodingType": "url"}),
        (
            "list_objects_v2",
            {"Prefix": "abid/metadata/", "EncodingType": "url", "StartAfter": "abid/x 1"},
        ),
        (
            "list_objects_v2",
            {"Prefix": "p/", "EncodingType": "url", "ContinuationToken": "1/ab+c=="},
        ),
        ("list_objects_v2", {"Prefix": "p/", "EncodingType": "url", "MaxKeys": 100}),
    ]:
        assert made_here._url(operation, params) == botocore_made._url(operation, params)
    assert made_here.client is None
