"""Ingest and arrange of the real ABID sample, served by a moto S3 server."""

import json

import pytest
from conftest import public_bucket_on

from invmon.data.layout import read_manifest
from invmon.data.s3 import make_client
from invmon.stages import arrange, ingest
from invmon.stages.arrange import ArrangeSettings
from invmon.stages.ingest import IngestSettings


@pytest.mark.sample
def test_real_sample_lands_in_the_folder_of_its_expected_quantity(sample_dir, s3_url, tmp_path, s3):
    bucket = public_bucket_on(s3_url)
    client = make_client(s3_url, anonymous=True)
    for folder in ("bin-images", "metadata"):
        for path in (sample_dir / folder).iterdir():
            client.put_object(Bucket=bucket, Key=f"{folder}/{path.name}", Body=path.read_bytes())
    raw, out = tmp_path / "raw", tmp_path / "arranged"
    ingest.run(IngestSettings(source=f"s3://{bucket}", out=str(raw), s3=s3))
    report = arrange.run(ArrangeSettings(raw=str(raw), out=str(out), classes="0-5"))

    images = {p.stem for p in (sample_dir / "bin-images").iterdir()}
    documents = {p.stem for p in (sample_dir / "metadata").iterdir()}
    expected = {}
    for bin_id in images & documents:
        count = json.loads((sample_dir / "metadata" / f"{bin_id}.json").read_text())[
            "EXPECTED_QUANTITY"
        ]
        if 0 <= count <= 5:
            expected[bin_id] = count
    arranged = {}
    for split in ("train", "val", "test"):
        for path in (out / split).glob("*/*.jpg"):
            assert path.stem not in arranged, f"{path.stem} is arranged twice"
            arranged[path.stem] = int(path.parent.name)
            assert path.read_bytes() == (sample_dir / "bin-images" / path.name).read_bytes()
    assert arranged == expected
    assert {r[0]: r[1] for r in read_manifest(out)} == expected
    assert report.kept == len(expected)
