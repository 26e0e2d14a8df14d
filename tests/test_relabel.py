"""Recounted labels win over recorded ones in arrange; the source stays as it was; bins keep their
split; evaluate reports the accuracy on the recount-verified test bins apart."""

import csv
import hashlib
import json

import pytest
from conftest import TINY_IMAGE_SIZE

from invmon.cli import main
from invmon.data.layout import read_manifest
from invmon.data.s3 import S3Options, make_client
from invmon.stages import arrange, evaluate, preprocess
from invmon.stages.arrange import ArrangeSettings
from invmon.stages.preprocess import PreprocessSettings

HEADER = "bin_id,true_count,source,counted_at\n"
SPLIT = "0.7,0.15,0.15"


def _digest(folder) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((folder / "metadata").iterdir())
    }


def _arrange(raw, out, **more):
    return arrange.run(ArrangeSettings(raw=str(raw), out=str(out), split=SPLIT, seed=0, **more))


def _other(count: int) -> int:
    return (count + 2) % 6


@pytest.fixture(scope="module")
def plain(raw_dir, tmp_path_factory):
    """The bins arranged from their recorded counts: bin -> (count, split)."""
    out = tmp_path_factory.mktemp("plain")
    _arrange(raw_dir, out)
    return {b: (c, s) for b, c, s in read_manifest(out)}


def _pick(plain, split: str, n: int) -> list[str]:
    return sorted(b for b, (_, s) in plain.items() if s == split)[:n]


def test_recounts_confirm_change_skip_and_keep_the_split(raw_dir, plain, tmp_path):
    before = _digest(raw_dir)
    same, changed_test = _pick(plain, "test", 3)[:1], _pick(plain, "test", 3)[1:]
    changed_train, outside = _pick(plain, "train", 2)
    rows = [f"{b},{plain[b][0]},cycle-count,2026-12-01T10:00:00Z" for b in same]
    rows += [f"{b},{_other(plain[b][0])},label-studio:3," for b in (*changed_test, changed_train)]
    rows += [f"{outside},9,cycle-count,", "99999,2,cycle-count,", "00077,two,cycle-count,"]
    recounts = tmp_path / "recounts-a.csv"
    recounts.write_text(HEADER + "\n".join(rows) + "\n")

    report = _arrange(raw_dir, tmp_path / "out", recounts=str(recounts))

    assert _digest(raw_dir) == before  # the source metadata, byte for byte
    (done,) = report.recounts
    assert (done["confirmed"], done["changed"]) == (1, 3)
    assert done["not_in_data"] == ["99999"] and done["outside_classes"] == [outside]
    assert len(done["bad_rows"]) == 1 and "two" in done["bad_rows"][0]
    after = {b: (c, s) for b, c, s in read_manifest(tmp_path / "out")}
    assert set(after) == set(plain) - {outside}
    assert report.dropped["recounted outside classes"] == 1
    for bin_id, (count, split) in after.items():
        assert split == plain[bin_id][1]  # bins keep their split
        recounted = bin_id in (*changed_test, changed_train)
        assert count == (_other(plain[bin_id][0]) if recounted else plain[bin_id][0])
        assert (tmp_path / "out" / split / str(count) / f"{bin_id}.jpg").is_file()
    assert report.recount_verified["test"] == sorted([*same, *changed_test])
    assert report.recount_verified["train"] == [changed_train]
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert dataset["recount_verified"]["test"] == sorted([*same, *changed_test])
    text = (tmp_path / "out" / "data_report.md").read_text()
    assert "## Recounts" in text and f"| `{recounts}` | 7 | 1 | 3 | 1 | 1 | 1 |" in text
    assert "`99999`" in text
    with open(tmp_path / "out" / "recounts.csv", newline="") as handle:
        table = {r["bin_id"]: r for r in csv.DictReader(handle)}
    assert set(table) == {*same, *changed_test, changed_train}
    assert int(table[changed_train]["recorded_count"]) == plain[changed_train][0]


def test_recounts_from_s3_a_prefix_and_one_object_latest_wins(
    raw_dir, plain, s3_url, public_bucket, tmp_path
):
    client = make_client(s3_url, anonymous=True)
    bin_id = _pick(plain, "val", 1)[0]
    first, second = _other(plain[bin_id][0]), _other(_other(plain[bin_id][0]))
    early = HEADER + f"{bin_id},{first},cycle-count,2026-12-01T08:00:00Z\n"
    late = HEADER + f"{bin_id},{second},label-studio:1,2026-12-02T08:00:00Z\n"
    # The later file by name holds the earlier count: time decides, not the order of files.
    client.put_object(Bucket=public_bucket, Key="site/recounts-b.csv", Body=early.encode())
    client.put_object(Bucket=public_bucket, Key="site/recounts-a.csv", Body=late.encode())
    client.put_object(Bucket=public_bucket, Key="site/recounts-a.json", Body=b"{}")
    s3 = S3Options(endpoint_url=s3_url, anonymous=True)

    report = _arrange(raw_dir, tmp_path / "prefix", recounts=f"s3://{public_bucket}/site", s3=s3)

    assert [f["file"] for f in report.recounts] == [
        f"s3://{public_bucket}/site/recounts-a.csv",
        f"s3://{public_bucket}/site/recounts-b.csv",
    ]
    assert report.recounts[1]["superseded"] == 1
    rows = {b: (c, s) for b, c, s in read_manifest(tmp_path / "prefix")}
    assert rows[bin_id] == (second, "val")

    one = _arrange(
        raw_dir, tmp_path / "one", recounts=f"s3://{public_bucket}/site/recounts-b.csv", s3=s3
    )
    assert [f["changed"] for f in one.recounts] == [1]
    assert dict((b, c) for b, c, _ in read_manifest(tmp_path / "one"))[bin_id] == first


def test_a_file_that_is_not_a_recount_file_is_named(raw_dir, tmp_path):
    wrong = tmp_path / "cycle_count.csv"
    wrong.write_text("bin_id,counted_quantity\n00001,3\n")
    with pytest.raises(ValueError, match=r"cycle_count\.csv.*bin_id,true_count,source,counted_at"):
        _arrange(raw_dir, tmp_path / "out", recounts=str(wrong))
    with pytest.raises(ValueError, match=r"nowhere.*does not exist"):
        _arrange(raw_dir, tmp_path / "out", recounts=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.*no \.csv recount file"):
        _arrange(raw_dir, tmp_path / "out", recounts=str(tmp_path / "empty"))


def test_cli_takes_several_recount_uris(raw_dir, plain, tmp_path):
    a, b = _pick(plain, "test", 2)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "one.csv").write_text(HEADER + f"{a},{_other(plain[a][0])},x,\n")
    (tmp_path / "two.csv").write_text(HEADER + f"{b},{plain[b][0]},x,\n")
    out = tmp_path / "out"
    uris = f"{tmp_path / 'r'},{tmp_path / 'two.csv'}"
    args = ["arrange", "--raw", str(raw_dir), "--out", str(out), "--split", SPLIT]
    assert main([*args, "--recounts", uris]) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert [(f["confirmed"], f["changed"]) for f in dataset["recounts"]] == [(0, 1), (1, 0)]


def test_evaluate_reports_accuracy_on_the_recount_verified_test_bins(
    raw_dir, plain, model_dir, shards_dir, tmp_path
):
    test_bins = _pick(plain, "test", 4)
    rows = [f"{b},{plain[b][0]},x," for b in test_bins[:2]]
    rows += [f"{b},{_other(plain[b][0])},x," for b in test_bins[2:]]
    (tmp_path / "r.csv").write_text(HEADER + "\n".join(rows) + "\n")
    _arrange(raw_dir, tmp_path / "arranged", recounts=str(tmp_path / "r.csv"))
    preprocess.run(
        PreprocessSettings(
            data=str(tmp_path / "arranged"),
            out=str(tmp_path / "shards"),
            image_size=TINY_IMAGE_SIZE,
            workers=1,
        )
    )
    result = evaluate.evaluate(
        model_dir, tmp_path / "shards", tmp_path / "eval", reference_in_model=False
    )
    with open(tmp_path / "eval" / "predictions.csv", newline="") as handle:
        predictions = {r["bin_id"]: r for r in csv.DictReader(handle)}
    right = [predictions[b]["true_count"] == predictions[b]["predicted_count"] for b in test_bins]
    assert result.verified_images == 4
    assert result.verified_accuracy == pytest.approx(sum(right) / 4)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["verified_accuracy"] == result.verified_accuracy
    assert "recount-verified" in (tmp_path / "eval" / "report.html").read_text()

    plain_eval = evaluate.evaluate(
        model_dir, shards_dir, tmp_path / "plain-eval", reference_in_model=False
    )
    assert plain_eval.verified_accuracy is None and plain_eval.verified_images == 0
