"""invmon recount export|import: flagged bins out as recount work, counts back in one format."""

import base64
import csv
import json
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from invmon.cli import main
from invmon.data import recounts
from invmon.data.s3 import make_client

CLASSES = [0, 1, 2, 3, 4, 5]


def fake_audit(folder: Path, source: str, bins: list[str]) -> Path:
    """An audit folder as invmon audit writes it, for ``bins`` (all flagged, in this order)."""
    folder.mkdir(parents=True)
    summary = {"source": source, "classes": CLASSES, "scored": len(bins), "flagged": len(bins)}
    (folder / "summary.json").write_text(json.dumps(summary))
    header = "bin_id,recorded_count,predicted_count,confidence,recorded_probability,"
    header += "expected_count,flagged\n"
    lines = [
        f"{b},{i % 6},{(i + 2) % 6},0.9,{0.001 * (i + 1):.4f},2.0,True\n"
        for i, b in enumerate(bins)
    ]
    for name in ("flagged.csv", "audit.csv"):
        (folder / name).write_text(header + "".join(lines))
    return folder


@pytest.fixture
def local_audit(raw_dir, tmp_path) -> Path:
    return fake_audit(tmp_path / "audit", str(raw_dir), ["00007", "00003", "00011", "00001"])


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_writes_tasks_config_and_work_list_for_the_top_bins(local_audit, raw_dir, tmp_path):
    out = tmp_path / "work"
    args = ["recount", "export", "--audit", str(local_audit), "--out", str(out)]
    assert main([*args, "--top", "3"]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["bin_id"] for t in tasks] == ["00007", "00003", "00011"]
    first = tasks[0]["data"]
    assert (first["recorded_count"], first["predicted_count"], first["rank"]) == (0, 2, 1)
    assert first["image"].startswith("data:image/jpeg;base64,")
    photo = base64.b64decode(first["image"].split(",", 1)[1])
    assert photo == (raw_dir / "bin-images" / "00007.jpg").read_bytes()
    config = ET.fromstring((out / "label_config.xml").read_text())
    choices = config.find("Choices")
    assert (choices.get("name"), choices.get("toName")) == ("count", "image")
    assert [c.get("value") for c in choices] == ["0", "1", "2", "3", "4", "5", "cannot tell"]
    assert config.find("Image").get("value") == "$image"
    work = rows(out / "cycle_count.csv")
    assert [(r["bin_id"], r["recorded_count"], r["predicted_count"]) for r in work] == [
        ("00007", "0", "2"),
        ("00003", "1", "3"),
        ("00011", "2", "4"),
    ]
    assert json.loads((out / "export.json").read_text())["images"] == "embedded"


def test_export_of_s3_bins_references_s3_uris_or_presigned_urls_with_their_expiry(
    raw_dir, s3_url, public_bucket, tmp_path, monkeypatch, capsys
):
    client = make_client(s3_url, anonymous=True)
    photo = (raw_dir / "bin-images" / "00005.jpg").read_bytes()
    client.put_object(Bucket=public_bucket, Key="site-a/bin-images/00005.jpg", Body=photo)
    audit = fake_audit(tmp_path / "audit", f"s3://{public_bucket}/site-a", ["00005"])
    report = recounts.export_recounts(audit, tmp_path / "uris", top=10)
    tasks = json.loads((tmp_path / "uris" / "tasks.json").read_text())
    assert tasks[0]["data"]["image"] == f"s3://{public_bucket}/site-a/bin-images/00005.jpg"
    assert (report.images, report.expires_at) == ("s3", None)

    # moto accepts any key pair; the signature is still computed and checked as AWS would.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    args = ["recount", "export", "--audit", str(audit), "--out", str(tmp_path / "signed")]
    assert main([*args, "--presign", "3600", "--endpoint-url", s3_url]) == 0
    assert "valid until" in capsys.readouterr().out
    data = json.loads((tmp_path / "signed" / "tasks.json").read_text())[0]["data"]
    assert data["image"].startswith(s3_url) and "Signature=" in data["image"]
    assert (
        data["image_expires_at"]
        == json.loads((tmp_path / "signed" / "export.json").read_text())["expires_at"]
    )
    with urllib.request.urlopen(data["image"], timeout=30) as answer:
        assert answer.read() == photo


def test_presign_of_a_local_audit_is_refused(local_audit, tmp_path, capsys):
    args = ["recount", "export", "--audit", str(local_audit), "--out", str(tmp_path / "o")]
    assert main([*args, "--presign", "60"]) == 2
    assert "--presign needs an audit of s3:// bins" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_of_a_folder_that_is_no_audit_is_named(tmp_path, capsys):
    assert main(["recount", "export", "--audit", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "has no summary.json (run invmon audit)" in capsys.readouterr().err


# -- import ----------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def import_csv(local_audit, path: Path, out: Path) -> recounts.ImportReport:
    classes, known = recounts.read_classes(local_audit)
    return recounts.import_recounts(path, out, classes, known)


def test_a_filled_in_work_list_imports_as_it_is(local_audit, tmp_path, capsys):
    recounts.export_recounts(local_audit, tmp_path / "work", top=4)
    sheet = (tmp_path / "work" / "cycle_count.csv").read_text().splitlines()
    filled = [sheet[0]] + [
        line.rstrip(",") + f",{n},2026-12-06T09:0{n}:00Z,ana"
        for line, n in zip(sheet[1:], [3, 1, 4, 1], strict=True)
    ]
    path = write(tmp_path / "count-monday.csv", "\n".join(filled) + "\n")
    args = ["recount", "import", "--from", str(path), "--out", str(tmp_path / "r")]
    assert main([*args, "--audit", str(local_audit)]) == 0
    assert "4 bins from 4 cycle-count counts" in capsys.readouterr().out
    assert rows(tmp_path / "r" / "recounts-count-monday.csv") == [
        {"bin_id": b, "true_count": c, "source": "cycle-count:ana", "counted_at": t}
        for b, c, t in [
            ("00001", "1", "2026-12-06T09:01:00Z"),
            ("00003", "1", "2026-12-06T09:01:00Z"),
            ("00007", "3", "2026-12-06T09:03:00Z"),
            ("00011", "4", "2026-12-06T09:04:00Z"),
        ]
    ]


def test_unknown_bin_ids_are_reported_and_skipped(local_audit, tmp_path):
    path = write(tmp_path / "c.csv", "bin_id,counted_quantity\n00007,2\n99999,3\n0007,1\n")
    report = import_csv(local_audit, path, tmp_path / "r")
    assert report.skipped == {"unknown bin id": ["99999", "0007"]}
    assert [r["bin_id"] for r in rows(tmp_path / "r" / "recounts-c.csv")] == ["00007"]


def test_counts_outside_the_classes_are_reported_and_skipped(local_audit, tmp_path):
    path = write(tmp_path / "c.csv", "bin_id,counted_quantity\n00007,6\n00003,-1\n00011,two\n")
    report = import_csv(local_audit, path, tmp_path / "r")
    assert report.skipped["count outside the classes"] == [
        "00007: '6' (allowed [0, 1, 2, 3, 4, 5])",
        "00003: '-1' (allowed [0, 1, 2, 3, 4, 5])",
        "00011: 'two' (allowed [0, 1, 2, 3, 4, 5])",
    ]
    assert report.written == 0 and rows(tmp_path / "r" / "recounts-c.csv") == []


def test_cannot_tell_is_reported_and_skipped(local_audit, tmp_path):
    path = write(tmp_path / "c.csv", "bin_id,counted_quantity\n00007,cannot tell\n00003,\n")
    report = import_csv(local_audit, path, tmp_path / "r")
    assert report.skipped == {"cannot tell": ["00007"], "not counted": ["00003"]}


def test_duplicate_bins_with_conflicting_counts_keep_the_latest_and_list_the_conflict(
    local_audit, tmp_path, capsys
):
    path = write(
        tmp_path / "c.csv",
        "bin_id,counted_quantity,counted_at,counter\n"
        "00007,4,2026-12-06T10:00:00Z,bo\n"
        "00007,2,2026-12-06T08:00:00Z,ana\n"
        "00003,1,,ana\n"
        "00003,1,,bo\n",
    )
    args = ["recount", "import", "--from", str(path), "--out", str(tmp_path / "r")]
    assert main([*args, "--audit", str(local_audit)]) == 0
    assert "conflict, bin 00007: counted [2, 4]; kept the latest, 4" in capsys.readouterr().out
    kept = {r["bin_id"]: r for r in rows(tmp_path / "r" / "recounts-c.csv")}
    assert kept["00007"]["true_count"] == "4" and kept["00007"]["source"] == "cycle-count:bo"
    assert kept["00003"]["source"] == "cycle-count:bo", "same count twice: no conflict, last row"
    report = json.loads((tmp_path / "r" / "recounts-c.json").read_text())
    assert report["conflicts"] == {"00007": [2, 4]}


def label_studio_export(choices: dict[str, list[str]], name="count", to="image") -> list[dict]:
    """A Label Studio JSON export: one task per bin, one annotation per chosen count."""
    return [
        {
            "id": n,
            "data": {"bin_id": bin_id, "image": "data:image/jpeg;base64,"},
            "annotations": [
                {
                    "id": 10 * n + k,
                    "completed_by": {"id": 1, "email": "ana@example.com"},
                    "updated_at": f"2026-12-06T1{k}:00:00.000000Z",
                    "was_cancelled": False,
                    "result": [
                        {
                            "from_name": name,
                            "to_name": to,
                            "type": "choices",
                            "value": {"choices": [choice]},
                        }
                    ],
                }
                for k, choice in enumerate(picked)
            ],
        }
        for n, (bin_id, picked) in enumerate(choices.items(), start=1)
    ]


def test_a_label_studio_export_imports_with_its_skips_and_conflicts(local_audit, tmp_path):
    export = {"00007": ["3"], "00003": ["cannot tell"], "00011": ["1", "2"], "00001": ["9"]}
    path = write(tmp_path / "project-3.json", json.dumps(label_studio_export(export)))
    report = import_csv(local_audit, path, tmp_path / "r")
    assert report.kind == "label-studio" and report.read == 5
    assert report.skipped == {
        "cannot tell": ["00003"],
        "count outside the classes": ["00001: '9' (allowed [0, 1, 2, 3, 4, 5])"],
    }
    assert report.conflicts == {"00011": [1, 2]}
    assert rows(tmp_path / "r" / "recounts-project-3.csv") == [
        {
            "bin_id": "00007",
            "true_count": "3",
            "source": "label-studio:ana@example.com",
            "counted_at": "2026-12-06T10:00:00.000000Z",
        },
        {
            "bin_id": "00011",
            "true_count": "2",
            "source": "label-studio:ana@example.com",
            "counted_at": "2026-12-06T11:00:00.000000Z",
        },
    ]


def test_an_export_of_another_projects_config_is_a_clear_error(local_audit, tmp_path, capsys):
    other = label_studio_export({"00007": ["Positive"]}, name="sentiment", to="text")
    path = write(tmp_path / "other.json", json.dumps(other))
    args = ["recount", "import", "--from", str(path), "--out", str(tmp_path / "r")]
    assert main([*args, "--audit", str(local_audit)]) == 2
    err = capsys.readouterr().err
    assert "is not an export of an invmon recount project" in err
    assert "found sentiment->text (choices)" in err
    assert not (tmp_path / "r").exists(), "nothing written"
    no_bins = write(tmp_path / "texts.json", json.dumps([{"data": {"text": "hello"}}]))
    with pytest.raises(ValueError, match=r"found tasks without data\.bin_id"):
        recounts.import_recounts(no_bins, tmp_path / "r", CLASSES)


def test_other_files_are_named(tmp_path, capsys):
    for name, text, message in [
        ("a.json", "{not json", "is not JSON"),
        ("b.json", '{"tasks": []}', "a list of tasks), got a dict"),
        ("c.csv", "bin,count\n1,2\n", "needs a header with bin_id and counted_quantity"),
        ("d.txt", "", "expected a Label Studio JSON export (.json) or a cycle-count CSV"),
    ]:
        path = write(tmp_path / name, text)
        assert main(["recount", "import", "--from", str(path), "--out", str(tmp_path / "r")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_failed_write_leaves_no_half_written_file(tmp_path, monkeypatch):
    target = tmp_path / "recounts-x.csv"
    target.write_text("bin_id,true_count,source,counted_at\n00001,2,cycle-count,\n")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(recounts.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        recounts._write_atomic(target, "half")
    assert target.read_text().endswith("00001,2,cycle-count,\n"), "the old file stands"
    assert [p.name for p in tmp_path.iterdir()] == ["recounts-x.csv"], "no temporary file left"


@pytest.mark.parametrize("verb", ["export", "import"])
def test_each_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["recount", verb, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: invmon recount {verb}" in capsys.readouterr().out


def test_a_missing_or_unknown_verb_is_named(capsys):
    for args, message in [
        (["recount"], "the following arguments are required: VERB"),
        (["recount", "send"], "invalid choice: 'send'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
