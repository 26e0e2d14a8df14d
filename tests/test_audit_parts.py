"""Audit in parts: a plan, parts scored on their own, and a merge equal to one whole audit."""

import json
from pathlib import Path

import pytest
from support.datasets import with_unscorable_bins

from invmon.cli import main
from invmon.stages.audit import PART_FILE, AuditSettings, run
from invmon.stages.audit_parts import AuditMergeSettings, AuditPlanSettings, merge_parts, plan_parts


def _audit_in_parts(source: Path, model: Path, out: Path, parts: int) -> list[str]:
    plan = plan_parts(AuditPlanSettings(source=str(source), parts=parts))
    folders = []
    for part in plan:
        folder = out / f"part-{part.index}"
        run(
            AuditSettings(
                source=str(source),
                out=str(folder),
                model=str(model),
                part=json.dumps(part.to_dict()),
            )
        )
        folders.append(str(folder))
    return folders


def _summary(folder: Path) -> dict:
    data = json.loads((folder / "summary.json").read_text())
    data.pop("seconds")
    return data


@pytest.fixture(scope="module")
def broken_source(raw_dir, tmp_path_factory) -> Path:
    """The synthetic bins plus one bin of each kind that cannot be scored, in different parts."""
    out = tmp_path_factory.mktemp("audit-parts-src") / "raw"
    return with_unscorable_bins(raw_dir, out, ("00001", "00050", "00090", "00110"))


@pytest.fixture(scope="module")
def whole(raw_dir, model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit-whole")
    run(AuditSettings(source=str(raw_dir), out=str(out), model=str(model_dir), threshold=0.3))
    return out


def test_plan_cuts_every_bin_into_exactly_one_part(raw_dir):
    plan = plan_parts(AuditPlanSettings(source=str(raw_dir), parts=3))
    ids = sorted(p.stem for p in (raw_dir / "metadata").glob("*.json"))
    holders = [[p.index for p in plan if p.holds(f"{i}.json")] for i in ids]
    assert all(len(h) == 1 for h in holders)
    assert [sum(h == [k] for h in holders) for k in range(3)] == [40, 40, 40]


def test_two_parts_merge_to_the_same_audit_as_one(raw_dir, model_dir, whole, tmp_path):
    plan = plan_parts(AuditPlanSettings(source=str(raw_dir), parts=2))
    folders = []
    for part in plan:
        folder = tmp_path / f"part-{part.index}"
        settings = AuditSettings(
            source=str(raw_dir),
            out=str(folder),
            model=str(model_dir),
            threshold=0.3,
            part=json.dumps(part.to_dict()),
        )
        assert run(settings).bins == 60
        assert (folder / PART_FILE).is_file() and not (folder / "flagged.csv").exists()
        folders.append(str(folder))
    merged = tmp_path / "merged"
    # Given in reverse: the merge puts the parts back in key order.
    summary = merge_parts(
        AuditMergeSettings(parts=tuple(reversed(folders)), source=str(raw_dir), out=str(merged))
    )
    assert summary.bins == 120 and summary.flagged > 0, "a test that can see a difference"
    for name in ("flagged.csv", "audit.csv"):
        assert (merged / name).read_text() == (whole / name).read_text(), name
    assert _summary(merged) == _summary(whole)
    assert (merged / "review.html").stat().st_size > 0


def test_merged_skipped_totals_match_one_audit(broken_source, model_dir, tmp_path):
    one = tmp_path / "one"
    run(AuditSettings(source=str(broken_source), out=str(one), model=str(model_dir)))
    folders = _audit_in_parts(broken_source, model_dir, tmp_path, 3)
    merged = tmp_path / "merged"
    main(["audit-merge", *folders, "--source", str(broken_source), "--out", str(merged)])
    assert _summary(merged)["skipped_counts"] == _summary(one)["skipped_counts"]
    assert sum(_summary(merged)["skipped_counts"].values()) == 4
    assert _summary(merged) == _summary(one)
    assert (merged / "flagged.csv").read_text() == (one / "flagged.csv").read_text()


@pytest.mark.parametrize("spec", ["3/4", "00010", '{"index": 5, "count": 2}', "abc!:"])
def test_a_bad_part_is_named(raw_dir, model_dir, tmp_path, spec):
    with pytest.raises(ValueError, match="part"):
        AuditSettings(source=str(raw_dir), out=str(tmp_path), model=str(model_dir), part=spec)


def test_labels_are_refused_for_one_part(raw_dir, model_dir, tmp_path):
    """A part's flags are not the audit's: the flag quality is measured by the merge."""
    (part,) = plan_parts(AuditPlanSettings(source=str(raw_dir), parts=1))
    with pytest.raises(ValueError, match="--labels goes with a whole audit or audit-merge"):
        AuditSettings(
            source=str(raw_dir),
            out=str(tmp_path),
            model=str(model_dir),
            part=json.dumps(part.to_dict()),
            labels=str(tmp_path / "labels.csv"),
        )


def test_merge_refuses_a_missing_part(raw_dir, model_dir, tmp_path):
    folders = _audit_in_parts(raw_dir, model_dir, tmp_path, 3)
    with pytest.raises(ValueError, match="not every part of one plan"):
        merge_parts(
            AuditMergeSettings(parts=tuple(folders[:2]), source=str(raw_dir), out=str(tmp_path))
        )
    with pytest.raises(FileNotFoundError, match=PART_FILE):
        merge_parts(
            AuditMergeSettings(parts=(str(raw_dir),), source=str(raw_dir), out=str(tmp_path))
        )


def test_plan_command_prints_one_part_per_line(raw_dir, capsys):
    main(["audit-plan", "--source", str(raw_dir), "--parts", "2", "--limit", "50"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [line["index"] for line in lines] == ["0", "1"]
    ids = sorted(p.stem for p in (raw_dir / "metadata").glob("*.json"))
    assert lines[-1]["stop"] == ids[50], "the first bin past the limit ends the last part"
