"""A small progress reporter for long work: count, rate and ETA, on stderr.

On a terminal it redraws one line; elsewhere (pipeline logs, CI) it prints a line every few
seconds so that logs stay readable.
"""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Report progress of ``total`` units of work (``total`` may be unknown: None)."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "items",
        stream=None,
        interval: float | None = None,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._closed = False

    def advance(self, n: int = 1) -> None:
        """Record ``n`` more units done and redraw when it is time."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done}"
        total = max(self.total, self.done) if self.total else None  # totals may be estimates
        if total:
            text += f"/{total} {self.unit} ({100 * self.done / total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f" {rate:.1f} {self.unit}/s"
        if total and not final and rate > 0:
            text += f" ETA {_duration((total - self.done) / rate)}"
        elif final:
            text += f" in {_duration(elapsed)}"
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + text + end)
        self.stream.flush()

    def close(self) -> None:
        """Print the final line (once)."""
        if not self._closed:
            self._closed = True
            self._draw(time.monotonic(), final=True)
