"""What KServe's payload logger sends: CloudEvents carrying the predictor's request and response.

The logger (kserve/kserve ``pkg/logger``) sends one binary-mode CloudEvent 1.0 per request and one
per response: headers ``ce-id`` (the request's id, shared by both), ``ce-type``
(:data:`REQUEST_TYPE` or :data:`RESPONSE_TYPE`), ``ce-source``, ``ce-specversion``, ``ce-time``
and the extensions ``ce-inferenceservicename``, ``ce-namespace``, ``ce-component``,
``ce-endpoint`` and ``ce-metadata``; the body is the predictor's own request or response body
with its ``Content-Type``. A response is logged only when the predictor answered 200.

:func:`read_event` reads one with the ``cloudevents`` SDK; :func:`request_images` and
:func:`response_predictions` read the bodies of :mod:`invmon.serving.predictor`'s V1 and V2
protocols. Every problem is a :class:`BadEvent` whose ``reason`` is what the monitor counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
# Why an event is dropped: the label values of the monitor's dropped-events metric.
DROP_REASONS = (
    "not_cloudevent",  # no or invalid ce-* headers
    "no_body",
    "not_json",
    "unknown_type",  # a ce-type other than the logger's request and response
    "malformed",  # JSON, but not a V1 or V2 body of the predictor (or counts it does not know)
    "response_without_request",  # no request with its ce-id came within the timeout
    "request_without_response",  # no response with its ce-id came within the timeout
    "pending_overflow",  # more events waiting for their partner than the cap allows
)


class BadEvent(ValueError):
    """An event the monitor drops, with the reason it is counted under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """The parts of a logged CloudEvent the monitor uses."""

    id: str
    type: str
    body: bytes
    service: str = ""


_READ = frozenset(
    ("ce-specversion", "ce-id", "ce-type", "ce-source", "ce-inferenceservicename", "content-type")
)


def _keep_bytes(data):
    return data


def read_event(headers: dict[str, str], body: bytes) -> Event:
    """Read a binary-mode CloudEvent; raise :class:`BadEvent` naming what is wrong."""
    from cloudevents import exceptions
    from cloudevents.http import from_http

    # Only the attributes the monitor reads: the SDK sets each header it is given one by one,
    # the largest cost per event. By lowercase name: the logger's Go SDK writes Ce-Id.
    wanted = {}
    for key, value in headers.items():
        key = key.lower()
        if key in _READ:
            wanted[key] = value
    try:
        event = from_http(wanted, body, data_unmarshaller=_keep_bytes)
    except exceptions.GenericException as err:
        raise BadEvent("not_cloudevent", f"not a binary-mode CloudEvent: {err}") from None
    kind = event["type"]
    if kind not in (REQUEST_TYPE, RESPONSE_TYPE):
        raise BadEvent(
            "unknown_type",
            f"ce-type {kind!r} is neither {REQUEST_TYPE!r} nor {RESPONSE_TYPE!r}",
        )
    if not body:
        raise BadEvent("no_body", f"{kind} event {event['id']!r} has no body")
    return Event(event["id"], kind, body, event.get("inferenceservicename") or "")


def _json_header(body: bytes) -> dict:
    """The JSON object a body starts with: all of it, or the header of a V2 body with the
    binary-data extension (JSON, then raw tensor bytes)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            # latin-1 maps each byte to one character, so any binary tail decodes.
            data, _end = json.JSONDecoder().raw_decode(body.decode("latin-1"))
        except json.JSONDecodeError as err:
            raise BadEvent("not_json", f"the body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise BadEvent("malformed", f"the body is JSON {type(data).__name__}, not an object")
    return data


def request_images(body: bytes) -> int:
    """How many images a V1 (``instances``) or V2 (``inputs``) request body carries."""
    data = _json_header(body)
    instances = data.get("instances")
    if isinstance(instances, list):
        return len(instances)
    inputs = data.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        shape = inputs[0].get("shape")
        if isinstance(shape, list) and shape and isinstance(shape[0], int):
            return shape[0]
    raise BadEvent("malformed", 'the request has neither "instances" (V1) nor "inputs" (V2)')


def response_predictions(body: bytes) -> tuple[list[int], list[float] | None]:
    """The predicted counts of a V1 or V2 response, and each image's confidence (its top class
    probability; None when a V2 request asked only for other outputs)."""
    data = _json_header(body)
    if isinstance(data.get("predictions"), list):
        return _v1(data["predictions"])
    if isinstance(data.get("outputs"), list):
        return _v2(data["outputs"])
    raise BadEvent("malformed", 'the response has neither "predictions" (V1) nor "outputs" (V2)')


def _v1(predictions: list) -> tuple[list[int], list[float]]:
    try:
        counts = [int(p["count"]) for p in predictions]
        confidence = [float(p["confidence"]) for p in predictions]
    except (KeyError, TypeError, ValueError):
        raise BadEvent(
            "malformed", 'V1 predictions must each hold "count" and "confidence"'
        ) from None
    return counts, confidence


def _v2(outputs: list) -> tuple[list[int], list[float] | None]:
    named = {o.get("name"): o for o in outputs if isinstance(o, dict)}
    count = named.get("count")
    if count is None or not isinstance(count.get("data"), list):
        raise BadEvent("malformed", 'the V2 response has no "count" output with JSON data')
    try:
        counts = [int(c) for c in count["data"]]
    except (TypeError, ValueError):
        raise BadEvent("malformed", 'the V2 "count" output holds non-integers') from None
    probabilities = named.get("probabilities")
    if probabilities is None:
        return counts, None
    return counts, _top_probabilities(probabilities, len(counts))


def _top_probabilities(output: dict, images: int) -> list[float]:
    data, shape = output.get("data"), output.get("shape")
    if not isinstance(data, list) or not isinstance(shape, list) or len(shape) != 2:
        raise BadEvent("malformed", 'the V2 "probabilities" output is not an [N, C] JSON tensor')
    width = shape[1]
    if shape[0] != images or not isinstance(width, int) or width < 1 or len(data) != images * width:
        raise BadEvent(
            "malformed",
            f'the V2 "probabilities" output (shape {shape}, {len(data)} values) does not match '
            f"{images} counts",
        )
    try:
        return [float(max(data[i * width : (i + 1) * width])) for i in range(images)]
    except (TypeError, ValueError):
        raise BadEvent("malformed", 'the V2 "probabilities" output holds non-numbers') from None
