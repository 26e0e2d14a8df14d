"""benchmarks/recount_loop.py --quick: the recount loop runs end to end and reports every figure."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "recount_loop.py"
PER_ROUND = {
    "round",
    "recounts",
    "audit_mismatches_per_100",
    "random_mismatches_per_100",
    "flag_precision",
    "flag_recall",
    "accuracy",
    "control_accuracy",
    "seconds",
}


def check_report(result: dict, stdout: str) -> None:
    """The structure of the benchmark's JSON and the three target lines printed last."""
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == list(range(result["size"]["rounds"] + 1))
    assert rounds[0]["seconds"] > 0 and 0 <= rounds[0]["accuracy"] <= 1
    for r in rounds[1:]:
        assert set(r) == PER_ROUND
        assert r["recounts"] == result["top"] == round(0.05 * result["size"]["bins"])
        for name in ("flag_precision", "flag_recall", "accuracy", "control_accuracy"):
            assert 0 <= r[name] <= 1, name
        assert 0 <= r["audit_mismatches_per_100"] <= 100
    assert set(result["targets"]) == {
        "audit_over_random_round_1",
        "accuracy_minus_control_points_after_round_2",
        "warm_round_over_round_0_training",
    }
    last = stdout.strip().splitlines()[-3:]
    assert last[0].startswith("round-1 audit/random mismatch ratio:") and "target >= 4x" in last[0]
    assert last[1].startswith("after round 2, accuracy minus control:")
    assert last[2].startswith("warm round time / round-0 training time:")


@pytest.mark.slow
def test_quick_recount_loop_reports_every_round_and_the_three_ratios(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "recount_loop.json").read_text())
    check_report(result, done.stdout)
    truth = (tmp_path / "truth.csv").read_text().splitlines()
    assert truth[0] == "bin_id,true_count,recorded_count" and len(truth) == 241
    assert not (tmp_path / "raw" / "truth.csv").exists(), "the truth stays out of the bucket"
    recounts = sorted(p.name for p in (tmp_path / "recounts").iterdir())
    assert recounts == ["recounts-round-1.csv", "recounts-round-2.csv"]
    assert (tmp_path / "recount-loop.svg").read_text().startswith("<svg")
