"""Ask a running predictor (local or on a cluster) to count the items in bin photos.

The one client of the predictor: ``invmon predict``, audit's remote scorer and deploy's smoke
requests all send their requests and read the answers through it. :class:`PredictorClient` speaks
KServe's V1 protocol or the Open Inference Protocol (V2, with the binary-data extension, so images
travel as raw bytes). Images are sent in requests of at most
``batch_size``; when the server refuses a request because of one bad image, the others of that
request are sent again one by one, so the bad one is reported and skipped and nothing else is lost.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_MODEL_NAME = "bin-counter"
PROTOCOLS = ("v1", "v2")


def post_json(
    url: str, body, timeout: float = 60.0, headers: dict | None = None
) -> tuple[int, dict]:
    """POST a JSON body; return (HTTP status, decoded JSON answer) for success and error alike."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text or b"{}")
        except json.JSONDecodeError:
            return err.code, {"error": text.decode(errors="replace")}


def v1_request(images: list[bytes]) -> dict:
    """A V1 predict body for encoded images."""
    return {"instances": [{"image": {"b64": base64.b64encode(b).decode()}} for b in images]}


def v2_request(images: list[bytes], request_id: str | None = None) -> dict:
    """A V2 (Open Inference Protocol) JSON body carrying encoded images as base64 BYTES."""
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(images)],
                "datatype": "BYTES",
                "data": [base64.b64encode(b).decode() for b in images],
            }
        ]
    }
    if request_id:
        body["id"] = request_id
    return body


@dataclass(frozen=True)
class Answer:
    """What the predictor said about one image."""

    count: int
    expected_count: float
    confidence: float
    probabilities: dict[int, float]


@dataclass
class PredictReport:
    """Per-image answers, and the images that were refused with the server's reason."""

    answers: dict[str, Answer] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


class PredictError(RuntimeError):
    """The server refused a request (``status`` is its HTTP status, 0 when unreachable)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class MalformedAnswer(PredictError):
    """The server accepted a request but its answer is not what the protocol promises."""


class PredictorClient:
    """A client of one model on a KServe predictor at ``url`` (``http://HOST:PORT``).

    V2 requests carry the images as raw bytes (the binary-data extension) unless ``binary`` is
    False, when they are base64 strings in a JSON body, as most V2 clients send them. Answers are
    read here, for both protocols, into :class:`Answer`s.
    """

    def __init__(
        self,
        url: str,
        name: str = DEFAULT_MODEL_NAME,
        protocol: str = "v2",
        host: str | None = None,
        timeout: float = 60.0,
        binary: bool = True,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--url must start with http:// or https://, got {url!r}")
        self.url, self.name, self.protocol = url.rstrip("/"), name, protocol
        self.headers = {"Host": host} if host else {}
        self.timeout = timeout
        self.binary = binary

    def predict(self, images: Sequence[bytes], request_id: str | None = None) -> list[Answer]:
        """One answer per image, in order; raises PredictError when the server refuses.

        A V2 ``request_id`` must come back in the answer (MalformedAnswer otherwise).
        """
        if self.protocol == "v1":
            return self._predict_v1(images)
        return self._predict_v2(images, request_id)

    def _post(self, path: str, body: bytes, headers: dict) -> tuple[bytes, dict]:
        request = urllib.request.Request(
            f"{self.url}{path}", data=body, headers={**self.headers, **headers}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as err:
            raise PredictError(err.code, _error_text(err.read())) from None
        except (urllib.error.URLError, OSError) as err:
            raise PredictError(0, f"cannot reach {self.url}: {err}") from None

    def _predict_v1(self, images: Sequence[bytes]) -> list[Answer]:
        body = json.dumps(v1_request(list(images))).encode()
        answer, _ = self._post(
            f"/v1/models/{self.name}:predict", body, {"Content-Type": "application/json"}
        )
        try:
            predictions = json.loads(answer)["predictions"]
            answers = [
                Answer(
                    count=int(p["count"]),
                    expected_count=float(p["expected_count"]),
                    confidence=float(p["confidence"]),
                    probabilities={int(c): float(v) for c, v in p["probabilities"].items()},
                )
                for p in predictions
            ]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self._malformed("V1", answer) from None
        return self._one_per_image(answers, len(images), "V1", answer)

    def _predict_v2(self, images: Sequence[bytes], request_id: str | None) -> list[Answer]:
        if self.binary:
            body, json_length = v2_binary_request(images, request_id)
            headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(json_length),
            }
        else:
            body = json.dumps(v2_request(list(images), request_id)).encode()
            headers = {"Content-Type": "application/json"}
        answer, answer_headers = self._post(f"/v2/models/{self.name}/infer", body, headers)
        try:
            answer_id, outputs = read_v2_answer(answer, answer_headers)
            if request_id is not None and answer_id != request_id:
                raise MalformedAnswer(
                    200, f"V2 answer from {self.url} does not carry the request id {request_id!r}"
                )
            answers = _v2_answers(outputs)
        except (KeyError, IndexError, TypeError, ValueError):
            raise self._malformed("V2", answer) from None
        return self._one_per_image(answers, len(images), "V2", answer)

    def _malformed(self, protocol: str, answer: bytes) -> MalformedAnswer:
        text = answer[:500].decode(errors="replace")
        return MalformedAnswer(200, f"{protocol} answer from {self.url} is malformed: {text}")

    def _one_per_image(self, answers: list, images: int, protocol: str, answer: bytes) -> list:
        if len(answers) != images:
            raise self._malformed(protocol, answer)
        return answers


def _v2_answers(outputs: dict[str, np.ndarray]) -> list[Answer]:
    """The answers in a V2 answer's outputs (``count``, ``expected_count``, ``probabilities``,
    ``classes``)."""
    classes = outputs["classes"].reshape(-1).tolist()
    counts = outputs["count"].reshape(-1)
    probabilities = outputs["probabilities"].reshape(len(counts), len(classes))
    return [
        Answer(
            count=int(counts[i]),
            expected_count=float(outputs["expected_count"].reshape(-1)[i]),
            confidence=float(probabilities[i].max()),
            probabilities={c: float(p) for c, p in zip(classes, probabilities[i], strict=True)},
        )
        for i in range(len(counts))
    ]


def v2_binary_request(images: Sequence[bytes], request_id: str | None = None) -> tuple[bytes, int]:
    """A V2 body with the binary-data extension: JSON header, then length-prefixed images.

    Outputs are asked for in binary too, which spares both sides a JSON float encoding.
    """
    raw = b"".join(struct.pack("<I", len(b)) + b for b in images)
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(images)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    if request_id:
        header["id"] = request_id
    encoded = json.dumps(header).encode()
    return encoded + raw, len(encoded)


_NUMPY = {"INT64": "<i8", "FP32": "<f4"}


def read_v2_answer(answer: bytes, headers: dict) -> tuple[str | None, dict[str, np.ndarray]]:
    """A V2 answer's id and outputs (JSON, optionally followed by binary output data) as arrays.

    ``headers`` are the answer's HTTP headers, with lowercase names.
    """
    json_length = int(headers.get("inference-header-content-length", len(answer)))
    header = json.loads(answer[:json_length])
    offset, outputs = json_length, {}
    for output in header["outputs"]:
        dtype = _NUMPY[output["datatype"]]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(answer[offset : offset + size], dtype=dtype)
            offset += size
        else:
            array = np.asarray(output["data"], dtype=dtype)
        outputs[output["name"]] = array.reshape(output["shape"])
    return header.get("id"), outputs


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body.decode(errors="replace")))
    except (json.JSONDecodeError, AttributeError):
        return body.decode(errors="replace")


def predict_all(
    client: PredictorClient, images: dict[str, bytes], batch_size: int = 16
) -> PredictReport:
    """Predict every image, ``batch_size`` per request; bad images are reported, not fatal.

    When the server refuses a request (HTTP 400), its images are sent one by one so that only the
    bad ones are lost. Other errors (server down, 5xx) are raised: retrying image by image would
    not help.
    """
    report = PredictReport()
    for names in _chunks(list(images), batch_size):
        try:
            answers = client.predict([images[n] for n in names])
        except PredictError as err:
            if err.status != 400:
                raise
            if len(names) == 1:
                report.failed[names[0]] = str(err)
                continue
            answers = None
        if answers is not None:
            report.answers.update(zip(names, answers, strict=True))
            continue
        for name in names:
            try:
                report.answers[name] = client.predict([images[name]])[0]
            except PredictError as err:
                if err.status != 400:
                    raise
                report.failed[name] = str(err)
    return report


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
