"""The KServe predictor: a ``kserve.Model`` that counts the items in bin photos.

Requests it answers (NAME is the model name, ``bin-counter`` by default):

- V1 ``POST /v1/models/NAME:predict`` with ``{"instances": [{"image": {"b64": "..."}}, ...]}``;
- V2 ``POST /v2/models/NAME/infer`` with a BYTES input of encoded images (base64 strings in JSON,
  or raw bytes with the binary-data extension), or an FP32 input of already-preprocessed
  (N, 3, S, S) tensors.

For each image it returns the predicted count, the class probabilities and the expected count.
The images of one request run as one batch, and the requests of concurrent clients are grouped
into larger batches while the model is busy (:mod:`invmon.serving.batching`). Images are decoded on
a
pool of threads (Pillow releases the GIL while decoding), off the event loop. Malformed requests
raise ``InvalidInput`` (HTTP 400) with a message naming the problem; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from invmon.data.transforms import InvalidImage, prepare
from invmon.serving.batching import ContinuousBatcher
from invmon.serving.counter import Counter, Predictions
from invmon.serving.options import Limits, ServingOptions, largest_batch
from invmon.serving.rest import split_bytes_elements

log = logging.getLogger(__name__)


@dataclass
class _Request:
    """A request turned into model input, remembering how to answer it."""

    protocol: str  # "v1" or "v2"
    inputs: torch.Tensor  # uint8 images or float (already normalised) tensors, (N, 3, S, S)
    request: InferRequest | None = None


class BinCounterModel(Model):
    """Counts items in bin images with a model folder written by ``invmon train``."""

    def __init__(
        self,
        name: str,
        model_dir: str,
        limits: Limits | None = None,
        options: ServingOptions | None = None,
    ):
        super().__init__(name)
        self.model_dir = model_dir
        self.limits = limits or Limits()
        self.options = options or ServingOptions()
        self.counter: Counter | None = None
        self.batcher: ContinuousBatcher | None = None
        self._decoder: ThreadPoolExecutor | None = None
        self.upgrader: threading.Thread | None = None
        self.ready = False

    def load(self) -> bool:
        """Load the model folder and warm it up; the server reports ready only after this.

        Staged (``--load staged``, the default), the model is ready once its float model runs
        eagerly and has answered one warm-up image: seconds. The int8 or compiled engine it ends
        on is built on a background thread (:attr:`upgrader`) and swapped in once warm
        (:meth:`Counter.staged`); until then answers come from the eager model, with the same
        counts. ``--load blocking`` builds and warms the final engine before ready. Either way a
        compiled graph is ready for every batch the batcher can form before it serves
        (:attr:`largest_batch`), and never compiles in the request path.
        """
        options = self.options
        how = {
            "device": options.device,
            "precision": options.precision,
            "graph": options.graph,
            "largest_batch": self.largest_batch,
            "use_prebuilt": options.prebuilt == "auto",
        }
        upgrade = None
        if options.load == "staged":
            self.counter, upgrade = Counter.staged(self.model_dir, **how)
            self.counter.warm_up((1,))
        else:
            self.counter = Counter.from_model_dir(self.model_dir, **how)
            self.counter.warm_up((1, 2, 8))
        log.info(
            "model %r loaded: %s (%s graph) on %s%s",
            self.name,
            self.counter.precision,
            self.counter.engine.graph,
            self.counter.device,
            "; upgrading in the background" if upgrade else "",
        )
        threads = self.options.decode_threads or os.cpu_count() or 1
        self._decoder = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self.batcher = ContinuousBatcher(
            self.counter.predict_many, size=len, max_batch_images=self.options.max_batch_images
        )
        self.ready = True
        if upgrade is not None:
            self.upgrader = threading.Thread(
                target=self._upgrade, args=(upgrade,), name="upgrade", daemon=True
            )
            self.upgrader.start()
        return self.ready

    @property
    def largest_batch(self) -> int:
        """The most images the batcher puts in one batch (:func:`~.options.largest_batch`)."""
        return largest_batch(self.options, self.limits)

    def _upgrade(self, upgrade) -> None:
        start = time.perf_counter()
        try:
            upgrade()
        except Exception as err:  # the current engine keeps serving: slower, never wrong
            log.exception(
                "model %r: upgrade failed, still serving %s (%s graph): %s",
                self.name,
                self.counter.precision,
                self.counter.engine.graph,
                err,
            )
            return
        log.info(
            "model %r upgraded to %s (%s graph) %.1fs after ready",
            self.name,
            self.counter.precision,
            self.counter.engine.graph,
            time.perf_counter() - start,
        )

    def stop(self) -> None:
        """Release the decode and inference threads."""
        self.ready = False
        if self.batcher:
            stats = self.batcher.stats
            log.info(
                "%d batches ran %d requests, %d images (largest %d)",
                stats.batches,
                stats.requests,
                stats.images,
                stats.largest,
            )
            self.batcher.close()
        rechecked = getattr(self.counter.model, "rechecked", None) if self.counter else None
        if rechecked is not None:
            log.info(
                "int8: %d of %d images re-checked in float", rechecked, self.counter.model.images
            )
        if self._decoder:
            self._decoder.shutdown(wait=False, cancel_futures=True)

    def validate(self, payload):
        """Return ``payload``: :meth:`preprocess` has already checked the request completely."""
        return payload

    # -- request parsing ---------------------------------------------------------------------

    async def preprocess(self, payload, headers=None) -> _Request:
        """Check the request and turn its images (or tensor) into one model input."""
        if isinstance(payload, InferRequest):
            return await self._parse_v2(payload)
        if isinstance(payload, dict):
            return await self._parse_v1(payload)
        raise InvalidInput(
            f"unsupported request body of type {type(payload).__name__}; expected a JSON object"
        )

    def _check_count(self, n: int) -> None:
        if n == 0:
            raise InvalidInput("the request holds no images")
        if n > self.limits.max_images:
            raise InvalidInput(
                f"the request holds {n} images; at most {self.limits.max_images} are allowed"
            )

    def _prepare_one(self, position: int, data: bytes) -> np.ndarray:
        if len(data) > self.limits.max_image_bytes:
            raise InvalidInput(
                f"image {position} is {len(data)} bytes, over the limit of "
                f"{self.limits.max_image_bytes}"
            )
        try:
            return prepare(data, self.counter.image_size, self.limits.max_pixels)
        except InvalidImage as err:
            raise InvalidInput(f"image {position}: {err}") from None

    async def _decode(self, encoded: list[bytes]) -> torch.Tensor:
        """Decode and resize the images in parallel on the decode threads.

        The batcher is told a request is coming while its images decode, so that it can wait for
        it instead of starting a batch without it (see :mod:`invmon.serving.batching`).
        """
        loop = asyncio.get_running_loop()
        self.batcher.expect()
        try:
            arrays = await asyncio.gather(
                *(
                    loop.run_in_executor(self._decoder, self._prepare_one, position, data)
                    for position, data in enumerate(encoded)
                )
            )
        except BaseException:
            self.batcher.cancel_expected()
            raise
        return torch.from_numpy(np.stack(arrays))

    async def _parse_v1(self, payload: dict) -> _Request:
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
            encoded.append(_b64decode(b64, f"instance {position}", self.limits.max_image_bytes))
        return _Request("v1", await self._decode(encoded))

    async def _parse_v2(self, request: InferRequest) -> _Request:
        # Checked before any decoding or inference: a bad output name needs only the request.
        unknown = [o.name for o in request.request_outputs or [] if o.name not in V2_OUTPUTS]
        if unknown:
            raise InvalidInput(f"unknown output {unknown[0]!r}; allowed: {', '.join(V2_OUTPUTS)}")
        if len(request.inputs) != 1:
            raise InvalidInput(
                "expected exactly one input (BYTES images or FP32 tensors), "
                f"got {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        if tensor.datatype == "BYTES":
            encoded = self._bytes_elements(tensor)
            return _Request("v2", await self._decode(encoded), request)
        if tensor.datatype == "FP32":
            return _Request("v2", self._check_tensor(tensor), request)
        raise InvalidInput(
            f"input {tensor.name!r} has datatype {tensor.datatype}; allowed: BYTES (encoded "
            "images) or FP32 (preprocessed tensors)"
        )

    def _bytes_elements(self, tensor) -> list[bytes]:
        """The images of a BYTES input: raw bytes (binary extension) or base64 strings (JSON)."""
        shape = list(tensor.shape)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(f"input {tensor.name!r} has shape {shape}; expected [N] or [N, 1]")
        self._check_count(math.prod(shape))
        if tensor._raw_data is not None:
            return split_bytes_elements(tensor._raw_data, tensor.name)
        data = tensor.data
        if not isinstance(data, list):
            raise InvalidInput(f"input {tensor.name!r}: BYTES data must be a list")
        flat = list(_flatten(data))
        if len(flat) != math.prod(shape):
            raise InvalidInput(
                f"input {tensor.name!r} holds {len(flat)} elements; its shape {shape} says "
                f"{math.prod(shape)}"
            )
        if any(not isinstance(e, (str, bytes)) for e in flat):
            raise InvalidInput(f"input {tensor.name!r}: BYTES elements must be base64 strings")
        where = f"input {tensor.name!r} element"
        return [
            e
            if isinstance(e, bytes)
            else _b64decode(e, f"{where} {i}", self.limits.max_image_bytes)
            for i, e in enumerate(flat)
        ]

    def _check_tensor(self, tensor) -> torch.Tensor:
        size = self.counter.image_size
        expected = f"[N, 3, {size}, {size}]"
        shape = list(tensor.shape)
        if len(shape) != 4 or shape[1:] != [3, size, size]:
            raise InvalidInput(f"input {tensor.name!r} has shape {shape}; expected {expected}")
        self._check_count(shape[0])
        try:
            if tensor._raw_data is not None:
                array = np.frombuffer(tensor._raw_data, dtype="<f4").reshape(shape)
            else:
                array = np.asarray(tensor.data, dtype=np.float32).reshape(shape)
        except (ValueError, TypeError) as err:
            raise InvalidInput(
                f"input {tensor.name!r} does not match its shape {shape}: {err}"
            ) from None
        if not np.isfinite(array).all():
            raise InvalidInput(f"input {tensor.name!r} holds NaN or infinite values")
        return torch.from_numpy(array.astype(np.float32, copy=True))

    # -- inference ---------------------------------------------------------------------------

    async def predict(self, request: _Request, headers=None) -> tuple[_Request, Predictions]:
        """Run the request's images in the next model batch (off the event loop)."""
        expected = request.inputs.dtype == torch.uint8  # announced while decoding
        return request, await self.batcher.submit(request.inputs, expected=expected)

    async def postprocess(self, result, headers=None, response_headers=None):
        """Answer in the protocol the request came in."""
        request, predictions = result
        if request.protocol == "v1":
            return {"predictions": v1_predictions(predictions, self.counter.config.classes)}
        return v2_response(self.name, request.request, predictions, self.counter.config.classes)


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


V2_OUTPUTS = ("count", "expected_count", "probabilities", "classes")


def v2_response(
    name: str, request: InferRequest | None, predictions: Predictions, classes
) -> InferResponse:
    """V2 outputs: count (INT64 [N]), expected_count (FP32 [N]), probabilities (FP32 [N, C]) and
    classes (INT64 [C], the item count of each probability column).

    Outputs come as JSON unless the request asked for binary data (``binary_data_output`` or
    per-output ``binary_data``), and only those requested when the request names outputs.
    """
    outputs = []
    for output_name, datatype, array in (
        ("count", "INT64", predictions.counts.astype(np.int64)),
        ("expected_count", "FP32", predictions.expected.astype(np.float32)),
        ("probabilities", "FP32", predictions.probabilities.astype(np.float32)),
        ("classes", "INT64", np.asarray(classes, dtype=np.int64)),
    ):
        output = InferOutput(name=output_name, shape=list(array.shape), datatype=datatype)
        output.set_data_from_numpy(array, binary_data=False)
        outputs.append(output)
    requested = request.request_outputs if request else None
    return InferResponse(
        response_id=(request.id if request else None) or str(uuid.uuid4()),
        model_name=name,
        infer_outputs=outputs,
        use_binary_outputs=bool(request and request.use_binary_outputs),
        requested_outputs=requested,
    )


def _b64decode(text: str, where: str, max_bytes: int) -> bytes:
    # Checked before decoding so that an oversized image costs no memory.
    if len(text) * 3 // 4 > max_bytes + 2:
        raise InvalidInput(
            f"{where} is about {len(text) * 3 // 4} bytes, over the limit of {max_bytes}"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: invalid base64 data") from None


def _flatten(items):
    for item in items:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item
