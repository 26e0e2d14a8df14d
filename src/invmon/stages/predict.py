"""Predict: send bin photos to a running predictor and print the count of each.

The predictor is ``invmon serve`` or a KServe InferenceService; requests go through
:class:`invmon.serving.client.PredictorClient` (V2 with raw image bytes by default, or V1). An
image the server refuses is named and skipped; the others are still counted, and the command
then exits 1. Neither PyTorch nor KServe is imported here.
"""

from __future__ import annotations

import json as json_text
from dataclasses import dataclass
from pathlib import Path

from invmon.core.command import Command, Incomplete
from invmon.core.settings import Settings, setting
from invmon.serving.client import DEFAULT_MODEL_NAME, PROTOCOLS, PredictReport


@dataclass(frozen=True)
class PredictSettings(Settings):
    """Settings of predict."""

    images: tuple[str, ...] = setting(
        help="JPEG or PNG bin photos", positional=True, metavar="IMAGE"
    )
    url: str = setting(help="predictor base URL, e.g. http://localhost:8080")
    protocol: str = setting(
        "v2", choices=PROTOCOLS, help="V1 (base64 JSON) or V2 (raw image bytes)"
    )
    name: str = setting(DEFAULT_MODEL_NAME, help="model name")
    host: str | None = setting(
        None, help="Host header (to reach a service through an ingress gateway)"
    )
    batch_size: int = setting(16, help="images per request", minimum=1)
    json: bool = setting(False, help="print all answers as JSON")


def run(settings: PredictSettings) -> PredictReport:
    """Count the items in ``settings.images``; refused images are reported, not fatal."""
    from invmon.serving.client import PredictorClient, predict_all

    images = {}
    for path in settings.images:
        try:
            images[path] = Path(path).read_bytes()
        except OSError as err:
            raise FileNotFoundError(f"cannot read image {path!r}: {err.strerror}") from None
    client = PredictorClient(settings.url, settings.name, settings.protocol, host=settings.host)
    return predict_all(client, images, settings.batch_size)


def show(report: PredictReport, settings: PredictSettings) -> str:
    """One line per answered image (or all answers as JSON); refused images make it Incomplete."""
    if settings.json:
        answers = {k: vars(v) for k, v in report.answers.items()}
        text = json_text.dumps({"answers": answers, "failed": report.failed}, indent=2, default=str)
        refused = ()
    else:
        lines = [
            f"{path}\tcount {a.count}\tconfidence {a.confidence:.3f}\t"
            f"expected {a.expected_count:.2f}"
            for path in settings.images
            if (a := report.answers.get(path)) is not None
        ]
        text = "\n".join(lines)
        refused = tuple(f"{path}\trefused: {report.failed[path]}" for path in report.failed)
    if report.failed:
        total = len(report.answers) + len(report.failed)
        message = f"{len(report.failed)} of {total} images were refused"
        raise Incomplete(message, output=text, details=refused)
    return text


PREDICT = Command(
    PredictSettings,
    run,
    description="Send images to a running predictor (invmon serve, or a KServe "
    "InferenceService) and print the count per image.",
    show=show,
)
