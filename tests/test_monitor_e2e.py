"""invmon monitor as it runs: a real predictor and a real monitor over HTTP on loopback.

Each request goes to the predictor (KServe's ModelServer serving a small counting model); its
request and response bodies then go to ``invmon monitor`` as the two CloudEvents KServe's payload
logger sends for it (tests/support/logged_events.py). First a stream of bins like the training
data, then a shifted stream (only bins of 2 items, the most this model counts).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from support import logged_events as ce

from invmon.data.synth import make_bin
from invmon.serving.client import v1_request, v2_request
from invmon.serving.server import LocalServer, free_port
from invmon.stages.evaluate import evaluate

NAME = "bin-counter"
WINDOW = 60  # predictions per window
IMAGES_PER_REQUEST = 4


class LocalMonitor:
    """``invmon monitor`` in a subprocess on loopback, for as long as the context."""

    def __init__(self, reference: Path, window_log: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            *(sys.executable, "-m", "invmon.cli", "monitor"),
            *("--reference", str(reference), "--port", str(self.port), "--host", "127.0.0.1"),
            *("--window", str(WINDOW), "--window-log", str(window_log)),
        ]
        self.log = log

    def __enter__(self) -> LocalMonitor:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise TimeoutError("monitor not up")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)

    def get(self, path: str) -> str:
        return urllib.request.urlopen(f"{self.url}{path}", timeout=30).read().decode()


def _bins(seed: int, wanted, how_many: int) -> list[bytes]:
    """``how_many`` synthetic bin photos (0-2 items) whose count ``wanted`` accepts."""
    images, number = [], 0
    while len(images) < how_many:
        number += 1
        _, jpeg, _, count = make_bin(seed, number, max_items=2)
        if wanted(count):
            images.append(jpeg)
    return images


def _predict_and_log(server: LocalServer, monitor: LocalMonitor, images: list[bytes], v2: bool):
    """One request to the predictor, then its two logged events to the monitor."""
    if v2:
        path, body = f"/v2/models/{NAME}/infer", json.dumps(v2_request(images)).encode()
    else:
        path, body = f"/v1/models/{NAME}:predict", json.dumps(v1_request(images)).encode()
    request = urllib.request.Request(
        server.url + path, data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer, content_type = response.read(), response.headers["Content-Type"]
    event_id = str(uuid.uuid4())
    ce.post(monitor.url, ce.headers(event_id, ce.REQUEST), body)
    outcome = ce.post(monitor.url, ce.headers(event_id, ce.RESPONSE, content_type), answer)
    assert outcome == "joined", outcome


def _stream(server, monitor, images: list[bytes]) -> None:
    for start in range(0, len(images), IMAGES_PER_REQUEST):
        chunk = images[start : start + IMAGES_PER_REQUEST]
        _predict_and_log(server, monitor, chunk, v2=(start // IMAGES_PER_REQUEST) % 2 == 1)


def _windows(log_folder: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(log_folder.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


@pytest.mark.slow
def test_no_alert_on_bins_like_training_and_an_alert_within_two_windows_of_a_shift(
    counting_model, tmp_path
):
    shards = counting_model.parent / "shards"
    # reference.json from the out folder: the session's model folder stays as other tests see it.
    evaluate(counting_model, shards, tmp_path / "eval", device="cpu", reference_in_model=False)
    reference = tmp_path / "eval" / "reference.json"
    like_training = _bins(seed=101, wanted=lambda c: True, how_many=3 * WINDOW)
    shifted = _bins(seed=202, wanted=lambda c: c == 2, how_many=2 * WINDOW)
    windows = tmp_path / "windows"
    with (
        LocalServer(counting_model, name=NAME, log=tmp_path / "predictor.log") as server,
        LocalMonitor(reference, windows, tmp_path / "monitor.log") as monitor,
    ):
        _stream(server, monitor, like_training)
        before = _windows(windows)
        assert [w["drift"] for w in before] == [False] * 3, before
        assert "invmon_monitor_drift_alerts_total 0.0" in monitor.get("/metrics")
        _stream(server, monitor, shifted)
        after = _windows(windows)[3:]
        assert len(after) == 2 and any(w["drift"] for w in after), after
        metrics, report = monitor.get("/metrics"), monitor.get("/report")
    alerts = sum(w["drift"] for w in after)
    assert f"invmon_monitor_drift_alerts_total {alerts:.1f}" in metrics
    assert 'invmon_monitor_events_dropped_total{reason="not_json"} 0.0' in metrics
    assert "invmon_monitor_window_psi" in metrics and "invmon_monitor_window_p_value" in metrics
    assert "DRIFT" in report and "<svg" in report and "stroke='red'" in report
    assert "drift alert: window" in (tmp_path / "monitor.log").read_text()
