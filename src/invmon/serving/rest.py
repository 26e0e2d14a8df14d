"""The HTTP edge of the predictor: strict Open Inference Protocol decoding, and 400s, never 500s.

KServe 0.21's REST server needs three corrections for a predictor that takes images:

- Binary-data extension (what Triton's clients send): KServe turns every BYTES element of the
  binary part into a UTF-8 string, so JPEG bytes fail with HTTP 500. :class:`StrictDataPlane`
  decodes the request itself and keeps BYTES elements as the raw bytes they are.
- A V2 body without ``Inference-Header-Content-Length`` is refused by KServe when the client does
  not send ``Content-Type: application/json`` (Triton's HTTP client does not); by the extension's
  definition such a body is all JSON, and is read as such.
- A V1 body is read as JSON only when it declares a JSON content type; curl's ``-d`` declares
  ``application/x-www-form-urlencoded``, so the README's own example was refused. Like Triton and
  TorchServe, :class:`StrictDataPlane` reads any V1 body as JSON, whatever its declared type, and
  answers 400 naming the declared type when it is not JSON.
- Malformed requests must name their problem with HTTP 400: a missing field in the binary header
  is a ``KeyError`` (HTTP 500) in KServe, and FastAPI answers schema errors with 422. Every check
  here raises ``InvalidInput`` instead, and :func:`install_error_handlers` maps FastAPI's request
  validation errors to 400.

:class:`BodySizeLimit` refuses request bodies above a byte limit (HTTP 413) before they are read
into memory, so one huge request cannot exhaust the server.
"""

from __future__ import annotations

import math
import struct

import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, PredictorProtocol
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import JSON_HEADERS, DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

DATATYPE_SIZES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
    "BYTES": None,  # variable: each element is a 4-byte little-endian length, then the bytes
}


class StrictDataPlane(DataPlane):
    """KServe's data plane with a strict decoder for V2 requests that arrive as raw bytes, and
    V1 bodies read as JSON whatever content type they declare."""

    def decode(self, body, headers, protocol_version=PredictorProtocol.REST_V1.value, **kwargs):
        """Decode a request; a V1 body declared as another type than JSON is read as JSON."""
        declared = (headers or {}).get("content-type")
        other = declared is not None and declared.split(";")[0].strip() not in JSON_HEADERS
        v1 = protocol_version.lower() == PredictorProtocol.REST_V1.value.lower()
        if v1 and isinstance(body, bytes) and other and not _cloudevent(headers):
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError as err:
                raise InvalidInput(
                    f"the request body is not JSON (declared Content-Type {declared!r}): {err}"
                ) from None
        return super().decode(body, headers, protocol_version, **kwargs)

    def decode_inference_request(self, body, headers, model_name):
        """Decode a V2 request; raw bytes are read per the binary-data extension."""
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        header = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
        return decode_v2_bytes(body, _json_length(header, len(body)), model_name)


def _cloudevent(headers: dict) -> bool:
    # KServe reads a binary CloudEvent from ce-* headers; its data keeps its own content type.
    return any(key.lower().startswith("ce-") for key in headers)


def _json_length(header: str | None, body_length: int) -> int:
    if header is None:
        return body_length
    try:
        length = int(header)
    except ValueError:
        raise InvalidInput(
            f"{INFERENCE_CONTENT_LENGTH_HEADER} must be an integer, got {header!r}"
        ) from None
    if not 0 < length <= body_length:
        raise InvalidInput(
            f"{INFERENCE_CONTENT_LENGTH_HEADER} is {length}, but the body holds {body_length} bytes"
        )
    return length


def decode_v2_bytes(body: bytes, json_length: int, model_name: str) -> InferRequest:
    """Build an InferRequest from a V2 body: a JSON header, then the binary data it describes."""
    try:
        header = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"the request is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"the request must be a JSON object, got {type(header).__name__}")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('the request has no inputs (expected "inputs": [{...}])')
    binary, offset, infer_inputs = body[json_length:], 0, []
    for position, spec in enumerate(inputs):
        infer_input, offset = _decode_input(spec, position, binary, offset)
        infer_inputs.append(infer_input)
    if offset != len(binary):
        raise InvalidInput(
            f"the inputs describe {offset} bytes of binary data, but {len(binary)} follow the JSON"
        )
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"the request id must be a string, got {request_id!r}")
    parameters = header.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput("the request parameters must be a JSON object")
    return InferRequest(
        model_name=model_name,
        infer_inputs=infer_inputs,
        request_id=request_id,
        parameters=parameters,
        request_outputs=_requested_outputs(header.get("outputs")),
    )


def _decode_input(spec, position: int, binary: bytes, offset: int) -> tuple[InferInput, int]:
    if not isinstance(spec, dict):
        raise InvalidInput(f"input {position} must be a JSON object")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str):
        raise InvalidInput(f"input {position} has no name")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input {name!r} needs a shape: a list of non-negative integers")
    if datatype not in DATATYPE_SIZES:
        raise InvalidInput(
            f"input {name!r} has datatype {datatype!r}; allowed: {', '.join(DATATYPE_SIZES)}"
        )
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"input {name!r}: parameters must be a JSON object")
    infer_input = InferInput(name=name, shape=shape, datatype=datatype, parameters=parameters)
    if "data" in spec:
        infer_input.data = spec["data"]
        return infer_input, offset
    size = parameters.get("binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"input {name!r} has neither data nor a binary_data_size")
    if offset + size > len(binary):
        raise InvalidInput(
            f"input {name!r} announces {size} bytes of binary data, only "
            f"{len(binary) - offset} remain"
        )
    raw = binary[offset : offset + size]
    _check_raw_size(name, shape, datatype, raw)
    # Kept as raw bytes: BYTES elements are images, not text (see the module docstring).
    infer_input._raw_data = raw
    return infer_input, offset + size


def _check_raw_size(name: str, shape: list[int], datatype: str, raw: bytes) -> None:
    element = DATATYPE_SIZES[datatype]
    if element is None:
        elements = split_bytes_elements(raw, name, copy=False)
        if len(elements) != math.prod(shape):
            raise InvalidInput(
                f"input {name!r} holds {len(elements)} BYTES elements, its shape {shape} "
                f"says {math.prod(shape)}"
            )
    elif len(raw) != math.prod(shape) * element:
        raise InvalidInput(
            f"input {name!r} has {len(raw)} bytes of {datatype} data; shape {shape} needs "
            f"{math.prod(shape) * element}"
        )


def split_bytes_elements(raw: bytes, name: str = "input", copy: bool = True) -> list:
    """Split binary BYTES tensor data (4-byte little-endian length, then the bytes, repeated).

    With ``copy=False`` the elements are memoryviews into ``raw`` (enough to count or measure
    them without copying every image)."""
    elements, offset, view = [], 0, memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(
                f"input {name!r}: a BYTES element announces {length} bytes, only "
                f"{len(raw) - offset} remain"
            )
        element = view[offset : offset + length]
        elements.append(bytes(element) if copy else element)
        offset += length
    return elements


def _requested_outputs(outputs) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InvalidInput('"outputs" must be a list of {"name": ...} objects')
    return [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in outputs]


def install_error_handlers(app) -> None:
    """Answer FastAPI's request-validation errors with HTTP 400 and the first problem named."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    async def validation_error(_request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        message = f"invalid request: {where}: {first.get('msg', 'malformed body')}"
        return JSONResponse(status_code=400, content={"error": message})

    app.add_exception_handler(RequestValidationError, validation_error)


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with HTTP 413.

    The body of a refused request is read and dropped chunk by chunk (never held in memory), so
    the client, still sending, gets the 413 instead of a reset connection.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _discard_body(receive)
            return await self._refuse(send, int(declared))
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body"):
                        await _discard_body(receive)
                    raise _TooLarge(received)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge as err:
            await self._refuse(send, err.size)

    async def _refuse(self, send, size: int) -> None:
        body = orjson.dumps(
            {"error": f"request body of {size} bytes is over the limit of {self.max_bytes}"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _discard_body(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


class _TooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size
