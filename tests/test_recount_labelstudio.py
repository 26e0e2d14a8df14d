"""The recount round trip through a real Label Studio server (own environment, sqlite, loopback).

Export flagged bins with ``invmon recount export``, create a Label Studio project with our labeling
config, import the tasks, answer each as a reviewer would through the REST API (one bin twice with
different counts, one "cannot tell"), export the project as JSON and read it back with ``invmon
recount import``: every count must arrive as the reviewer gave it.
"""

import csv
import json
import time

import pytest
from support.labelstudio import LabelStudioServer, label_studio_env
from test_recount import fake_audit

from invmon.cli import main

BINS = ["00004", "00009", "00002", "00012", "00007", "00001"]
# What the reviewer answers per bin, in order; the last answer of a bin is the one that counts.
ANSWERS = {
    "00004": ["3"],
    "00009": ["0"],
    "00002": ["cannot tell"],
    "00012": ["1", "5"],
    "00007": ["2"],
    "00001": ["4"],
}


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    with LabelStudioServer(label_studio_env(), tmp_path_factory.mktemp("label-studio")) as server:
        yield server


def choice(value: str) -> list[dict]:
    return [
        {"from_name": "count", "to_name": "image", "type": "choices", "value": {"choices": [value]}}
    ]


@pytest.mark.slow
def test_recounts_go_through_label_studio_and_come_back_exactly(label_studio, raw_dir, tmp_path):
    audit = fake_audit(tmp_path / "audit", str(raw_dir), BINS)
    work = tmp_path / "work"
    export = ["recount", "export", "--audit", str(audit), "--out", str(work), "--top", "6"]
    assert main(export) == 0

    project = label_studio.request(
        "POST",
        "/api/projects",
        {"title": "recount 2026-12-07", "label_config": (work / "label_config.xml").read_text()},
    )
    tasks = json.loads((work / "tasks.json").read_text())
    imported = label_studio.request("POST", f"/api/projects/{project['id']}/import", tasks)
    assert imported["task_count"] == len(BINS)

    listed = label_studio.request("GET", f"/api/tasks?project={project['id']}&page_size=100")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    assert sorted(t["data"]["bin_id"] for t in listed) == sorted(BINS)
    for task in listed:
        for answer in ANSWERS[task["data"]["bin_id"]]:
            label_studio.request(
                "POST",
                f"/api/tasks/{task['id']}/annotations/",
                {"result": choice(answer), "was_cancelled": False, "lead_time": 4.2},
            )
            time.sleep(0.05)  # two answers to one bin get distinct times: the later one wins

    exported = label_studio.request("GET", f"/api/projects/{project['id']}/export?exportType=JSON")
    export_file = tmp_path / "project-export.json"
    export_file.write_text(json.dumps(exported))
    out = tmp_path / "recounts"
    back = ["recount", "import", "--from", str(export_file), "--out", str(out)]
    assert main([*back, "--audit", str(audit)]) == 0

    with open(out / "recounts-project-export.csv", newline="") as handle:
        got = {row["bin_id"]: row for row in csv.DictReader(handle)}
    expected = {b: int(a[-1]) for b, a in ANSWERS.items() if a[-1] != "cannot tell"}
    assert {b: int(r["true_count"]) for b, r in got.items()} == expected
    reviewer = label_studio.request("GET", "/api/current-user/whoami")["id"]
    assert all(r["source"] == f"label-studio:{reviewer}" for r in got.values())
    assert all(r["counted_at"] for r in got.values())
    report = json.loads((out / "recounts-project-export.json").read_text())
    assert report["skipped"] == {"cannot tell": ["00002"]}
    assert report["conflicts"] == {"00012": [1, 5]}
