"""Batch inference with a trained model: the code evaluate, serve and audit share.

:class:`Counter` wraps the one model loader (:func:`invmon.training.model.load_model`) and the one
preprocessing (:mod:`invmon.data.transforms`) and turns uint8 image batches into counts, class
probabilities and expected counts.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import torch

from invmon.data.transforms import DEFAULT_MAX_PIXELS, normalize, prepare
from invmon.serving import prebuilt
from invmon.serving.compiled import CompiledGraph, seal_compiled_graphs
from invmon.serving.fx_tracing import MODEL_RUNS, exclude_model_runs_while_tracing
from invmon.serving.options import GRAPHS
from invmon.training import quantize
from invmon.training.device import INFERENCE_PRECISIONS, autocast, resolve_device, resolve_precision
from invmon.training.model import ModelConfig, load_model, read_config, weights_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictions:
    """Per-image results of one batch."""

    probabilities: np.ndarray  # (N, C) float32, rows sum to 1
    counts: np.ndarray  # (N,) most likely item count
    expected: np.ndarray  # (N,) probability-weighted mean count

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted count, per image."""
        return self.probabilities.max(axis=1)

    def rows(self, start: int, end: int) -> Predictions:
        """The results of images ``start`` to ``end`` (exclusive)."""
        return Predictions(
            self.probabilities[start:end], self.counts[start:end], self.expected[start:end]
        )


_FLOAT_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_inference_precision(
    name: str, device: torch.device, fidelity: quantize.Fidelity | None
) -> str:
    """The precision to run a model in: ``int8``, or a float one for :func:`autocast`.

    ``auto`` is int8 on a CPU when the model folder's int8 calibration is one train found
    faithful enough (``fidelity``, see :mod:`invmon.training.quantize`; int8 is the fastest there),
    else
    what :func:`invmon.training.device.resolve_precision` picks.
    """
    if name not in INFERENCE_PRECISIONS:
        raise ValueError(
            f"--precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {name!r}"
        )
    if name == "int8" and not quantize.int8_supported(device):
        raise ValueError(
            f"--precision int8 runs on a CPU with PyTorch's {quantize.ENGINE} quantized engine, "
            f"not on {device}; use bf16, fp16 or fp32"
        )
    faithful = fidelity is not None and fidelity.serves_int8
    if name == "auto" and faithful and quantize.int8_supported(device):
        return "int8"
    return name


def resolve_graph(name: str, device: torch.device) -> str:
    """The graph mode for ``name`` on ``device``: ``auto`` compiles on a CPU with a C++ compiler."""
    if name not in GRAPHS:
        raise ValueError(f"--graph must be one of {', '.join(GRAPHS)}, got {name!r}")
    if name != "auto":
        return name
    has_compiler = shutil.which(os.environ.get("CXX", "g++")) is not None
    return "compiled" if device.type == "cpu" and has_compiler else "frozen"


def compiled(model: torch.nn.Module, largest: int | None = None) -> CompiledGraph:
    """``model`` compiled by TorchInductor for inference, weights frozen and prepacked.

    The batch dimension is dynamic; the first call of a batch size no graph fits compiles, so
    warm the model up before serving. With ``largest``, warming up makes every batch size up to it
    ready and :meth:`Counter.warm_up` then seals the graph: it never compiles while it serves
    (:class:`invmon.serving.compiled.CompiledGraph`).
    """
    return CompiledGraph(model, largest)


def frozen(model: torch.nn.Module, image_size: int, device: torch.device, dtype):
    """``model`` traced and frozen for inference at ``image_size`` in precision ``dtype``."""
    example = torch.zeros((2, 3, image_size, image_size), device=device)
    example = example.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.inference_mode(), autocast(device, dtype):
        # Tracing warns that autocast is recorded into the graph: that is the intent here.
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))


@dataclass(frozen=True)
class Engine:
    """What runs a batch: the model, its autocast dtype, and names for logs and reports.

    One object, so that :meth:`Counter.swap` replaces them all in one assignment and a batch never
    pairs one engine's model with another's dtype.
    """

    model: torch.nn.Module
    dtype: torch.dtype | None
    precision: str = "fp32"  # what the model runs in: int8, bf16, fp16 or fp32
    graph: str = "eager"  # how its float model runs (see GRAPHS)


class LoadOptions(TypedDict, total=False):
    """How :meth:`Counter.from_model_dir` and :meth:`Counter.staged` load a model folder.

    ``device``: ``auto``, ``cpu`` or ``cuda`` (default ``auto``). ``precision``: one of
    :data:`INFERENCE_PRECISIONS` (default ``auto``; see :func:`resolve_inference_precision`).
    ``graph``: how a float model runs (see :data:`GRAPHS`): ``eager``; ``frozen``, a frozen
    TorchScript graph with batch norm folded into the convolutions and convolution + ReLU fused by
    oneDNN; or ``compiled`` by TorchInductor with frozen, prepacked weights, the fastest float graph
    on a CPU but a minute or more to compile and needing a C++ compiler (``auto`` picks it when one
    is there, else ``frozen``; for an int8 model's re-check only when train measured it re-checking
    at least :data:`COMPILE_RECHECK_SHARE` of images). An int8 model always runs as the quantized
    FX graph. The figures are in docs/benchmarks.md. ``largest_batch``: a compiled graph is made
    ready for every batch size up to it when warmed up, and compiles nothing after
    (:func:`compiled`). ``use_prebuilt``: run the engine prebuilt into the folder when it fits
    (:meth:`LoadPlan.prebuilt`).
    """

    device: str
    precision: str
    graph: str
    largest_batch: int | None
    use_prebuilt: bool


@dataclass(frozen=True)
class LoadPlan:
    """What :meth:`Counter.from_model_dir` and :meth:`Counter.staged` build for a model folder."""

    model_dir: Path
    config: ModelConfig
    device: torch.device
    graph: str  # eager, frozen or compiled (resolved)
    dtype: torch.dtype | None  # the float precision (of the re-check model, for int8)
    calibration: dict | None  # int8 only
    margin: float
    largest_batch: int | None = None  # the largest batch a compiled graph is made ready for
    requested: str = "auto"  # the graph asked for, before resolving (the prebuilt engine's rule)
    use_prebuilt: bool = False  # whether an engine prebuilt into the folder may run (if it fits)

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        """The float model, eager: loaded when first asked for, so that a predictor running a
        prebuilt engine never builds it (nor imports torchvision to)."""
        model, _ = load_model(self.model_dir, self.device)
        # No weight of a served model needs a gradient, and one that does deadlocks staged
        # loading: autocast caches its low-precision casts of such weights under one process-wide
        # mutex, held while the cast runs. Dynamo tracing the compiled graph on the upgrade thread
        # runs that cast through Python (fake tensors: it needs the GIL), while a request thread
        # that holds the GIL leaves autocast and clears the cache (it needs the mutex).
        return model.requires_grad_(False)

    @property
    def int8(self) -> bool:
        """Whether the final engine is int8 (with the float model re-checking close calls)."""
        return self.calibration is not None

    @classmethod
    def of(
        cls,
        model_dir,
        device: str = "auto",
        precision: str = "auto",
        graph: str = "auto",
        largest_batch: int | None = None,
        use_prebuilt: bool = False,
    ) -> LoadPlan:
        """Read the model folder; decide the final engine (the arguments: :class:`LoadOptions`)."""
        torch_device = resolve_device(device)
        config = read_config(model_dir)
        weights_path(model_dir)  # a folder without weights fails here, not at the first request
        resolved = resolve_graph(graph, torch_device)
        calibration = (
            quantize.read_calibration(model_dir) if quantize.int8_supported(torch_device) else None
        )
        fidelity = quantize.Fidelity.from_state(calibration) if calibration is not None else None
        int8 = resolve_inference_precision(precision, torch_device, fidelity) == "int8"
        if int8 and calibration is None:
            quantize.quantized(None, model_dir, None, 0)  # raises: says what to do
        if int8 and graph == "auto" and resolved == "compiled" and not _compile_pays(fidelity):
            resolved = "frozen"
        # An int8 model re-checks close calls with the float model, in the float precision
        # ``auto`` would pick (see invmon.training.quantize.RecheckedInt8).
        dtype = resolve_precision("auto" if int8 else precision, torch_device)
        margin = fidelity.margin if fidelity is not None else 0.0
        return cls(
            Path(model_dir),
            config,
            torch_device,
            resolved,
            dtype,
            calibration if int8 else None,
            margin,
            largest_batch,
            graph,
            use_prebuilt,
        )

    def prebuilt(self, model_dir) -> Engine | None:
        """The engine prebuilt into ``model_dir`` (:mod:`invmon.serving.prebuilt`), when the plan
        may use one, it fits, and the requested graph is ``auto`` or ``compiled``; else None, with
        the reason logged when there is one."""
        if not self.use_prebuilt or self.requested not in ("auto", "compiled"):
            return None
        if self.int8 or self.device.type != "cpu":
            what = "int8" if self.int8 else f"on {self.device}"
            log.info("prebuilt engine not used: the model serves %s", what)
            return None
        if why := prebuilt.unusable(model_dir):
            # Before prebuilt.here, which hashes the weights: most folders have no engine.
            log.info("prebuilt engine not used: %s", why)
            return None
        name = _FLOAT_NAMES[self.dtype]
        size = self.config.preprocessing.image_size
        wanted = prebuilt.here(model_dir, name, size, self.largest_batch or 1)
        model = prebuilt.load(model_dir, lambda: prebuilt.in_precision(self.model, name), wanted)
        return Engine(model, None, name, "prebuilt") if model is not None else None

    def quantized(self, model_dir) -> torch.nn.Module:
        """The int8 model built from the calibration in ``model_dir``."""
        size = self.config.preprocessing.image_size
        return quantize.quantized(self.model, model_dir, self.calibration, size)

    def float_graph(self, graph: str) -> torch.nn.Module:
        """The float model as ``graph`` runs it (built now: seconds for frozen, lazy compiled)."""
        if graph == "frozen":
            return frozen(self.model, self.config.preprocessing.image_size, self.device, self.dtype)
        if graph == "compiled":
            return compiled(self.model, self.largest_batch)
        return self.model

    def engine(self, graph: str, int8_model: torch.nn.Module | None = None) -> Engine:
        """The engine running the float model as ``graph``, behind ``int8_model`` if given."""
        model = self.float_graph(graph)
        if int8_model is None:
            return Engine(model, self.dtype, _FLOAT_NAMES[self.dtype], graph)
        device, dtype = self.device, self.dtype
        rechecked = quantize.RecheckedInt8(
            int8_model, model, self.margin, lambda: autocast(device, dtype)
        )
        return Engine(rechecked, None, "int8", graph)


# The int8 model's float re-check runs on a few percent of images, in batches of one or two. Below
# this share (train measured it: Fidelity.rechecked) compiling it with TorchInductor, about a
# minute and a half of both cores at start-up, gains about 1 % of throughput at most over the
# frozen graph (model-only figures in docs/benchmarks.md), so ``--graph auto`` freezes it instead.
COMPILE_RECHECK_SHARE = 0.05


def _compile_pays(fidelity: quantize.Fidelity | None) -> bool:
    return fidelity is not None and fidelity.rechecked >= COMPILE_RECHECK_SHARE


class Counter:
    """A loaded counting model that predicts on batches of preprocessed or encoded images."""

    def __init__(
        self,
        model,
        config: ModelConfig,
        device: torch.device,
        dtype,
        precision: str = "fp32",
        graph: str = "eager",
    ):
        self.config, self.device = config, device
        self.engine = Engine(model, dtype, precision, graph)
        self.class_counts = np.asarray(config.classes, dtype=np.int64)

    # The current engine's parts, read-only: change them with swap().
    model = property(lambda self: self.engine.model)
    dtype = property(lambda self: self.engine.dtype)
    precision = property(lambda self: self.engine.precision, doc="for logs and reports")

    def swap(self, engine: Engine) -> Engine:
        """Run the next batches on ``engine``; return the previous one.

        Safe while another thread predicts: a batch reads :attr:`engine` once (see
        :meth:`predict_logits`), so it runs wholly on the old engine or wholly on the new one, and
        the assignment is atomic. Warm ``engine`` up first (:meth:`warm_up`): its first batches
        pay for setup.
        """
        previous, self.engine = self.engine, engine
        return previous

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, freeze: bool = False, **load: Unpack[LoadOptions]
    ) -> Counter:
        """Load the model folder written by train, building its final engine now.

        ``load`` says how (:class:`LoadOptions`); the graph defaults to ``eager`` here, and
        ``freeze=True`` makes it ``frozen``.
        """
        plan = LoadPlan.of(model_dir, **{"graph": "frozen" if freeze else "eager", **load})
        if (ready := plan.prebuilt(model_dir)) is not None:
            return cls.running(ready, plan)
        int8_model = plan.quantized(model_dir) if plan.int8 else None
        return cls.running(plan.engine(plan.graph, int8_model), plan)

    @classmethod
    def running(cls, engine: Engine, plan: LoadPlan) -> Counter:
        """A counter for ``plan``'s model folder, running ``engine``."""
        return cls(
            engine.model, plan.config, plan.device, engine.dtype, engine.precision, engine.graph
        )

    @classmethod
    def staged(
        cls,
        model_dir: str | Path,
        batch_sizes: Sequence[int] = (1, 2, 8),
        **load: Unpack[LoadOptions],
    ) -> tuple[Counter, Callable[[], None] | None]:
        """Load the model folder on its cheapest correct path now, the fastest one later.

        ``load`` says how (:class:`LoadOptions`; the graph defaults to ``auto``).

        Returns the counter, running the float model eagerly in the float precision the final
        engine uses (no quantization, no compilation: seconds), and ``upgrade``, which builds the
        engine :meth:`from_model_dir` would build, one stage at a time, warms each up with
        ``batch_sizes`` and swaps it in: for int8, int8 with the eager re-check first (seconds),
        then with the frozen or compiled re-check; for a float model, the frozen or compiled
        graph. Call ``upgrade`` on a background thread while the counter serves; it is None when
        there is nothing to upgrade to. Every stage gives the float model's counts (int8
        re-checks its close calls), so an answer does not depend on which stage served it beyond
        rounding. ``upgrade`` raises what a stage raised; the counter then keeps the last engine
        swapped in. With ``largest_batch``, a compiled graph is ready for every batch size up to
        it before it is swapped in, and compiles nothing after (:func:`compiled`). With
        ``use_prebuilt`` and an engine prebuilt into the folder that fits
        (:meth:`LoadPlan.prebuilt`), the counter runs that at once, with nothing to upgrade.
        """
        plan = LoadPlan.of(model_dir, **load)
        if (ready := plan.prebuilt(model_dir)) is not None:
            return cls.running(ready, plan), None
        counter = cls.running(plan.engine("eager"), plan)
        stages = _upgrade_stages(plan, model_dir)
        if not stages:
            return counter, None
        # Building int8 or compiling traces with torch.fx, which patches torch.nn.Module for the
        # whole process: requests wait while a trace runs (see invmon.serving.fx_tracing).
        exclude_model_runs_while_tracing()

        def upgrade() -> None:
            for build in stages:
                start = time.perf_counter()
                engine = build()
                counter.warm_up(batch_sizes, engine)
                counter.swap(engine)
                log.info(
                    "now serving %s (%s graph), built and warmed up in %.1fs",
                    engine.precision,
                    engine.graph,
                    time.perf_counter() - start,
                )

        return counter, upgrade

    @property
    def image_size(self) -> int:
        """The side of the square input the model was trained on."""
        return self.config.preprocessing.image_size

    def predict_logits(self, inputs: torch.Tensor, engine: Engine | None = None) -> torch.Tensor:
        """Return float32 logits for a normalised float batch (N, 3, S, S).

        By default the batch runs on the current engine, read once (:meth:`swap` may replace it
        meanwhile), holding :data:`~invmon.serving.fx_tracing.MODEL_RUNS` (no torch.fx trace runs
        meanwhile); ``engine`` runs it on another one without the lock (to warm an engine up
        before it is swapped in: on the thread that builds engines, which is the one that traces).
        """
        if engine is not None:
            return self._logits(inputs, engine)
        with MODEL_RUNS:
            return self._logits(inputs, self.engine)

    @torch.inference_mode()
    def _logits(self, inputs: torch.Tensor, engine: Engine) -> torch.Tensor:
        # Always a fresh channels_last inference tensor, whatever the caller passed: a compiled
        # graph guards on strides and dispatch keys, and compiles again (tens of seconds) for a
        # batch that differs from those it was warmed up on.
        inputs = inputs.to(self.device).clone(memory_format=torch.channels_last)
        with autocast(self.device, engine.dtype):
            return engine.model(inputs).float()

    def predict_uint8(self, images: torch.Tensor | np.ndarray) -> Predictions:
        """Predict on a uint8 (N, 3, S, S) batch, as preprocess and :func:`prepare` produce."""
        batch = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
        inputs = normalize(batch.to(self.device), self.config.preprocessing)
        return self.predictions(self.predict_logits(inputs))

    def predict_bytes(
        self, encoded: Sequence[bytes], max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Predictions:
        """Decode, resize and predict a batch of encoded images (raises InvalidImage)."""
        arrays = [prepare(data, self.image_size, max_pixels) for data in encoded]
        return self.predict_uint8(np.stack(arrays))

    def to_inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """Model input on the device: uint8 images normalised, float tensors as they are."""
        if batch.dtype == torch.uint8:
            return normalize(batch.to(self.device), self.config.preprocessing)
        return batch.to(self.device, torch.float32)

    def predict_many(self, batches: Sequence[torch.Tensor]) -> list[Predictions]:
        """Run the inputs of several requests as one forward pass; one Predictions per request.

        Each batch is uint8 images or normalised float tensors, (N, 3, S, S).
        """
        inputs = torch.cat([self.to_inputs(b) for b in batches])
        whole = self.predictions(self.predict_logits(inputs))
        bounds = np.cumsum([0] + [len(b) for b in batches])
        return [whole.rows(start, end) for start, end in itertools.pairwise(bounds)]

    def warm_up(self, batch_sizes: Sequence[int] = (1, 4), engine: Engine | None = None) -> None:
        """Run the model once per batch size, so the first requests do not pay for setup.

        ``engine`` (default: the current one) warms up an engine before :meth:`swap`. A compiled
        graph given a largest batch is then ready for every batch size up to it, and sealed: it
        compiles nothing after this (see :class:`invmon.serving.compiled.CompiledGraph`).
        """
        size = self.image_size
        for n in batch_sizes:
            inputs = self.to_inputs(torch.zeros((n, 3, size, size), dtype=torch.uint8))
            self.predict_logits(inputs, engine)
            model = (engine or self.engine).model
            if isinstance(model, quantize.RecheckedInt8):  # its float model, too
                with torch.inference_mode():
                    model.warm_up(inputs)
        model = (engine or self.engine).model
        if isinstance(model, quantize.RecheckedInt8):
            model.images = model.rechecked = 0  # count requests only
        seal_compiled_graphs(model)

    def predictions(self, logits: torch.Tensor) -> Predictions:
        """Turn logits into counts, probabilities and expected counts."""
        probabilities = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
        counts = self.class_counts[probabilities.argmax(axis=1)]
        expected = probabilities @ self.class_counts.astype(np.float32)
        return Predictions(probabilities, counts, expected)


def _upgrade_stages(plan: LoadPlan, model_dir) -> list[Callable[[], Engine]]:
    """The engines :meth:`Counter.staged` upgrades to, cheapest first, as functions building them.

    The int8 model is built once and shared by its two stages.
    """
    if not plan.int8:
        return [] if plan.graph == "eager" else [lambda: plan.engine(plan.graph)]
    built: dict[str, torch.nn.Module] = {}

    def int8(graph: str) -> Engine:
        if "int8" not in built:
            built["int8"] = plan.quantized(model_dir)
        return plan.engine(graph, built["int8"])

    stages = [lambda: int8("eager")]
    if plan.graph != "eager":
        stages.append(lambda: int8(plan.graph))
    return stages
