"""Monitor: the sink of KServe's payload logger, watching the predicted counts for drift.

``invmon monitor --reference MODEL_FOLDER_OR_URI`` serves :class:`invmon.serving.monitor_app.
MonitorApp` until interrupted: the predictor's InferenceService sends it every request and
response (``invmon deploy --monitor URL``), it compares each window of predicted counts with the
reference evaluate stored with the model, and it publishes the result on ``/metrics`` and
``/report`` (docs/monitoring.md). It runs in the serving image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from invmon.core.command import Command
from invmon.core.settings import Settings, setting, share
from invmon.data.s3 import S3Options, is_s3_uri
from invmon.serving.drift import REFERENCE_FILE, Reference, read_reference_text
from invmon.serving.monitor import Monitor, Thresholds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorSettings(Settings):
    """Settings of monitor: the reference, the windows, the alert thresholds and the log."""

    reference: str = setting(
        help="reference.json written by evaluate, or the model folder holding it (a path or an "
        "s3:// URI)"
    )
    port: int = setting(8080, help="HTTP port", minimum=1, maximum=65535)
    host: str = setting("0.0.0.0", help="address to listen on")
    window: int = setting(500, help="predictions per window", minimum=10)
    psi_threshold: float = setting(
        0.2, help="alert when a window's PSI against the reference is above this", above=0
    )
    p_value: float = share(
        0.001,
        help="alert when a window's chi-squared p-value against the reference is below this",
        zero=False,
    )
    window_log: str = setting(
        "",
        help="folder or s3:// prefix the closed windows are appended to as JSON lines, and read "
        "back from on start (empty: no log, a restart starts afresh)",
        metavar="FOLDER_OR_URI",
    )
    history: int = setting(200, help="closed windows kept in memory for /report", minimum=1)
    max_pending: int = setting(
        10_000, help="most events waiting for their request or response", minimum=1
    )
    pending_timeout: float = setting(
        30.0, help="seconds an event waits for its request or response", above=0
    )
    s3: S3Options = setting(default_factory=S3Options, group="S3 (reference, window log)")

    def thresholds(self) -> Thresholds:
        """The monitor's window and alert settings."""
        return Thresholds(
            window=self.window,
            psi_threshold=self.psi_threshold,
            p_value=self.p_value,
            history=self.history,
            max_pending=self.max_pending,
            pending_timeout=self.pending_timeout,
        )


def load_reference(location: str, s3: S3Options | None = None) -> Reference:
    """The reference at ``location``: a reference.json, or a model folder (local or s3://)."""
    from pathlib import Path

    from invmon.serving.window_log import read_text

    if not location.endswith(".json") and (is_s3_uri(location) or Path(location).is_dir()):
        location = location.rstrip("/") + "/" + REFERENCE_FILE
    try:
        text = read_text(location, s3)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no reference at {location!r}: run invmon evaluate on the model first (it writes "
            f"{REFERENCE_FILE} into the model folder)"
        ) from None
    return read_reference_text(text, location)


def build_monitor(settings: MonitorSettings) -> Monitor:
    """The monitor of ``settings``, its state read back from the window log."""
    from invmon.serving.window_log import WindowLog

    reference = load_reference(settings.reference, settings.s3)
    log_ = WindowLog(settings.window_log, settings.s3) if settings.window_log else None
    monitor = Monitor(reference, settings.thresholds(), log_)
    monitor.restore()
    return monitor


def run(settings: MonitorSettings) -> None:
    """Serve the monitor on ``settings.port`` until interrupted."""
    import uvicorn

    from invmon.serving.monitor_app import MonitorApp

    monitor = build_monitor(settings)
    log.info(
        "monitoring against %s (%d images); windows of %d predictions",
        settings.reference,
        monitor.reference.images,
        settings.window,
    )
    uvicorn.run(
        MonitorApp(monitor),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


MONITOR = Command(
    MonitorSettings,
    run,
    description="Take KServe's payload-logger CloudEvents, compare the predicted-count "
    "distribution with the model's reference (chi-squared and PSI) per window, alert on drift, "
    "and serve /metrics and /report until interrupted.",
)
