"""Audit: scoring bins against their recorded counts (folder, S3 and through a server)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.datasets import with_unscorable_bins

from invmon.cli import main
from invmon.data import abid
from invmon.data.s3 import S3Options, make_client
from invmon.data.synth import synthesize
from invmon.serving.server import LocalServer
from invmon.stages.audit import AuditSettings, read_labels, run


def altered_copy(raw: Path, out: Path, fraction: float, classes: list[int], seed: int) -> Path:
    """Copy ``raw`` with the recorded count of ``fraction`` of the bins deliberately changed.

    Returns labels.csv with every bin's true count (the count before the change).
    """
    rng = np.random.default_rng(seed)
    shutil.copytree(raw, out)
    rows = []
    for path in sorted((out / abid.METADATA_DIR).glob("*.json")):
        document = json.loads(path.read_text())
        true = document["EXPECTED_QUANTITY"]
        rows.append((path.stem, true))
        if rng.random() < fraction:
            document["EXPECTED_QUANTITY"] = int(rng.choice([c for c in classes if c != true]))
            path.write_text(json.dumps(document))
    labels = out.parent / f"{out.name}-labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["bin_id", "true_count"])
        writer.writerows(rows)
    return labels


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def broken_source(raw_dir, tmp_path_factory) -> Path:
    """The synthetic bins plus one bin of each kind that cannot be scored."""
    out = tmp_path_factory.mktemp("audit-src") / "raw"
    return with_unscorable_bins(raw_dir, out, ("00001", "00002", "00003", "00004"))


def test_local_audit_scores_every_bin_and_reports_the_rest(broken_source, model_dir, tmp_path):
    summary = run(AuditSettings(source=str(broken_source), out=str(tmp_path), model=str(model_dir)))
    assert summary.bins == 120
    assert summary.skipped["image not scorable"].keys() == {"00001"}
    assert summary.skipped["invalid metadata"].keys() == {"00002"}
    assert summary.skipped["metadata without image"].keys() == {"00003"}
    assert summary.skipped["recorded count outside the model's classes"].keys() == {"00004"}
    assert summary.scored == 116
    rows = _rows(tmp_path / "audit.csv")
    assert len(rows) == 116 and {r["bin_id"] for r in rows}.isdisjoint({"00001", "00002"})
    flagged = _rows(tmp_path / "flagged.csv")
    assert len(flagged) == summary.flagged == sum(r["flagged"] == "True" for r in rows)
    probabilities = [float(r["recorded_probability"]) for r in flagged]
    assert probabilities == sorted(probabilities), "most suspicious first"
    for r in rows:
        assert (r["flagged"] == "True") == (float(r["recorded_probability"]) < 0.1)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["skipped_counts"]["invalid metadata"] == 1


def test_audit_through_a_running_predictor_matches_local(raw_dir, model_dir, tmp_path):
    local = run(
        AuditSettings(source=str(raw_dir), out=str(tmp_path / "local"), model=str(model_dir))
    )
    with LocalServer(model_dir, extra_args=["--graph", "frozen", "--load", "blocking"]) as server:
        remote = run(
            AuditSettings(source=str(raw_dir), out=str(tmp_path / "remote"), url=server.url)
        )
    assert (local.scored, remote.scored) == (120, 120)
    a = {r["bin_id"]: float(r["recorded_probability"]) for r in _rows(tmp_path / "local/audit.csv")}
    b = {
        r["bin_id"]: float(r["recorded_probability"]) for r in _rows(tmp_path / "remote/audit.csv")
    }
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) for k in a) < 0.02


def test_audit_reads_an_s3_prefix(raw_dir, model_dir, public_bucket, s3_url, tmp_path):
    client = make_client(s3_url, anonymous=True)
    for folder in ("bin-images", "metadata"):
        for path in sorted((raw_dir / folder).iterdir())[:20]:
            client.put_object(
                Bucket=public_bucket, Key=f"site-a/{folder}/{path.name}", Body=path.read_bytes()
            )
    summary = run(
        AuditSettings(
            source=f"s3://{public_bucket}/site-a",
            out=str(tmp_path),
            model=str(model_dir),
            s3=S3Options(endpoint_url=s3_url, anonymous=True),
        )
    )
    assert summary.bins == summary.scored == 20


def test_bad_arguments_are_named(raw_dir, model_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="exactly one of --model"):
        AuditSettings(source=str(raw_dir), out=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no metadata/ folder"):
        run(AuditSettings(source=str(tmp_path), out=str(tmp_path / "out"), model=str(model_dir)))
    with pytest.raises(ValueError, match="--threshold"):
        AuditSettings(source=str(raw_dir), out=str(tmp_path), model=str(model_dir), threshold=1.5)
    labels = tmp_path / "labels.csv"
    labels.write_text("bin,count\n1,2\n")
    with pytest.raises(ValueError, match="bin_id and true_count"):
        read_labels(labels)
    with pytest.raises(SystemExit) as exit_code:
        main(["audit", "--source", str(raw_dir), "--out", str(tmp_path / "o")])
    assert exit_code.value.code == 2
    assert "one of the arguments --model --url is required" in capsys.readouterr().err


# -- the acceptance case: deliberately altered records, a model that can count ---------------

COUNTING_CLASSES = [0, 1, 2]


@pytest.mark.slow
def test_audit_flags_most_deliberately_altered_bins(counting_model, tmp_path, capsys):
    raw = tmp_path / "fresh"
    synthesize(str(raw), 160, seed=99, max_items=2, workers=1)  # bins the model never saw
    labels = altered_copy(raw, tmp_path / "altered", 0.25, COUNTING_CLASSES, seed=5)
    code = main(
        [
            "audit",
            "--source",
            str(tmp_path / "altered"),
            "--model",
            str(counting_model),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "audit"),
        ]
    )
    assert code == 0
    print(capsys.readouterr().out)
    quality = json.loads((tmp_path / "audit" / "summary.json").read_text())["quality"]
    # This small CPU-trained model counts 0-2 items right about 70 % of the time on new bins; it
    # flagged 25 of 38 altered bins (recall 0.66) with precision 0.78 when this test was written.
    assert quality["mismatched"] >= 25
    assert quality["recall"] > 0.55, quality
    assert quality["precision"] > 0.6, quality
