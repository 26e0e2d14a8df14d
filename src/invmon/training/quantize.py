"""int8 inference on CPUs: post-training static quantization of the counting model.

Why: on a CPU with int8 dot-product instructions (AVX512-VNNI, AVX-VNNI) the quantized ResNet50
runs about 1.8x faster than the TorchInductor-compiled bf16 graph (docs/benchmarks.md). It is
what ``--precision auto`` serves on a CPU when it follows the float model closely enough (below).

How: FX graph mode quantization with PyTorch's x86 backend (fbgemm and oneDNN kernels): per-channel
int8 weights, per-tensor uint8 activations whose ranges are calibrated on training images at the end
of training. The small classifier head stays in float: it is 0.5 M of ResNet50's 4 G multiply-adds,
and keeping it in float raised the share of counts identical to fp32 from 98.5 % to 99.5 % on a test
model. Only the calibration is stored (``quantization.pt``: the activation observers' ranges, plain
tensors read with ``weights_only=True``); a predictor rebuilds the quantized model from the float
weights and that file at load. No quantized model, and so no pickled code or graph, is ever written.

Fidelity: int8 moves class probabilities a little (a few hundredths), which flips the count of
images whose top two classes are nearly tied: on its own it gave the fp32 count for 98-99.3 % of
photos in our measurements, short of the 99 % we require of a lower precision. So the served
model re-checks close calls: an image whose int8 top two probabilities are closer than a margin
is re-run through the float model (:class:`RecheckedInt8`). At calibration, train measures on
held-out images how far int8 moves the probabilities, sets the margin from that, and records the
agreement before and after re-checking and the share re-checked (:class:`Fidelity`).
``--precision auto`` serves int8 only when the re-checked agreement is at least
:data:`MIN_AGREEMENT` and few enough images need a re-check for it to pay
(:data:`MAX_RECHECKED`); otherwise it serves the float model.

PyTorch marks ``torch.ao.quantization`` as deprecated in favour of torchao's PT2E flow, which did
not quantize this ResNet50 here (torchao 0.18, torch 2.14: its x86 quantizer fails on the residual
add pattern). tests/test_quantize.py fails when a PyTorch upgrade breaks this path.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from invmon.data.transforms import Preprocessing, normalize
from invmon.training.model import ModelNotFound, load_model
from invmon.training.run import measuring_split_name

log = logging.getLogger(__name__)

ENGINE = "x86"
CALIBRATION_FILE = "quantization.pt"
# 64 training images: with 128, the counts identical to fp32 changed by noise only (97.7 % against
# 98.3 % of the ABID sample on an uncertain model) and calibration took twice as long.
CALIBRATION_IMAGES = 64
CALIBRATION_BATCH = 32
# The bar for a lower precision: at least 99 % of counts identical to fp32.
MIN_AGREEMENT = 0.99
# Above this share of re-checked images, int8 plus the float re-runs is no faster than float:
# int8 takes about 0.55x the float model's time per image at batch 8 here, and a re-run batch of
# one or two images about 1.8x per image.
MAX_RECHECKED = 0.2
AGREEMENT_IMAGES = 512
FLOAT_MODULES = ("fc",)  # the classifier head, see the module docstring
_OBSERVER = "activation_post_process_"
_FINGERPRINT = "weights_fingerprint"
_FIDELITY = "fidelity."


def int8_supported(device: torch.device) -> bool:
    """True when ``device`` is a CPU and this PyTorch has the x86 quantized engine."""
    return device.type == "cpu" and ENGINE in torch.backends.quantized.supported_engines


def has_vnni() -> bool:
    """True on an x86 CPU with int8 dot-product instructions (Linux: read from /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def qconfig_mapping(full_range: bool):
    """How each layer is quantized: int8 per-channel weights, uint8 min/max-calibrated activations.

    Activations use the full 8 bits only on CPUs with VNNI: without it, the x86 kernels can
    saturate 16-bit intermediate sums, which is why PyTorch's x86 default keeps 7 bits. Min/max
    observers kept more counts identical to fp32 than PyTorch's default histogram observers on an
    uncertain ABID model (98.3 % against 97.0 % of 300 photos, both with 8 bits) and calibrate
    about twice as fast. The head stays in float (:data:`FLOAT_MODULES`).
    """
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    qconfig = QConfig(
        activation=MinMaxObserver.with_args(
            dtype=torch.quint8, quant_min=0, quant_max=255 if full_range else 127
        ),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        ),
    )
    mapping = QConfigMapping().set_global(qconfig)
    for name in FLOAT_MODULES:
        mapping = mapping.set_module_name(name, None)
    return mapping


def _prepared(model: nn.Module, image_size: int) -> torch.fx.GraphModule:
    """A float32 CPU copy of ``model`` with activation observers inserted."""
    with warnings.catch_warnings():
        # The module's deprecation notice and an observer argument warning: see the docstring.
        warnings.simplefilter("ignore")
        from torch.ao.quantization.quantize_fx import prepare_fx

        torch.backends.quantized.engine = ENGINE
        float_model = copy.deepcopy(model).to("cpu", torch.float32).eval()
        example = (torch.zeros((1, 3, image_size, image_size)),)
        return prepare_fx(float_model, qconfig_mapping(has_vnni()), example)


def _observer_state(prepared: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in prepared.state_dict().items() if k.startswith(_OBSERVER)}


def fingerprint(model: nn.Module) -> torch.Tensor:
    """Per-tensor sums of ``model``'s weights (float64): ties a calibration to its weights."""
    return torch.stack(
        [v.detach().to("cpu", torch.float64).sum() for v in model.state_dict().values()]
    )


def calibrate(
    model: nn.Module, batches: Iterable[torch.Tensor], image_size: int
) -> dict[str, torch.Tensor]:
    """Run normalised float ``batches`` (N, 3, S, S) through ``model``; return the calibration.

    ``model`` itself is not changed (a CPU copy is observed).
    """
    prepared = _prepared(model, image_size)
    seen = 0
    with torch.inference_mode():
        for batch in batches:
            prepared(batch.to("cpu", torch.float32))
            seen += len(batch)
    if seen == 0:
        raise ValueError("int8 calibration needs at least one image, got none")
    return {**_observer_state(prepared), _FINGERPRINT: fingerprint(model)}


@dataclass(frozen=True)
class Fidelity:
    """How closely the int8 model follows the float one, measured by train at calibration."""

    images: int  # how many images were compared
    agreement: float  # fraction with the same count from int8 alone
    margin: float  # int8 answers whose top two probabilities are closer than this are re-checked
    rechecked: float  # fraction of images that were re-checked in float
    checked_agreement: float  # fraction with the same count once re-checked

    @property
    def serves_int8(self) -> bool:
        """Whether ``--precision auto`` should serve int8 (see the module docstring)."""
        return self.checked_agreement >= MIN_AGREEMENT and self.rechecked <= MAX_RECHECKED

    def to_state(self) -> dict[str, torch.Tensor]:
        """Tensors for the calibration file (which holds tensors only)."""
        return {
            f"{_FIDELITY}{k}": torch.tensor(float(v), dtype=torch.float64)
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Fidelity | None:
        """Read back :meth:`to_state`'s tensors; None when the file has none."""
        values = {
            k.removeprefix(_FIDELITY): float(v) for k, v in state.items() if k.startswith(_FIDELITY)
        }
        if set(values) != {f.name for f in fields(cls)}:
            return None
        values["images"] = int(values["images"])
        return cls(**values)


def _probabilities(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat(
            [torch.softmax(model(b.to("cpu", torch.float32)).float(), dim=1) for b in batches]
        )


def measure_fidelity(
    float_model: nn.Module, int8_model: nn.Module, batches: Iterable[torch.Tensor]
) -> Fidelity:
    """Compare the two models' answers on normalised ``batches`` and choose the re-check margin.

    If no class probability moves by more than ``e`` between fp32 and int8, an int8 answer whose
    top two probabilities are at least ``2e`` apart is the fp32 answer too. ``e`` is taken as the
    99th percentile of the per-image largest move, so that one outlier does not send every image
    to the float model; what that leaves is measured (``checked_agreement``).
    """
    batches = list(batches)
    if not batches:
        raise ValueError("measuring int8 fidelity needs at least one image, got none")
    reference = _probabilities(float_model.to("cpu", torch.float32), batches)
    int8 = _probabilities(int8_model, batches)
    moved = (reference - int8).abs().max(dim=1).values
    margin = 2 * float(torch.quantile(moved.double(), 0.99))
    top2 = int8.topk(2, dim=1).values
    close = (top2[:, 0] - top2[:, 1]) < margin
    expected, alone = reference.argmax(dim=1), int8.argmax(dim=1)
    checked = torch.where(close, expected, alone)
    return Fidelity(
        images=len(reference),
        agreement=float((alone == expected).double().mean()),
        margin=margin,
        rechecked=float(close.double().mean()),
        checked_agreement=float((checked == expected).double().mean()),
    )


def read_calibration(model_dir: str | Path) -> dict[str, torch.Tensor] | None:
    """The tensors of the folder's calibration file (None when it has none)."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def read_fidelity(model_dir: str | Path) -> Fidelity | None:
    """The fidelity train measured for the folder's calibration (None: no calibration or none)."""
    state = read_calibration(model_dir)
    return None if state is None else Fidelity.from_state(state)


class RecheckedInt8(nn.Module):
    """The int8 model, with close calls re-run through the float model.

    An image whose int8 top two class probabilities are closer than ``margin`` (from
    :class:`Fidelity`) gets the float model's logits instead: int8's speed where the answer is
    clear, the float answer where int8 could have flipped it. ``margin=0`` turns it off.
    """

    def __init__(self, int8: nn.Module, fallback: nn.Module, margin: float, autocast_context):
        super().__init__()
        self.int8, self.fallback, self.margin = int8, fallback, margin
        self.autocast_context = autocast_context  # the fallback's precision, e.g. bf16
        self.images = self.rechecked = 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (float32) for a normalised batch."""
        logits = self.int8(inputs).float()
        self.images += len(inputs)
        if self.margin <= 0:
            return logits
        top2 = torch.softmax(logits, dim=1).topk(2, dim=1).values
        close = (top2[:, 0] - top2[:, 1]) < self.margin
        if bool(close.any()):
            self.rechecked += int(close.sum())
            with self.autocast_context():
                rerun = inputs[close].contiguous(memory_format=torch.channels_last)
                logits[close] = self.fallback(rerun).float()
        return logits

    def warm_up(self, inputs: torch.Tensor) -> None:
        """Run ``inputs`` through both models (a compiled fallback compiles on first use).

        Through :meth:`forward`, with every image a close call: a compiled graph guards on its
        inputs' strides and dispatch keys (an inference tensor or not), so the fallback must be
        warmed up on tensors made exactly as close calls are. Warmed up on the caller's tensors,
        it compiled again at the first close call (35-41 s on 2 cores, docs/benchmarks.md).
        Not thread-safe: warm an engine up before it serves.
        """
        margin, self.margin = self.margin, math.inf
        try:
            self(inputs)
        finally:
            self.margin = margin


def calibration_batches(
    images: np.ndarray | torch.Tensor, preprocessing: Preprocessing
) -> Iterable[torch.Tensor]:
    """Normalised batches of ``images``, uint8 (N, 3, S, S), for :func:`calibrate`."""
    for start in range(0, len(images), CALIBRATION_BATCH):
        chunk = torch.as_tensor(np.asarray(images[start : start + CALIBRATION_BATCH]))
        yield normalize(chunk, preprocessing)


def calibration_sample(total: int, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Indices of ``count`` images spread evenly over ``total`` (all of them when fewer)."""
    return np.unique(np.linspace(0, total - 1, num=min(count, total)).round().astype(np.int64))


def save_calibration(
    state: dict[str, torch.Tensor], model_dir: str | Path, fidelity: Fidelity | None = None
) -> Path:
    """Write the calibration (and how faithful it proved) into the model folder."""
    path = Path(model_dir) / CALIBRATION_FILE
    state = {k: v.detach().cpu() for k, v in state.items()}
    torch.save({**state, **(fidelity.to_state() if fidelity else {})}, path)
    return path


def quantized(
    model: nn.Module,
    model_dir: str | Path,
    calibration: dict[str, torch.Tensor] | None,
    image_size: int,
) -> nn.Module:
    """The int8 model built from float ``model`` and ``model_dir``'s calibration (its tensors).

    Raises ModelNotFound without a calibration, and ValueError naming the file when it does not
    fit this model (other weights, or observers laid out by another PyTorch version).
    """
    path = Path(model_dir) / CALIBRATION_FILE
    if calibration is None:
        raise ModelNotFound(
            f"no {CALIBRATION_FILE} in model folder {str(model_dir)!r}: int8 needs the calibration "
            "that invmon train writes; use --precision bf16 or fp32 for this folder"
        )
    return convert(model, calibration, image_size, where=str(path))


def convert(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    image_size: int,
    where: str = "calibration",
) -> nn.Module:
    """The int8 model from float ``model`` and a :func:`calibrate` result (``where`` names it).

    FX traces ``model``, which patches ``torch.nn.Module`` for the whole process while it runs:
    a process serving meanwhile keeps its batches out of the trace (invmon.serving.fx_tracing).
    """
    state = {k: v for k, v in state.items() if not k.startswith(_FIDELITY)}
    saved = state.pop(_FINGERPRINT, None)
    weights = fingerprint(model)
    if saved is None or saved.shape != weights.shape or not torch.allclose(saved, weights):
        raise ValueError(
            f"{where} does not fit this model: it was calibrated for other weights; retrain, "
            "or use --precision bf16 or fp32"
        )
    prepared = _prepared(model, image_size)
    expected = _observer_state(prepared)
    if set(state) != set(expected):
        raise ValueError(
            f"{where} does not fit this model: {len(state)} calibration tensors, the model has "
            f"{len(expected)} observers (another PyTorch version?); retrain, or use "
            "--precision bf16 or fp32"
        )
    prepared.load_state_dict(state, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization.quantize_fx import convert_fx

        return convert_fx(prepared)


def calibrate_model_folder(model_dir: str | Path, index) -> None:
    """Calibrate int8 inference of the saved model on training images; save it beside it.

    How closely the int8 model follows the float one is measured too, on up to
    :data:`AGREEMENT_IMAGES` images (the validation split, topped up from the training
    split: this measures numerical fidelity, not generalisation, and a few dozen validation
    images are too few to tell 99 % from 97 %), and saved: ``--precision auto`` serves int8 only
    when it is faithful enough (:class:`Fidelity`). ``index`` is the training data's
    :class:`~invmon.data.shards.DatasetIndex`. The model is read back from ``model_dir`` as a
    predictor reads it (plain batch norm, float32, CPU), whatever wrappers and precision trained
    it. Skipped, with a warning, where PyTorch has no x86 quantized engine (an Arm build):
    serving then runs the float model.
    """

    if not int8_supported(torch.device("cpu")):
        log.warning("no int8 calibration: this PyTorch has no %s quantized engine", ENGINE)
        return
    model, _ = load_model(model_dir, "cpu")
    train_split, check = index.split("train"), index.split(measuring_split_name(index))
    calibration = train_split.gather(calibration_sample(len(train_split)))
    preprocessing = index.preprocessing
    state = calibrate(
        model, calibration_batches(calibration, preprocessing), preprocessing.image_size
    )
    held_out = calibration_sample(len(check), AGREEMENT_IMAGES)
    top_up = calibration_sample(len(train_split), AGREEMENT_IMAGES - len(held_out))
    parts = [(check, held_out), (train_split, top_up)]
    images = np.concatenate([split.gather(rows) for split, rows in parts if len(rows)])
    int8 = convert(model, state, preprocessing.image_size)
    fidelity = measure_fidelity(model, int8, calibration_batches(images, preprocessing))
    log.info(
        "int8 gives the fp32 count on %.1f%% of %d images, %.1f%% once the %.1f%% closest calls "
        "are re-checked in float: %s",
        100 * fidelity.agreement,
        fidelity.images,
        100 * fidelity.checked_agreement,
        100 * fidelity.rechecked,
        "served by default" if fidelity.serves_int8 else "NOT served by default",
    )
    save_calibration(state, model_dir, fidelity)
