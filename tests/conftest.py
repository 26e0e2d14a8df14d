"""Shared fixtures: a real S3 server on loopback, small synthetic datasets and a tiny trained model.

Everything is built once per session by the project's own code (synth -> arrange -> preprocess ->
train), so the fixtures also exercise the stages they feed.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from support.datasets import synthetic_shards

from invmon.data.s3 import S3Options, embedded_s3_server, make_client, make_public_bucket
from invmon.data.synth import synthesize
from invmon.stages import arrange, preprocess
from invmon.stages.arrange import ArrangeSettings
from invmon.stages.preprocess import PreprocessSettings
from invmon.training.config import TrainConfig
from invmon.training.loop import fit

TINY_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def s3_url():
    """URL of a moto S3 server on 127.0.0.1 (real HTTP), shared by the session."""
    with embedded_s3_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3(s3_url) -> S3Options:
    """How the stages reach the test server: its URL, with unsigned requests."""
    return S3Options(endpoint_url=s3_url, anonymous=True)


def public_bucket_on(url: str) -> str:
    """Create a bucket on the test server that anonymous clients may read, like aft-vbi-pds."""
    name = f"bins-{uuid.uuid4().hex[:10]}"
    make_public_bucket(make_client(url, anonymous=True), name)
    return name


@pytest.fixture
def public_bucket(s3_url):
    """A fresh, anonymously readable bucket on the test server."""
    return public_bucket_on(s3_url)


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory) -> Path:
    """120 synthetic bins (counts 0-5) in ABID's layout."""
    out = tmp_path_factory.mktemp("raw")
    synthesize(str(out), 120, seed=3, max_items=5, workers=1)
    return out


@pytest.fixture(scope="session")
def arranged_dir(raw_dir, tmp_path_factory) -> Path:
    """The synthetic bins arranged into train/val/test class folders."""
    out = tmp_path_factory.mktemp("arranged")
    arrange.run(
        ArrangeSettings(
            raw=str(raw_dir), out=str(out), classes="0-5", split="0.7,0.15,0.15", seed=0
        )
    )
    return out


@pytest.fixture(scope="session")
def shards_dir(arranged_dir, tmp_path_factory) -> Path:
    """The arranged bins preprocessed into shards at a tiny image size."""
    out = tmp_path_factory.mktemp("shards")
    preprocess.run(
        PreprocessSettings(
            data=str(arranged_dir),
            out=str(out),
            image_size=TINY_IMAGE_SIZE,
            shard_size=40,
            workers=1,
        )
    )
    return out


@pytest.fixture(scope="session")
def model_dir(shards_dir, tmp_path_factory) -> Path:
    """A model trained for one epoch on the tiny shards (enough to test loading and serving)."""
    out = tmp_path_factory.mktemp("model")
    fit(shards_dir, TrainConfig(epochs=1, batch_size=16, device="cpu"), out=out, quiet=True)
    return out


@pytest.fixture(scope="session")
def counting_model(tmp_path_factory) -> Path:
    """A model trained well enough to count 0-2 items in small synthetic photos."""
    root = tmp_path_factory.mktemp("counting")
    shards = synthetic_shards(
        root,
        480,
        seed=21,
        max_items=2,
        classes="0-2",
        split="0.8,0.1,0.1",
        image_size=48,
        shard_size=256,
        workers=1,
    )
    config = TrainConfig(epochs=6, batch_size=32, lr=2e-3, device="cpu", seed=0)
    fit(shards, config, out=root / "model", quiet=True)
    return root / "model"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real ABID sample named by ABID_SAMPLE_DIR; tests using it are skipped without it."""
    value = os.environ.get("ABID_SAMPLE_DIR")
    if not value:
        pytest.skip("ABID_SAMPLE_DIR is not set")
    path = Path(value)
    if not (path / "bin-images").is_dir() or not (path / "metadata").is_dir():
        pytest.fail(f"ABID_SAMPLE_DIR={value} has no bin-images/ and metadata/ folders")
    return path
