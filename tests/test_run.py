"""The whole pipeline through kfp.local, fed by the embedded S3 server with synthetic bins."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from support.datasets import tiny_run

from invmon.core.settings import help_of
from invmon.pipelines.local_run import (
    ELSEWHERE,
    EMBEDDED,
    RunSettings,
    format_summary,
    run_pipeline,
)
from invmon.pipelines.parameters import DEFAULTS
from invmon.training.search import parse_batch_sizes


def test_an_embedded_run_searches_one_batch_size_and_given_options_win():
    embedded = RunSettings().pipeline_arguments()
    assert len(parse_batch_sizes(embedded["batch_sizes"])) == 1
    assert embedded["epochs"] == EMBEDDED.epochs > 0, "not the one-epoch trial's"
    for name in ("trials", "max_epochs", "image_size", "ingest_parts"):
        assert embedded[name] == getattr(EMBEDDED, name), name
    given = RunSettings(trials=3, batch_sizes="16,64", epochs=2).pipeline_arguments()
    assert (given["trials"], given["batch_sizes"], given["epochs"]) == (3, "16,64", 2)
    # A run on a real bucket keeps the pipeline's search.
    remote = RunSettings(source="s3://bucket").pipeline_arguments()
    assert remote["batch_sizes"] == DEFAULTS.batch_sizes == ELSEWHERE.batch_sizes
    assert remote["epochs"] == 0, "the search's choice"


def test_the_run_options_quote_their_defaults_from_one_place():
    assert f"default {EMBEDDED.trials} embedded, {ELSEWHERE.trials} otherwise" in help_of(
        RunSettings, "trials"
    )
    assert f"default {EMBEDDED.epochs} embedded, the search's" in help_of(RunSettings, "epochs")


def test_bad_search_batch_sizes_are_named():
    with pytest.raises(ValueError, match=r"--batch-sizes must be .* got '16,x'"):
        RunSettings(batch_sizes="16,x")


@pytest.mark.slow
def test_local_run_completes_every_stage(tmp_path):
    summary = run_pipeline(tiny_run(tmp_path))
    run = Path(summary.run_dir)
    stages = list(summary.stage_seconds)
    assert stages[:6] == ["ingest", "arrange", "preprocess", "tune", "train", "evaluate"]
    assert set(stages[6:]) == {"deploy", "audit"}, "both ran behind the passed quality gate"
    assert {"accuracy", "rmse", "baseline_accuracy"} <= set(summary.metrics)
    assert (run / "train" / "model" / "weights.pt").is_file()
    assert "<svg" in (run / "evaluate" / "report").read_text()
    best = json.loads((run / "tune" / "search" / "best.json").read_text())
    assert set(best["parameters"]) == {"lr", "batch_size", "epochs"}
    text = format_summary(summary)
    assert "test accuracy" in text and "majority baseline" in text
    # Ingest ran as two parts that were merged; the data report is arrange's Markdown output.
    parts = sorted(run.glob("for-loop-*/ingest/raw/ingest_report.json"))
    assert len(parts) == 2
    merged = json.loads((run / "merge-ingest" / "raw" / "ingest_report.json").read_text())
    assert merged["copied"] == 300 == sum(json.loads(p.read_text())["copied"] for p in parts)
    assert "every bin is in exactly one split: yes" in (run / "arrange" / "report").read_text()
    # The raw bins lived in the run's workspace (now deleted); the arranged images are links.
    assert not any(run.rglob("bin-images"))
    assert sum(1 for _ in (run / "arrange" / "arranged").glob("*/*/*.jpg")) == 150
    assert summary.audit["scored"] + summary.audit["skipped"] == 150
    # The audit runs as parts (for-loop iterations) whose flags merge-audit ranks together.
    assert (run / "merge-audit" / "results" / "audit.csv").is_file()
    assert "bins flagged" in text


@pytest.mark.slow
def test_a_model_below_the_quality_gate_is_neither_deployed_nor_audited(tmp_path):
    # Its own process: the embedded S3 server's state lives per process, and the run above
    # already made the demo bucket in this one.
    command = [sys.executable, "-m", "invmon.cli", "run", "--synth-bins", "60", "--epochs", "1"]
    command += ["--trials", "1", "--image-size", "32", "--min-accuracy", "1.01"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deploy and audit skipped" in done.stdout
    (run,) = (tmp_path / "pipeline_root").iterdir()
    assert (run / "evaluate").is_dir() and not (run / "deploy").exists()
    assert not (run / "audit").exists()
    assert not (run / "plan-audit").exists() and not (run / "merge-audit").exists()


def test_a_failing_stage_fails_the_run_at_once(s3_url, tmp_path, caplog):
    """kfp.local honours task retries: compiled for a cluster, the ingest plan would run three
    more times, 30, 60 and 120 s apart, before the run failed. invmon run compiles without."""
    from invmon.data.s3 import S3Options

    options = RunSettings(
        source="s3://no-such-bucket",
        s3=S3Options(endpoint_url=s3_url, anonymous=True),
        out=str(tmp_path),
    )
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError, match="plan-ingest"):
        run_pipeline(options)
    assert "['plan-ingest'] failed" in caplog.text and "Retrying" not in caplog.text


@pytest.mark.slow
def test_a_cached_second_run_with_another_image_size_succeeds(s3_url, public_bucket, tmp_path):
    """With kfp.local's cache on, a second run that changes only image_size must not get the
    first run's workspace pointers (raw bins, shards) from the cache: that workspace was deleted
    when the first run ended. The tasks that use the workspace run again; the others (the ingest
    plan) come from the cache."""
    from invmon.data.s3 import S3Options
    from invmon.data.synth import synthesize

    source = f"s3://{public_bucket}"
    synthesize(source, 90, seed=4, endpoint_url=s3_url, anonymous=True, workers=2)
    options = RunSettings(
        source=source,
        s3=S3Options(endpoint_url=s3_url, anonymous=True),
        ingest_parts=2,
        epochs=1,
        trials=1,
        max_epochs=1,
        image_size=32,
        min_accuracy=0.0,  # deploy and audit (which reads the raw bins) must run
        out=str(tmp_path),
        cache=True,
    )
    first = Path(run_pipeline(options).run_dir)
    second = Path(run_pipeline(options.replace(image_size=40)).run_dir)
    assert (first / "plan-ingest").is_dir() and not (second / "plan-ingest").exists()
    for task in (
        "merge-ingest",
        "arrange",
        "preprocess",
        "tune",
        "train",
        "evaluate",
        "merge-audit",
    ):
        assert (second / task / "executor_output.json").is_file(), task
    index = json.loads((second / "train" / "model" / "config.json").read_text())
    assert index["preprocessing"]["image_size"] == 40
    audit = json.loads((second / "merge-audit" / "executor_output.json").read_text())
    assert audit["artifacts"]["metrics"]["artifacts"][0]["metadata"]["bins"] == 90


def test_each_embedded_server_starts_empty_so_a_second_run_in_one_process_seeds(tmp_path):
    """moto keeps buckets per process: a second run_pipeline in the same process (the registry's
    run test, then this file's) found the first run's public demo bucket and its seeding was
    refused with 403."""
    from invmon.data.s3 import embedded_s3_server, make_client
    from invmon.pipelines.local_run import seed_demo_bucket

    for _ in range(2):
        with embedded_s3_server() as url:
            source = seed_demo_bucket(url, 3, seed=0)
            listed = make_client(url, anonymous=True).list_objects_v2(Bucket=source[5:])
            assert listed["KeyCount"] == 6
