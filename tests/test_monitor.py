"""invmon monitor: the drift measures, each bad event by its reason, windows, restart, HTTP.

The events are the ones KServe's payload logger sends (tests/support/logged_events.py); the HTTP
tests run the real app under uvicorn on loopback, and the S3 window log a real moto S3 server.
The end-to-end test with a real predictor is tests/test_monitor_e2e.py.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest
from support import logged_events as ce

from invmon.serving.drift import Reference, chi_squared, psi, shares
from invmon.serving.monitor import Monitor, Thresholds
from invmon.serving.monitor_app import MonitorApp
from invmon.serving.window_log import CHUNK, WindowLog
from invmon.stages.monitor import MonitorSettings, build_monitor, load_reference

REFERENCE = Reference(
    classes=[0, 1, 2, 3, 4, 5], counts=[30, 40, 50, 40, 25, 15], mean_confidence=0.6, images=200
)


class Clock:
    """A clock the test moves by hand (the pending timeout is in its seconds)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _monitor(window=20, clock=None, window_log=None, **thresholds) -> Monitor:
    return Monitor(REFERENCE, Thresholds(window=window, **thresholds), window_log, clock=clock)


def _send(monitor: Monitor, event_id: str, counts: list[int], confidence: float = 0.9):
    first = monitor.handle(ce.headers(event_id, ce.REQUEST), ce.v1_request(len(counts)))
    second = monitor.handle(ce.headers(event_id, ce.RESPONSE), ce.v1_response(counts, confidence))
    return first, second


def _like_reference(rng, n: int) -> list[int]:
    shares_ = np.array(REFERENCE.counts) / REFERENCE.images
    return [int(c) for c in rng.choice(REFERENCE.classes, size=n, p=shares_)]


# -- the measures ----------------------------------------------------------------------------


def test_psi_and_chi_squared_are_near_zero_and_one_on_the_reference_itself():
    reference = REFERENCE.shares
    assert psi(reference, np.array(REFERENCE.counts)) < 1e-9
    _statistic, p = chi_squared(reference, np.array(REFERENCE.counts))
    assert p > 0.99


def test_psi_matches_its_definition_and_a_shift_is_caught_by_both():
    reference = REFERENCE.shares
    live = np.array([0, 0, 0, 0, 50, 50])
    observed = shares(live)
    assert psi(reference, live) == pytest.approx(
        float(np.sum((observed - reference) * np.log(observed / reference)))
    )
    assert psi(reference, live) > 1.0
    assert chi_squared(reference, live)[1] < 1e-12


def test_a_reference_that_does_not_add_up_is_refused():
    with pytest.raises(ValueError, match="sum to its 10 images"):
        Reference(classes=[0, 1], counts=[3, 4], mean_confidence=0.5, images=10)
    with pytest.raises(ValueError, match="missing or wrong"):
        Reference.from_dict({"classes": [0, 1]})


# -- events ----------------------------------------------------------------------------------


def test_a_request_and_its_response_are_joined_by_ce_id_in_either_order():
    monitor = _monitor()
    assert _send(monitor, "a", [1, 2]) == ("waiting", "joined")
    response = monitor.handle(ce.headers("b", ce.RESPONSE), ce.v1_response([3]))
    request = monitor.handle(ce.headers("b", ce.REQUEST), ce.v1_request(1))
    assert (response, request) == ("waiting", "joined")
    assert monitor._window.counts == [0, 1, 1, 1, 0, 0] and monitor.pending == 0


def test_v2_bodies_are_read_for_counts_and_confidence():
    monitor = _monitor(window=3)
    request = json.dumps(
        {"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": ["A", "B", "C"]}]}
    ).encode()
    response = json.dumps(
        {
            "model_name": "bin-counter",
            "id": "r",
            "outputs": [
                {"name": "count", "shape": [3], "datatype": "INT64", "data": [4, 5, 5]},
                {
                    "name": "probabilities",
                    "shape": [3, 6],
                    "datatype": "FP32",
                    "data": [0, 0, 0, 0, 0.7, 0.3] + [0, 0, 0, 0, 0.2, 0.8] * 2,
                },
            ],
        }
    ).encode()
    monitor.handle(ce.headers("v2", ce.REQUEST), request)
    assert monitor.handle(ce.headers("v2", ce.RESPONSE), response) == "joined"
    [closed] = monitor.history
    assert closed["counts"] == [0, 0, 0, 0, 1, 2]
    assert closed["mean_confidence"] == pytest.approx((0.7 + 0.8 + 0.8) / 3)


BAD_EVENTS = [
    ("not_cloudevent", {"Content-Type": "application/json"}, ce.v1_request(1)),
    ("no_body", ce.headers("x", ce.REQUEST), b""),
    ("not_json", ce.headers("x", ce.REQUEST), b"\x89PNG not json"),
    ("unknown_type", ce.headers("x", "org.kubeflow.serving.inference.explain"), b"{}"),
    ("malformed", ce.headers("x", ce.REQUEST), b'{"rows": []}'),
    ("malformed", ce.headers("x", ce.RESPONSE), ce.v1_response([9])),  # not a class
]


@pytest.mark.parametrize(("reason", "headers", "body"), BAD_EVENTS)
def test_each_bad_event_is_counted_by_its_reason_and_dropped(reason, headers, body):
    monitor = _monitor()
    assert monitor.handle(headers, body) == reason
    assert monitor.dropped[reason] == 1 and monitor.pending == 0
    assert _send(monitor, "after", [1]) == ("waiting", "joined"), "it keeps working"


def test_a_partner_that_never_comes_is_dropped_after_the_timeout():
    clock = Clock()
    monitor = _monitor(clock=clock, pending_timeout=5)
    monitor.handle(ce.headers("lonely-request", ce.REQUEST), ce.v1_request(1))
    monitor.handle(ce.headers("lonely-response", ce.RESPONSE), ce.v1_response([1]))
    clock.now = 4.9
    assert monitor.expire() == 0
    clock.now = 5.1
    assert monitor.expire() == 2
    assert monitor.dropped["request_without_response"] == 1
    assert monitor.dropped["response_without_request"] == 1
    assert monitor.pending == 0


def test_waiting_events_are_capped():
    monitor = _monitor(max_pending=3)
    for i in range(5):
        monitor.handle(ce.headers(f"r{i}", ce.REQUEST), ce.v1_request(1))
    assert monitor.pending == 3 and monitor.dropped["pending_overflow"] == 2
    assert monitor.handle(ce.headers("r0", ce.RESPONSE), ce.v1_response([1])) == "waiting"


def test_a_count_mismatch_between_request_and_response_is_malformed():
    monitor = _monitor()
    monitor.handle(ce.headers("m", ce.REQUEST), ce.v1_request(2))
    assert monitor.handle(ce.headers("m", ce.RESPONSE), ce.v1_response([1])) == "malformed"


# -- windows, alerts, restart ----------------------------------------------------------------


def test_an_unshifted_stream_stays_quiet_and_a_shift_alerts_in_the_next_window(caplog):
    rng = np.random.default_rng(0)
    monitor = _monitor(window=400)
    for i in range(40):
        _send(monitor, f"q{i}", _like_reference(rng, 20))
    assert monitor.next_window == 2 and monitor.alerts == 0
    for i in range(20):
        _send(monitor, f"s{i}", [int(c) for c in rng.choice([4, 5], size=20)])
    assert monitor.next_window == 3 and monitor.alerts == 1
    assert "drift alert: window 2" in caplog.text
    metrics = _metrics_text(monitor)
    assert "invmon_monitor_drift_alerts_total 1.0" in metrics
    assert 'invmon_monitor_predictions_total{count="5"}' in metrics


def _metrics_text(monitor: Monitor) -> str:
    from prometheus_client import generate_latest

    return generate_latest(monitor.metrics.registry).decode()


def test_windows_are_logged_and_read_back_after_a_restart(tmp_path):
    rng = np.random.default_rng(1)
    first = _monitor(window=50, window_log=WindowLog(str(tmp_path / "log")))
    for i in range(12):
        _send(first, f"a{i}", _like_reference(rng, 10))
    _send(first, "shift", [5] * 50)
    assert first.next_window == 3 and first.alerts == 1
    restarted = _monitor(window=50, window_log=WindowLog(str(tmp_path / "log")))
    assert restarted.restore() == 3
    assert restarted.next_window == 3 and restarted.alerts == 1
    assert restarted.totals == first.totals and list(restarted.history) == list(first.history)
    assert "invmon_monitor_drift_alerts_total 1.0" in _metrics_text(restarted)
    _send(restarted, "more", [1] * 50)
    lines = (tmp_path / "log" / "windows-000000000.jsonl").read_text().splitlines()
    assert [json.loads(line)["window"] for line in lines] == [0, 1, 2, 3]


def test_the_window_log_skips_a_line_cut_short_and_starts_a_new_file_per_chunk(tmp_path):
    log = WindowLog(str(tmp_path))
    for window in (CHUNK - 1, CHUNK):
        log.append({"window": window})
    with open(tmp_path / "windows-000001000.jsonl", "a") as out:
        out.write('{"window": 10')  # a crash while appending
    assert [r["window"] for r in log.tail(5)] == [CHUNK - 1, CHUNK]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "windows-000000000.jsonl",
        "windows-000001000.jsonl",
    ]


def test_the_window_log_and_the_reference_live_in_s3_too(s3_url, monkeypatch):
    from invmon.data.s3 import S3Options, make_client

    # Signed requests, as a monitor pod's credentials would sign them (moto accepts any key).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    client = make_client(s3_url)
    client.create_bucket(Bucket="monitoring")
    client.put_object(
        Bucket="monitoring",
        Key="models/m1/reference.json",
        Body=json.dumps(REFERENCE.to_dict()).encode(),
    )
    s3 = S3Options(endpoint_url=s3_url)
    settings = MonitorSettings(
        reference="s3://monitoring/models/m1",
        window=10,
        window_log="s3://monitoring/monitor/bin-counter",
        s3=s3,
    )
    monitor = build_monitor(settings)
    assert monitor.reference == REFERENCE
    _send(monitor, "a", [1] * 10)
    _send(monitor, "b", [5] * 10)
    again = build_monitor(settings)
    assert again.next_window == 2 and [r["counts"] for r in again.history] == [
        [0, 10, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 10],
    ]


def test_a_missing_reference_says_to_run_evaluate(tmp_path):
    with pytest.raises(FileNotFoundError, match="run invmon evaluate"):
        load_reference(str(tmp_path))


# -- over HTTP -------------------------------------------------------------------------------


@pytest.fixture
def served():
    """The app under uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    from invmon.serving.server import free_port

    monitor = _monitor(window=10)
    port = free_port()
    config = uvicorn.Config(MonitorApp(monitor), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "monitor did not start"
        time.sleep(0.05)
    yield monitor, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_over_http_every_event_is_answered_and_metrics_and_report_show_the_drift(served):
    monitor, url = served
    assert monitor.next_window == 0
    assert ce.post(url, {"Content-Type": "application/json"}, b"{}") == "not_cloudevent"
    for i, counts in enumerate([[1, 2, 3, 1, 2], [2, 3, 1, 0, 2], [5] * 5, [5] * 5]):
        ce.post(url, ce.headers(f"e{i}", ce.REQUEST), ce.v1_request(len(counts)))
        assert ce.post(url, ce.headers(f"e{i}", ce.RESPONSE), ce.v1_response(counts)) == "joined"
    metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    assert 'invmon_monitor_events_dropped_total{reason="not_cloudevent"} 1.0' in metrics
    assert "invmon_monitor_drift_alerts_total 1.0" in metrics
    report = urllib.request.urlopen(f"{url}/report").read().decode()
    assert "<svg" in report and "DRIFT" in report and "stroke='red'" in report
