"""The CloudEvents KServe's payload logger sends, built as its agent builds them.

kserve/kserve ``pkg/logger/worker.go``: one binary-mode CloudEvent 1.0 per request and one per
response, sharing ``Ce-Id``; the Go SDK writes the attributes as canonical ``Ce-*`` headers, the
extensions ``inferenceservicename``, ``namespace``, ``component``, ``endpoint`` and ``metadata``
(JSON), and the predictor's body with its own ``Content-Type``.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timezone

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"


def headers(
    event_id: str,
    kind: str,
    content_type: str = "application/json",
    service: str = "bin-counter",
) -> dict[str, str]:
    """The headers of one logged event of ``kind`` (REQUEST or RESPONSE)."""
    return {
        "Ce-Id": event_id,
        "Ce-Type": kind,
        "Ce-Source": f"http://localhost:9081/{service}-predictor-7d9f-abcde",
        "Ce-Specversion": "1.0",
        "Ce-Time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "Ce-Inferenceservicename": service,
        "Ce-Namespace": "team",
        "Ce-Component": "predictor",
        "Ce-Endpoint": "default",
        "Ce-Metadata": json.dumps({}),
        "Content-Type": content_type,
    }


def post(url: str, event_headers: dict[str, str], body: bytes, timeout: float = 30) -> str:
    """POST one event to ``url``; return the monitor's one-word answer."""
    request = urllib.request.Request(url, data=body, headers=event_headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode().strip()


def v1_response(counts: list[int], confidence: float = 0.9) -> bytes:
    """A V1 response body as the predictor writes it (count, confidence, ...)."""
    predictions = [
        {"count": c, "expected_count": float(c), "confidence": confidence, "probabilities": {}}
        for c in counts
    ]
    return json.dumps({"predictions": predictions}).encode()


def v1_request(images: int) -> bytes:
    """A V1 request body with ``images`` (tiny, not real) base64 images."""
    return json.dumps({"instances": [{"image": {"b64": "AAAA"}}] * images}).encode()
