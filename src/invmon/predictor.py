"""The KServe predictor: a ``kserve.Model`` that counts the items in bin photos.

Requests it answers (NAME is the model name, ``bin-counter`` by default):

- V1 ``POST /v1/models/NAME:predict`` with ``{"instances": [{"image": {"b64": "..."}}, ...]}``;
- V2 ``POST /v2/models/NAME/infer`` with a BYTES input of encoded images (base64 strings in JSON,
  or raw bytes with the binary-data extension), or an FP32 input of already-preprocessed
  (N, 3, S, S) tensors.

For each image it returns the predicted count, the class probabilities and the expected count.
The images of one request run as one batch. Malformed requests raise ``InvalidInput`` (HTTP 400)
with a message naming the problem; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from dataclasses import dataclass

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from invmon.inference import Counter, Predictions
from invmon.transforms import DEFAULT_MAX_PIXELS, InvalidImage, prepare

DEFAULT_MODEL_NAME = "bin-counter"
DEFAULT_MAX_IMAGES = 64
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may contain."""

    max_images: int = DEFAULT_MAX_IMAGES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class _Batch:
    """A request turned into model input, remembering how to answer it."""

    protocol: str  # "v1" or "v2"
    request_id: str | None
    images: torch.Tensor | None = None  # uint8 (N, 3, S, S)
    tensors: torch.Tensor | None = None  # float (N, 3, S, S), already normalised


class BinCounterModel(Model):
    """Counts items in bin images with a model folder written by ``invmon train``."""

    def __init__(
        self,
        name: str,
        model_dir: str,
        device: str = "auto",
        limits: Limits | None = None,
    ):
        super().__init__(name)
        self.model_dir, self.device = model_dir, device
        self.limits = limits or Limits()
        self.counter: Counter | None = None
        self.ready = False

    def load(self) -> bool:
        """Load the model folder; the server reports ready only after this succeeds."""
        self.counter = Counter.from_model_dir(self.model_dir, device=self.device)
        self.ready = True
        return self.ready

    # -- request parsing ---------------------------------------------------------------------

    async def preprocess(self, payload, headers=None) -> _Batch:
        """Decode and resize the request's images (or check its tensor) into one batch."""
        if isinstance(payload, InferRequest):
            return self._parse_v2(payload)
        if isinstance(payload, dict):
            return self._parse_v1(payload)
        raise InvalidInput(f"unsupported request body of type {type(payload).__name__}")

    def _check_count(self, n: int) -> None:
        if n == 0:
            raise InvalidInput("the request holds no images")
        if n > self.limits.max_images:
            raise InvalidInput(
                f"the request holds {n} images; at most {self.limits.max_images} are allowed"
            )

    def _decode(self, encoded: list[bytes]) -> torch.Tensor:
        arrays = []
        for position, data in enumerate(encoded):
            if len(data) > self.limits.max_image_bytes:
                raise InvalidInput(
                    f"image {position} is {len(data)} bytes, over the limit of "
                    f"{self.limits.max_image_bytes}"
                )
            try:
                arrays.append(prepare(data, self.counter.image_size, self.limits.max_pixels))
            except InvalidImage as err:
                raise InvalidInput(f"image {position}: {err}") from None
        return torch.from_numpy(np.stack(arrays))

    def _parse_v1(self, payload: dict) -> _Batch:
        instances = payload.get("instances")
        if not isinstance(instances, list):
            raise InvalidInput('expected {"instances": [{"image": {"b64": "..."}}, ...]}')
        self._check_count(len(instances))
        encoded = []
        for position, instance in enumerate(instances):
            image = instance.get("image") if isinstance(instance, dict) else None
            b64 = image.get("b64") if isinstance(image, dict) else None
            if not isinstance(b64, str):
                raise InvalidInput(f'instance {position}: expected {{"image": {{"b64": "..."}}}}')
            encoded.append(_b64decode(b64, f"instance {position}"))
        return _Batch("v1", None, images=self._decode(encoded))

    def _parse_v2(self, request: InferRequest) -> _Batch:
        if len(request.inputs) != 1:
            raise InvalidInput(
                "expected exactly one input (BYTES images or FP32 tensors), "
                f"got {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        if tensor.datatype == "BYTES":
            encoded = _bytes_elements(tensor)
            self._check_count(len(encoded))
            return _Batch("v2", request.id, images=self._decode(encoded))
        if tensor.datatype == "FP32":
            return _Batch("v2", request.id, tensors=self._check_tensor(tensor))
        raise InvalidInput(
            f"input {tensor.name!r} has datatype {tensor.datatype}; allowed: BYTES (encoded "
            "images) or FP32 (preprocessed tensors)"
        )

    def _check_tensor(self, tensor) -> torch.Tensor:
        size = self.counter.image_size
        expected = f"[N, 3, {size}, {size}]"
        shape = list(tensor.shape)
        if len(shape) != 4 or shape[1:] != [3, size, size]:
            raise InvalidInput(f"input {tensor.name!r} has shape {shape}; expected {expected}")
        self._check_count(shape[0])
        try:
            array = tensor.as_numpy().astype(np.float32, copy=False)
        except (ValueError, TypeError) as err:
            raise InvalidInput(
                f"input {tensor.name!r} does not match its shape {shape}: {err}"
            ) from None
        if not np.isfinite(array).all():
            raise InvalidInput(f"input {tensor.name!r} holds NaN or infinite values")
        return torch.from_numpy(np.ascontiguousarray(array))

    # -- inference ---------------------------------------------------------------------------

    async def predict(self, batch: _Batch, headers=None) -> tuple[_Batch, Predictions]:
        """Run the batch through the model off the event loop, so health checks stay answered."""
        if batch.images is not None:
            result = await asyncio.to_thread(self.counter.predict_uint8, batch.images)
        else:
            logits = await asyncio.to_thread(self.counter.predict_logits, batch.tensors)
            result = self.counter.predictions(logits)
        return batch, result

    async def postprocess(self, result, headers=None, response_headers=None):
        """Answer in the protocol the request came in."""
        batch, predictions = result
        if batch.protocol == "v1":
            return {"predictions": v1_predictions(predictions, self.counter.config.classes)}
        return v2_response(self.name, batch.request_id, predictions)


def v1_predictions(predictions: Predictions, classes) -> list[dict]:
    """One dict per image: count, expected count, confidence and probability per class."""
    return [
        {
            "count": int(predictions.counts[i]),
            "expected_count": round(float(predictions.expected[i]), 4),
            "confidence": round(float(predictions.confidence[i]), 4),
            "probabilities": {
                str(c): round(float(p), 6)
                for c, p in zip(classes, predictions.probabilities[i], strict=True)
            },
        }
        for i in range(len(predictions.counts))
    ]


def v2_response(name: str, request_id: str | None, predictions: Predictions) -> InferResponse:
    """V2 outputs: count (INT64 [N]), expected_count (FP32 [N]), probabilities (FP32 [N, C])."""
    outputs = []
    for output_name, datatype, array in (
        ("count", "INT64", predictions.counts.astype(np.int64)),
        ("expected_count", "FP32", predictions.expected.astype(np.float32)),
        ("probabilities", "FP32", predictions.probabilities.astype(np.float32)),
    ):
        output = InferOutput(name=output_name, shape=list(array.shape), datatype=datatype)
        output.set_data_from_numpy(array, binary_data=False)
        outputs.append(output)
    return InferResponse(
        response_id=request_id or str(uuid.uuid4()), model_name=name, infer_outputs=outputs
    )


def _b64decode(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: invalid base64 data") from None


def _bytes_elements(tensor) -> list[bytes]:
    """The elements of a BYTES input: raw bytes (binary extension) or base64 strings (JSON)."""
    if tensor._raw_data is not None:
        try:
            return [bytes(e) for e in tensor.as_numpy().reshape(-1)]
        except (ValueError, IndexError) as err:
            raise InvalidInput(
                f"input {tensor.name!r}: malformed binary BYTES data: {err}"
            ) from None
    data = tensor.data
    if not isinstance(data, list):
        raise InvalidInput(f"input {tensor.name!r}: BYTES data must be a list")
    flat = list(_flatten(data))
    if any(not isinstance(e, (str, bytes)) for e in flat):
        raise InvalidInput(f"input {tensor.name!r}: BYTES elements must be base64 strings")
    return [
        e if isinstance(e, bytes) else _b64decode(e, f"input {tensor.name!r} element {i}")
        for i, e in enumerate(flat)
    ]


def _flatten(items):
    for item in items:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item
