"""invmon monitor: events per second on one core, peak memory, false alarms, detection delay.

1. Throughput. One server process pinned to one core takes the CloudEvents KServe's payload
   logger sends (a V1 or V2 request of 4 small images, then its response, sharing ``Ce-Id``)
   from 16 keep-alive connections of a client pinned to another core. Baseline, in the same run:
   a bare sink on the same server stack (uvicorn, the same ASGI shape) that reads each event's
   body as JSON and discards it. Each server takes 10^4 events, then up to 10^5 in all; its peak
   resident memory (VmHWM) is read after each, so a monitor whose memory grows with the stream
   shows it.
2. False alarms: the monitor (in process, the same ``Monitor.handle`` the server calls) on
   ``--windows`` windows of an unshifted stream. The live counts come from the same true
   distribution as the reference, and the reference is itself a finite test split of
   ``--reference-images`` images, as evaluate's is. Beside the alert rate, each test alone
   (chi-squared p-value, PSI) as the baseline.
3. Detection delay: after two quiet windows, the stream shifts to only 4- and 5-item bins (and,
   separately, to a mild shift: a quarter of the bins replaced by 4- and 5-item ones), starting
   at a random point of the open window; the delay is the logged events from the first shifted
   one to the alert, over ``--shifts`` runs. The window's own length is the floor: no window test
   alerts before its window closes.

    flock /tmp/invmon-cpu.lock .venv/bin/python benchmarks/monitor.py

It prints the events/s ratio, the false-alarm rate and the detection delay last.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from invmon.serving.drift import Reference, reference_from_predictions
from invmon.serving.monitor import Monitor, Thresholds
from invmon.serving.server import free_port

# ABID's share of each count 0-5 in the bins it keeps (docs/data.md, the 0-5 task), rounded.
TRUE_SHARES = np.array([0.06, 0.15, 0.22, 0.23, 0.19, 0.15])
CLASSES = [0, 1, 2, 3, 4, 5]
IMAGES_PER_REQUEST = 4
CONNECTIONS = 16
REQUEST, RESPONSE = (
    "org.kubeflow.serving.inference.request",
    "org.kubeflow.serving.inference.response",
)


# -- events as the logger sends them ---------------------------------------------------------


def _bodies(rng: np.random.Generator, v2: bool) -> tuple[bytes, bytes]:
    """A request of 4 small images and the predictor's response, V1 or V2."""
    images = [base64.b64encode(rng.bytes(1500)).decode() for _ in range(IMAGES_PER_REQUEST)]
    counts = [int(c) for c in rng.choice(CLASSES, size=IMAGES_PER_REQUEST, p=TRUE_SHARES)]
    probabilities = [[0.9 if c == k else 0.02 for k in CLASSES] for c in counts]
    if not v2:
        request = {"instances": [{"image": {"b64": b}} for b in images]}
        response = {
            "predictions": [
                {
                    "count": c,
                    "expected_count": float(c),
                    "confidence": 0.9,
                    "probabilities": dict(zip(map(str, CLASSES), p, strict=True)),
                }
                for c, p in zip(counts, probabilities, strict=True)
            ]
        }
    else:
        shape = [IMAGES_PER_REQUEST]
        request = {
            "inputs": [{"name": "image", "shape": shape, "datatype": "BYTES", "data": images}]
        }
        response = {
            "model_name": "bin-counter",
            "outputs": [
                {"name": "count", "shape": shape, "datatype": "INT64", "data": counts},
                {
                    "name": "probabilities",
                    "shape": [IMAGES_PER_REQUEST, len(CLASSES)],
                    "datatype": "FP32",
                    "data": [x for row in probabilities for x in row],
                },
            ],
        }
    return json.dumps(request).encode(), json.dumps(response).encode()


def _headers(event_id: str, kind: str) -> dict[str, str]:
    return {
        "Ce-Id": event_id,
        "Ce-Type": kind,
        "Ce-Source": "http://localhost:9081/bin-counter-predictor-7d9f-abcde",
        "Ce-Specversion": "1.0",
        "Ce-Time": "2026-12-07T02:00:00Z",
        "Ce-Inferenceservicename": "bin-counter",
        "Ce-Namespace": "team",
        "Ce-Component": "predictor",
        "Ce-Endpoint": "default",
        "Ce-Metadata": "{}",
        "Content-Type": "application/json",
    }


def _http_request(port: int, event_id: str, kind: str, body: bytes) -> bytes:
    lines = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in _headers(event_id, kind).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- throughput ------------------------------------------------------------------------------


class _Sink:
    """The baseline: read each event's body as JSON, discard it, answer 200."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        import orjson

        orjson.loads(b"".join(chunks) or b"{}")
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"3")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok\n"})


def _serve_sink(port: int) -> None:
    import uvicorn

    uvicorn.run(_Sink(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _start(command: list[str], port: int, core: int) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.sched_setaffinity(process.pid, {core})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"{command} not up: {process.stderr.read().decode()[-2000:]}")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _send_events(port: int, first: int, count: int, templates) -> float:
    """Send ``count`` events (request, response, ...) over CONNECTIONS; return seconds taken."""
    queue = iter(range(first, first + count))

    async def connection():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in queue:
            pair, kind = divmod(n, 2)
            request, response = templates[pair % len(templates)]
            body, event_type = (request, REQUEST) if kind == 0 else (response, RESPONSE)
            writer.write(_http_request(port, f"ev-{pair}", event_type, body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return time.perf_counter() - start


def throughput(command_of, steps: list[int], templates, server_core: int) -> dict:
    """Events/s and peak memory of the server that ``command_of(port)`` starts, per step."""
    port = free_port()
    process = _start(command_of(port), port, server_core)
    results, sent = {}, 0
    try:
        for total in steps:
            seconds = asyncio.run(_send_events(port, sent, total - sent, templates))
            results[total] = ((total - sent) / seconds, _peak_rss_mb(process.pid))
            sent = total
    finally:
        process.terminate()
        process.wait(timeout=15)
    return results


# -- false alarms and detection delay (in process) -------------------------------------------


def _reference(rng: np.random.Generator, images: int) -> Reference:
    counts = rng.choice(CLASSES, size=images, p=TRUE_SHARES)
    return reference_from_predictions(CLASSES, counts, np.full(images, 0.9))


def _feed(monitor: Monitor, rng, shares, pairs: int, start_id: int) -> int | None:
    """Send ``pairs`` request/response pairs; return the events sent until an alert, if any."""
    before = monitor.alerts
    for i in range(pairs):
        counts = [int(c) for c in rng.choice(CLASSES, size=IMAGES_PER_REQUEST, p=shares)]
        event_id = f"e{start_id + i}"
        monitor.handle(_lower(_headers(event_id, REQUEST)), _REQUEST_BODY)
        monitor.handle(_lower(_headers(event_id, RESPONSE)), _v1_response(counts))
        if monitor.alerts > before:
            return 2 * (i + 1)
    return None


def _lower(headers: dict) -> dict:
    return {k.lower(): v for k, v in headers.items()}


_REQUEST_BODY = json.dumps(
    {"instances": [{"image": {"b64": "AAAA"}}] * IMAGES_PER_REQUEST}
).encode()


def _v1_response(counts: list[int]) -> bytes:
    return json.dumps({"predictions": [{"count": c, "confidence": 0.9} for c in counts]}).encode()


def false_alarms(args, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    thresholds = Thresholds(window=args.window)
    monitor = Monitor(_reference(rng, args.reference_images), thresholds)
    pairs = args.windows * args.window // IMAGES_PER_REQUEST
    _feed(monitor, rng, TRUE_SHARES, pairs, 0)
    history = list(monitor.history)[-args.windows :]
    return {
        "windows": len(history),
        "alerts": sum(r["drift"] for r in history),
        "chi_squared_only": sum(r["p_value"] < thresholds.p_value for r in history),
        "psi_only": sum(r["psi"] > thresholds.psi_threshold for r in history),
        "max_psi": max(r["psi"] for r in history),
    }


def detection_delays(args, shifted_shares: np.ndarray, seed: int) -> list[int | None]:
    rng = np.random.default_rng(seed)
    delays = []
    for run in range(args.shifts):
        monitor = Monitor(_reference(rng, args.reference_images), Thresholds(window=args.window))
        quiet = 2 * args.window // IMAGES_PER_REQUEST + int(rng.integers(0, args.window // 4))
        _feed(monitor, rng, TRUE_SHARES, quiet, 0)
        if monitor.alerts:
            delays.append(None)  # a false alarm before the shift: not a detection
            continue
        delays.append(_feed(monitor, rng, shifted_shares, 10 * args.window, 10**6 * (run + 1)))
    return delays


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events for the peak memory")
    parser.add_argument("--window", type=int, default=500, help="the monitor's --window")
    parser.add_argument("--windows", type=int, default=200, help="windows of the false-alarm run")
    parser.add_argument("--reference-images", type=int, default=2000, help="test split size")
    parser.add_argument("--repeats", type=int, default=1, help="false-alarm runs (seeds)")
    parser.add_argument("--shifts", type=int, default=20, help="shifted runs for the delay")
    parser.add_argument("--serve-sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        return _serve_sink(args.serve_sink)
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[0], cores[-1]
    os.sched_setaffinity(0, {client_core})
    rng = np.random.default_rng(0)
    templates = [_bodies(rng, v2=i % 2 == 1) for i in range(64)]
    steps = [10_000, args.events]
    with tempfile.TemporaryDirectory() as tmp:
        reference = _reference(rng, args.reference_images)
        (Path(tmp) / "reference.json").write_text(json.dumps(reference.to_dict()))
        sink = throughput(
            lambda port: [sys.executable, __file__, "--serve-sink", str(port)],
            steps,
            templates,
            server_core,
        )
        monitor = throughput(
            lambda port: [
                *(sys.executable, "-m", "invmon.cli", "monitor", "--host", "127.0.0.1"),
                *("--reference", str(Path(tmp) / "reference.json"), "--port", str(port)),
                *("--window", str(args.window), "--window-log", str(Path(tmp) / "windows")),
            ],
            steps,
            templates,
            server_core,
        )
    print(f"server on core {server_core}, client on core {client_core}, {CONNECTIONS} connections")
    for name, result in (("bare sink (baseline)", sink), ("invmon monitor", monitor)):
        for total, (rate, peak) in result.items():
            print(
                f"{name:22s} events up to {total:>7d}: {rate:8.0f} events/s, "
                f"peak RSS {peak:6.1f} MB"
            )
    memory_growth = monitor[args.events][1] / monitor[10_000][1]
    rate_ratio = monitor[args.events][0] / sink[args.events][0]

    # The alert's own log line per drifted window is the monitor's; here it would only be noise.
    logging.getLogger("invmon.serving.monitor").setLevel(logging.ERROR)
    alarms = [false_alarms(args, seed) for seed in range(args.repeats)]
    windows = sum(a["windows"] for a in alarms)
    for a in alarms:
        print(
            f"unshifted stream: {a['alerts']} alerts in {a['windows']} windows (chi-squared alone "
            f"{a['chi_squared_only']}, PSI alone {a['psi_only']}, largest PSI {a['max_psi']:.3f})"
        )
    rate = sum(a["alerts"] for a in alarms) / windows
    strong = np.array([0, 0, 0, 0, 0.5, 0.5])
    mild = 0.75 * TRUE_SHARES + 0.25 * strong
    strong_delays = detection_delays(args, strong, seed=10)
    mild_delays = detection_delays(args, mild, seed=11)
    print(f"window: {args.window} predictions = {2 * args.window // IMAGES_PER_REQUEST} events")
    for name, delays in (
        ("only 4- and 5-item bins", strong_delays),
        ("a quarter 4-5", mild_delays),
    ):
        found = [d for d in delays if d is not None]
        print(
            f"shift to {name}: detected in {len(found)}/{len(delays)} runs; events to the alert "
            f"median {np.median(found) if found else float('nan'):.0f}, max "
            f"{max(found) if found else float('nan')}"
        )
    print()
    print(
        f"events/s ratio (monitor / bare sink, one core): {rate_ratio:.2f} "
        f"({monitor[args.events][0]:.0f} / {sink[args.events][0]:.0f} events/s); peak memory "
        f"10^5 / 10^4 events: {memory_growth:.2f}"
    )
    print(f"false-alarm rate: {rate:.2%} of {windows} unshifted windows (target <= 1 %)")
    found = [d for d in strong_delays if d is not None]
    print(
        f"detection delay: median {np.median(found):.0f} events after the shift to 4- and "
        f"5-item bins (max {max(found)}; a window is "
        f"{2 * args.window // IMAGES_PER_REQUEST} events)"
    )


if __name__ == "__main__":
    main()
