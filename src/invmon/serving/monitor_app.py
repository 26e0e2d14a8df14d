"""The monitor's HTTP edge: an ASGI app for KServe's payload logger, Prometheus and people.

- ``POST /`` (any path but the ones below): one CloudEvent from the logger. Always answered 200
  when read, whatever became of it (a bad event is counted and dropped: an error status would
  only make the logger log an error per event); 413 above the body limit.
- ``GET /metrics``: the Prometheus metrics (:class:`invmon.serving.monitor.MonitorMetrics`).
- ``GET /report``: HTML, the reference against the live count shares over the last windows.
- ``GET /healthz``: 200 once the reference is loaded and the state restored.

The app is a bare ASGI callable under uvicorn: the logger sends an event per request and one per
response, and a framework's routing would cost a share of the events per second one core takes.
"""

from __future__ import annotations

import asyncio
import html
import logging

from invmon.core import html as page
from invmon.serving.monitor import Monitor

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 100 * 1024 * 1024  # a request of 64 images at the predictor's image limit
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


class MonitorApp:
    """ASGI app around a :class:`Monitor` (see the module doc)."""

    def __init__(self, monitor: Monitor, max_bytes: int = MAX_EVENT_BYTES, sweep: float = 1.0):
        self.monitor, self.max_bytes, self.sweep = monitor, max_bytes, sweep
        self._sweeper: asyncio.Task | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return None
        if scope["method"] == "GET":
            return await self._get(scope["path"], send)
        if scope["method"] != "POST":
            return await _respond(send, 405, b"POST CloudEvents; GET /metrics or /report\n")
        body = await _read_body(receive, self.max_bytes)
        if body is _GONE:
            return None
        if body is None:
            return await _respond(send, 413, f"over {self.max_bytes} bytes\n".encode())
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        outcome = self.monitor.handle(headers, body)
        return await _respond(send, 200, outcome.encode() + b"\n")

    async def _get(self, path: str, send):
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            text = generate_latest(self.monitor.metrics.registry)
            return await _respond(send, 200, text, CONTENT_TYPE_LATEST.encode())
        if path == "/report":
            text = report_html(self.monitor).encode()
            return await _respond(send, 200, text, b"text/html; charset=utf-8")
        if path in ("/healthz", "/"):
            return await _respond(send, 200, b"ok\n")
        return await _respond(send, 404, b"not found: GET /metrics, /report or /healthz\n")

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._sweeper = asyncio.create_task(self._sweep())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._sweeper:
                    self._sweeper.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _sweep(self):
        # Expiry also runs on every event; this catches a request left waiting in a quiet spell.
        while True:
            await asyncio.sleep(self.sweep)
            self.monitor.expire()


_GONE = object()  # the client hung up before its body was read


async def _read_body(receive, limit: int):
    """The body; None when it is over ``limit`` (drained, not kept); _GONE on a disconnect."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return _GONE
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            while message.get("more_body"):  # drain, never hold
                message = await receive()
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _respond(send, status: int, body: bytes, content_type: bytes | None = None):
    headers = [(b"content-type", content_type)] if content_type else list(_TEXT)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the report ------------------------------------------------------------------------------

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def report_html(monitor: Monitor) -> str:
    """The drift report: summary, the shares plot, and the last windows as a table."""
    history = list(monitor.history)
    t, ref = monitor.thresholds, monitor.reference
    summary = page.table(
        ["", "value"],
        [
            ["windows closed", monitor.next_window],
            ["drift alerts", monitor.alerts],
            ["predictions per window", t.window],
            ["alert when", f"PSI > {t.psi_threshold} or chi-squared p-value < {t.p_value}"],
            ["reference", f"{ref.images} images of the {ref.split} split"],
            ["reference mean confidence", f"{ref.mean_confidence:.3f}"],
            ["open window", f"{monitor._window.predictions} predictions"],
            ["waiting for their partner", monitor.pending],
            ["dropped", ", ".join(f"{k} {v}" for k, v in monitor.dropped.items() if v) or "none"],
        ],
    )
    rows = [
        [
            r["window"],
            r["closed"],
            r["predictions"],
            " ".join(str(c) for c in r["counts"]),
            f"{r['psi']:.3f}",
            f"{r['p_value']:.3g}",
            "-" if r["mean_confidence"] is None else f"{r['mean_confidence']:.3f}",
            "DRIFT" if r["drift"] else "",
        ]
        for r in reversed(history[-50:])
    ]
    windows = page.table(
        ["window", "closed", "predictions", "counts", "PSI", "p-value", "confidence", "alert"],
        rows,
    )
    counts = ", ".join(str(c) for c in ref.classes)
    return page.page(
        "Drift of the predicted counts",
        [
            ("Summary", summary),
            (
                "Reference against live shares, per window",
                shares_svg(history, ref.classes, [float(s) for s in ref.shares])
                + f"<p>Share of each predicted count ({html.escape(counts)}) per closed window; "
                "dashed: the reference (evaluate, test split); red ticks: drifted windows.</p>",
            ),
            ("Last windows", windows),
        ],
    )


def shares_svg(history: list[dict], classes: list[int], reference: list[float]) -> str:
    """Inline SVG: each count's live share over the windows, its reference share dashed."""
    width, height, left, top = 640, 280, 44, 20
    plot_w, plot_h = width - left - 90, height - top - 36
    top_share = max(
        [*reference, *(c / max(1, r["predictions"]) for r in history for c in r["counts"])]
    )
    top_share = min(1.0, top_share * 1.1) or 1.0
    n = max(1, len(history) - 1)

    def xy(i: float, share: float) -> str:
        return f"{left + plot_w * i / n:.1f},{top + plot_h * (1 - share / top_share):.1f}"

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        "font-family='sans-serif' font-size='11'>",
        f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='none' "
        "stroke='#999'/>",
        f"<text x='{left - 4}' y='{top + 4}' text-anchor='end'>{top_share:.2f}</text>",
        f"<text x='{left - 4}' y='{top + plot_h}' text-anchor='end'>0</text>",
        f"<text x='{left + plot_w / 2}' y='{height - 4}' text-anchor='middle'>window "
        f"{history[0]['window'] if history else 0} to {history[-1]['window'] if history else 0}"
        "</text>",
    ]
    for i, r in enumerate(history):
        if r["drift"]:
            x = left + plot_w * i / n
            parts.append(
                f"<line x1='{x:.1f}' y1='{top + plot_h}' x2='{x:.1f}' y2='{top + plot_h - 8}' "
                "stroke='red' stroke-width='3'/>"
            )
    for k, c in enumerate(classes):
        colour = _COLOURS[k % len(_COLOURS)]
        y = xy(0, reference[k]).split(",")[1]
        parts.append(
            f"<line x1='{left}' y1='{y}' x2='{left + plot_w}' y2='{y}' stroke='{colour}' "
            "stroke-dasharray='5,4'/>"
        )
        live = " ".join(
            xy(i, r["counts"][k] / max(1, r["predictions"])) for i, r in enumerate(history)
        )
        if live:
            parts.append(
                f"<polyline points='{live}' fill='none' stroke='{colour}' stroke-width='2'/>"
            )
        parts.append(
            f"<text x='{left + plot_w + 8}' y='{top + 12 + 14 * k}' fill='{colour}'>"
            f"{c} items</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
