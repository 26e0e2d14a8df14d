"""Ingest against a misbehaving S3: throttling, dropped connections, cut bodies, a killed run.

The S3 server is moto's, over real HTTP; the misbehaviour comes from ``support.netsim``, a proxy in
front of it that answers a seeded share of requests with 503 SlowDown, closes connections without
an answer, or cuts GET bodies off halfway.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from support.netsim import Faults, running

from invmon.data.bucket_copy import read_report
from invmon.data.s3 import RetryPolicy, S3Options, make_client
from invmon.stages import ingest
from invmon.stages.ingest import IngestSettings

# Short waits keep the tests fast; the production policy backs off for seconds.
QUICK = RetryPolicy(attempts=10, base=0.005, slowdown_base=0.01, cap=0.2)


def _seed(s3_url: str, bucket: str, bins: int, size: int = 30_000) -> dict[str, bytes]:
    client = make_client(s3_url, anonymous=True)
    rng = np.random.default_rng(bins)
    bodies = {}
    for number in range(1, bins + 1):
        bin_id = f"{number:05d}"
        bodies[f"bin-images/{bin_id}.jpg"] = rng.bytes(size + number)
        bodies[f"metadata/{bin_id}.json"] = json.dumps({"EXPECTED_QUANTITY": number % 6}).encode()
    for key, body in bodies.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return bodies


def _assert_intact(out, bodies: dict[str, bytes]) -> None:
    for key, body in bodies.items():
        assert (out / key).read_bytes() == body, key
    assert not list(out.rglob(".*.part"))


def test_every_object_arrives_intact_through_throttling_drops_and_cut_bodies(
    s3_url, public_bucket, tmp_path
):
    bodies = _seed(s3_url, public_bucket, 40)
    faults = Faults(slowdown=0.15, drop=0.1, truncate=0.1, seed=7)
    with running(s3_url, faults) as (proxy_url, proxy):
        report = ingest.run(
            IngestSettings(
                source=f"s3://{public_bucket}",
                out=str(tmp_path),
                s3=S3Options(endpoint_url=proxy_url, anonymous=True),
                workers=8,
                retry=QUICK,
            )
        )
        injected = proxy.stats()["injected"]
    assert (report.copied, report.failed) == (80, {})
    assert set(injected) == {"slowdown", "drop", "truncate"}
    assert report.retries >= injected["truncate"]  # every cut body was fetched again
    _assert_intact(tmp_path, bodies)


def test_an_object_that_cannot_be_had_is_named_and_the_rest_is_copied(
    s3_url, public_bucket, tmp_path, s3
):
    _seed(s3_url, public_bucket, 3)
    file_list = tmp_path / "file_list.json"
    file_list.write_text(json.dumps({"1": ["metadata/00001.json", "metadata/00404.json"]}))
    report = ingest.run(
        IngestSettings(
            source=f"s3://{public_bucket}",
            out=str(tmp_path / "out"),
            s3=s3,
            file_list=str(file_list),
        )
    )
    assert report.copied == 2
    assert set(report.failed) == {"bin-images/00404.jpg", "metadata/00404.json"}
    assert "404" in report.failed["bin-images/00404.jpg"]
    assert read_report(tmp_path / "out").failed == report.failed


def test_a_killed_run_resumes_and_fetches_only_what_was_missing(s3_url, public_bucket, tmp_path):
    bodies = _seed(s3_url, public_bucket, 60)
    out = tmp_path / "raw"
    with running(s3_url, Faults(delay=0.05)) as (proxy_url, _):
        command = [sys.executable, "-m", "invmon.cli", "ingest", "--source"]
        command += [f"s3://{public_bucket}", "--out", str(out), "--endpoint-url", proxy_url]
        command += ["--anonymous", "--workers", "4"]
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _complete(out) < 30 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        present = {key for key in bodies if (out / key).is_file()}
        assert 30 <= len(present) < len(bodies), "the kill should land part way"
        for key in present:  # nothing half-written under a final name
            assert (out / key).read_bytes() == bodies[key], key
        urllib.request.urlopen(urllib.request.Request(f"{proxy_url}/__netsim__/reset", b""))
        report = ingest.run(
            IngestSettings(
                source=f"s3://{public_bucket}",
                out=str(out),
                s3=S3Options(endpoint_url=proxy_url, anonymous=True),
            )
        )
        stats = json.loads(urllib.request.urlopen(f"{proxy_url}/__netsim__/stats").read())
    fetched = {
        request.split(f"/{public_bucket}/", 1)[1]
        for request in stats["forwarded"]
        if request.startswith("GET ") and request.count("/") > 2
    }
    assert fetched == set(bodies) - present
    assert (report.copied, report.skipped_present) == (len(bodies) - len(present), len(present))
    _assert_intact(out, bodies)


def _complete(out) -> int:
    return sum(1 for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.mark.parametrize("shares", [{"slowdown": 0.6, "drop": 0.6}, {"truncate": -0.1}])
def test_impossible_fault_shares_are_refused(shares):
    with pytest.raises(ValueError, match="share"):
        Faults(**shares)
