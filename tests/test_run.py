"""The whole pipeline through kfp.local, fed by the embedded S3 server with synthetic bins."""

import json
from pathlib import Path

import pytest

from invmon.run import RunOptions, format_summary, run_pipeline


@pytest.mark.slow
def test_local_run_completes_every_stage(tmp_path):
    options = RunOptions(
        synth_bins=150, epochs=1, trials=1, max_trial_epochs=1, image_size=32, out=str(tmp_path)
    )
    summary = run_pipeline(options)
    run = Path(summary.run_dir)
    assert list(summary.stage_seconds) == [
        "ingest",
        "arrange",
        "preprocess",
        "tune",
        "train",
        "evaluate",
        "deploy",
    ]
    assert {"accuracy", "rmse", "baseline_accuracy"} <= set(summary.metrics)
    assert (run / "train" / "model" / "weights.pt").is_file()
    assert "<svg" in (run / "evaluate" / "report").read_text()
    best = json.loads((run / "tune" / "search" / "best.json").read_text())
    assert set(best["parameters"]) == {"lr", "batch_size", "epochs"}
    text = format_summary(summary)
    assert "test accuracy" in text and "majority baseline" in text
