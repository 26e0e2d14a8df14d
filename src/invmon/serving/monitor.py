"""The drift watch behind ``invmon monitor``: join logged requests and responses, count, compare.

:class:`Monitor` takes the CloudEvents of KServe's payload logger one at a time
(:meth:`Monitor.handle`). A request and its response share ``ce-id``; whichever comes first
waits (the logger's workers may send them in either order) until its partner comes, or until
``pending_timeout`` seconds pass, when it is dropped as ``request_without_response`` or
``response_without_request``. At most ``max_pending`` events wait: beyond that the oldest is
dropped (``pending_overflow``), so memory stays bounded however the stream misbehaves.

A joined response adds its images' predicted counts and confidences to the open window. Once the
window holds ``window`` predictions it closes: its count histogram is compared with the
reference (chi-squared test and PSI, :mod:`invmon.serving.drift`), it is appended to the window
log, kept in the history the report draws (the last ``history`` windows), and a drifted window
(PSI above ``psi_threshold`` or p-value below ``p_value``) raises an alert: a WARNING log line
and the alerts metric. The metrics are Prometheus's (:class:`MonitorMetrics`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from invmon.serving import payloads
from invmon.serving.drift import Reference, chi_squared, psi
from invmon.serving.payloads import BadEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    """How windows are cut and when one has drifted."""

    window: int = 500  # predictions per window
    psi_threshold: float = 0.2
    p_value: float = 0.001
    history: int = 200  # closed windows kept in memory for the report
    max_pending: int = 10_000
    pending_timeout: float = 30.0


class MonitorMetrics:
    """The monitor's Prometheus metrics, in a registry of their own (served on /metrics)."""

    def __init__(self, classes: list[int]):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = r = CollectorRegistry()
        self.predictions = Counter(
            "invmon_monitor_predictions",
            "Predictions seen, by predicted count",
            ["count"],
            registry=r,
        )
        self.events = Counter(
            "invmon_monitor_events", "CloudEvents received, by ce-type", ["type"], registry=r
        )
        self.dropped = Counter(
            "invmon_monitor_events_dropped", "Events dropped, by reason", ["reason"], registry=r
        )
        self.windows = Counter("invmon_monitor_windows", "Windows closed", registry=r)
        self.alerts = Counter("invmon_monitor_drift_alerts", "Windows that drifted", registry=r)
        self.drift = Gauge(
            "invmon_monitor_drift", "1 when the last closed window drifted, else 0", registry=r
        )
        self.psi = Gauge("invmon_monitor_window_psi", "PSI of the last closed window", registry=r)
        self.p_value = Gauge(
            "invmon_monitor_window_p_value",
            "Chi-squared p-value of the last closed window against the reference",
            registry=r,
        )
        self.confidence = Gauge(
            "invmon_monitor_window_mean_confidence",
            "Mean top-class probability in the last closed window",
            registry=r,
        )
        self.reference_confidence = Gauge(
            "invmon_monitor_reference_mean_confidence",
            "Mean top-class probability on the test split (the reference)",
            registry=r,
        )
        self.pending = Gauge(
            "invmon_monitor_pending_events", "Events waiting for their partner", registry=r
        )
        # Every label exists from the start, so a dashboard shows 0 rather than no data; the
        # children are kept, as looking one up per prediction costs a lock and a dict.
        self.by_count = {c: self.predictions.labels(count=str(c)) for c in classes}
        self.by_reason = {r: self.dropped.labels(reason=r) for r in payloads.DROP_REASONS}
        self.by_type = {
            payloads.REQUEST_TYPE: self.events.labels(type="request"),
            payloads.RESPONSE_TYPE: self.events.labels(type="response"),
        }


@dataclass
class _Window:
    counts: list[int]
    predictions: int = 0
    confidence_sum: float = 0.0
    confidence_n: int = 0
    started: str = field(default_factory=lambda: _now())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Monitor:
    """Join, count and compare the logged predictions of one predictor (see the module doc)."""

    def __init__(self, reference: Reference, thresholds: Thresholds, window_log=None, clock=None):
        self.reference, self.thresholds, self.window_log = reference, thresholds, window_log
        self.clock = clock or time.monotonic
        self.metrics = MonitorMetrics(reference.classes)
        self.metrics.reference_confidence.set(reference.mean_confidence)
        self._shares = reference.shares
        self._position = {c: i for i, c in enumerate(reference.classes)}
        # ce-id -> (arrival time, type, images or predictions), oldest first.
        self._pending: OrderedDict[str, tuple[float, str, object]] = OrderedDict()
        self.history: deque[dict] = deque(maxlen=thresholds.history)
        self.next_window, self.alerts = 0, 0
        self.totals = [0] * len(reference.classes)
        self.dropped = dict.fromkeys(payloads.DROP_REASONS, 0)
        self._window = self._new_window()

    def _new_window(self) -> _Window:
        return _Window(counts=[0] * len(self.reference.classes))

    # -- events ------------------------------------------------------------------------------

    def handle(self, headers: dict[str, str], body: bytes) -> str:
        """Take one logged CloudEvent; return what became of it (``waiting``, ``joined`` or the
        reason it was dropped). Never raises for a bad event."""
        self.expire()
        try:
            event = payloads.read_event(headers, body)
            self.metrics.by_type[event.type].inc()
            return self._take(event)
        except BadEvent as bad:
            self.drop(bad.reason, str(bad))
            return bad.reason

    def _take(self, event: payloads.Event) -> str:
        if event.type == payloads.REQUEST_TYPE:
            content = payloads.request_images(event.body)
        else:
            content = payloads.response_predictions(event.body)
            self._check_counts(content[0])
        partner = self._pending.pop(event.id, None)
        if partner is None:
            self._wait(event.id, event.type, content)
            return "waiting"
        _arrived, kind, other = partner
        if kind == event.type:  # a second request (or response) with the same id
            self.drop(_orphan_reason(kind), f"two {kind} events with ce-id {event.id!r}")
            self._wait(event.id, event.type, content)
            return "waiting"
        images, predictions = (
            (content, other) if kind != payloads.REQUEST_TYPE else (other, content)
        )
        if len(predictions[0]) != images:
            raise BadEvent(
                "malformed",
                f"ce-id {event.id!r}: the request holds {images} images, the response "
                f"{len(predictions[0])} counts",
            )
        self._add(*predictions)
        return "joined"

    def _check_counts(self, counts: list[int]) -> None:
        unknown = [c for c in counts if c not in self._position]
        if unknown:
            raise BadEvent(
                "malformed",
                f"predicted count {unknown[0]} is not one of the reference's classes "
                f"{self.reference.classes}",
            )

    def _wait(self, event_id: str, kind: str, content) -> None:
        self._pending[event_id] = (self.clock(), kind, content)
        while len(self._pending) > self.thresholds.max_pending:
            oldest, _ = self._pending.popitem(last=False)
            self.drop("pending_overflow", f"over {self.thresholds.max_pending} waiting: {oldest!r}")
        self.metrics.pending.set(len(self._pending))

    def expire(self) -> int:
        """Drop the events whose partner did not come within the timeout; return how many."""
        deadline, expired = self.clock() - self.thresholds.pending_timeout, 0
        while self._pending:
            event_id, (arrived, kind, _) = next(iter(self._pending.items()))
            if arrived > deadline:
                break
            del self._pending[event_id]
            self.drop(_orphan_reason(kind), f"ce-id {event_id!r}: no partner in time")
            expired += 1
        if expired:
            self.metrics.pending.set(len(self._pending))
        return expired

    def drop(self, reason: str, message: str) -> None:
        """Count a dropped event under ``reason``."""
        self.dropped[reason] += 1
        self.metrics.by_reason[reason].inc()
        log.debug("dropped (%s): %s", reason, message)

    # -- windows -----------------------------------------------------------------------------

    def _add(self, counts: list[int], confidence: list[float] | None) -> None:
        for i, count in enumerate(counts):
            window = self._window
            window.counts[self._position[count]] += 1
            window.predictions += 1
            if confidence is not None:
                window.confidence_sum += confidence[i]
                window.confidence_n += 1
            self.metrics.by_count[count].inc()
            if window.predictions >= self.thresholds.window:
                self._close()

    def _close(self) -> dict:
        window, self._window = self._window, self._new_window()
        live = np.asarray(window.counts, dtype=np.float64)
        statistic, p = chi_squared(self._shares, live)
        index = psi(self._shares, live)
        drifted = index > self.thresholds.psi_threshold or p < self.thresholds.p_value
        self.totals = [t + c for t, c in zip(self.totals, window.counts, strict=True)]
        self.alerts += drifted
        confidence = window.confidence_sum / window.confidence_n if window.confidence_n else None
        record = {
            "window": self.next_window,
            "started": window.started,
            "closed": _now(),
            "predictions": window.predictions,
            "counts": window.counts,
            "mean_confidence": None if confidence is None else round(confidence, 6),
            "psi": round(index, 6),
            "chi_squared": round(statistic, 6),
            "p_value": p,
            "drift": bool(drifted),
            "alerts": self.alerts,
            "totals": self.totals,
            "dropped": dict(self.dropped),
        }
        self.next_window += 1
        self.history.append(record)
        if self.window_log is not None:
            self.window_log.append(record)
        self._publish(record)
        if drifted:
            self._alert(record)
        return record

    def _publish(self, record: dict) -> None:
        m = self.metrics
        m.windows.inc()
        m.psi.set(record["psi"])
        m.p_value.set(record["p_value"])
        m.drift.set(1 if record["drift"] else 0)
        if record["mean_confidence"] is not None:
            m.confidence.set(record["mean_confidence"])
        if record["drift"]:
            m.alerts.inc()

    def _alert(self, record: dict) -> None:
        t = self.thresholds
        log.warning(
            "drift alert: window %d PSI %.3f (threshold %g), chi-squared p-value %.3g "
            "(threshold %g); predicted counts %s against reference shares %s; mean confidence "
            "%s (reference %.3f)",
            record["window"],
            record["psi"],
            t.psi_threshold,
            record["p_value"],
            t.p_value,
            dict(zip(self.reference.classes, record["counts"], strict=True)),
            [round(float(s), 3) for s in self._shares],
            record["mean_confidence"],
            self.reference.mean_confidence,
        )

    # -- restart -----------------------------------------------------------------------------

    def restore(self) -> int:
        """Read the last state back from the window log; return the windows restored.

        The counters continue from the last closed window (window number, alerts, predictions
        by count), and the report's history is refilled; the window open at the stop is lost.
        """
        if self.window_log is None:
            return 0
        records = self.window_log.tail(self.thresholds.history)
        if not records:
            return 0
        last = records[-1]
        self.history.extend(records)
        self.next_window, self.alerts = int(last["window"]) + 1, int(last["alerts"])
        self.totals = [int(t) for t in last["totals"]]
        for c, total in zip(self.reference.classes, self.totals, strict=True):
            self.metrics.by_count[c].inc(total)
        self.metrics.windows.inc(self.next_window)
        self.metrics.alerts.inc(self.alerts)
        self._publish_restored(last)
        log.info("restored %d windows; the next is window %d", len(records), self.next_window)
        return len(records)

    def _publish_restored(self, last: dict) -> None:
        m = self.metrics
        m.psi.set(last["psi"])
        m.p_value.set(last["p_value"])
        m.drift.set(1 if last["drift"] else 0)
        if last.get("mean_confidence") is not None:
            m.confidence.set(last["mean_confidence"])

    @property
    def pending(self) -> int:
        """Events waiting for their partner."""
        return len(self._pending)


def _orphan_reason(kind: str) -> str:
    if kind == payloads.REQUEST_TYPE:
        return "request_without_response"
    return "response_without_request"
