"""int8 inference: train writes a calibration, the predictor's default runs it, counts agree."""

import shutil
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch import nn

from invmon.data.synth import make_bin
from invmon.data.transforms import Preprocessing, prepare
from invmon.serving.counter import Counter, resolve_inference_precision
from invmon.training import quantize
from invmon.training.model import ModelConfig, ModelNotFound, build_model, read_config, save_model

CPU = torch.device("cpu")


def fresh_bins(count: int, size: int) -> np.ndarray:
    """uint8 (N, 3, size, size) synthetic bins no model in these tests was trained on."""
    return np.stack(
        [prepare(make_bin(seed=404, number=n, max_items=2)[1], size) for n in range(1, count + 1)]
    )


def test_train_writes_a_calibration_that_loads_without_code(model_dir):
    path = model_dir / quantize.CALIBRATION_FILE
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    observers = [k for k in state if k.startswith("activation_post_process_")]
    assert len(observers) > 100
    fidelity = quantize.read_fidelity(model_dir)
    assert set(state) - set(observers) == {"weights_fingerprint"} | {
        f"fidelity.{k}" for k in asdict(fidelity)
    }
    assert fidelity.images == 101  # every val and train image of the 120-bin fixture: < 512
    assert 0.0 <= fidelity.agreement <= fidelity.checked_agreement <= 1.0


def with_fidelity(model_dir, out, checked_agreement, rechecked):
    """A copy of ``model_dir`` whose calibration records the given fidelity figures."""
    folder = shutil.copytree(model_dir, out)
    path = folder / quantize.CALIBRATION_FILE
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if "fidelity" not in k}
    fidelity = quantize.Fidelity(512, 0.98, 0.1, rechecked, checked_agreement)
    quantize.save_calibration(state, folder, fidelity)
    return folder


def test_auto_runs_int8_on_a_cpu_only_when_train_found_it_faithful(model_dir, tmp_path):
    faithful = with_fidelity(model_dir, tmp_path / "faithful", 0.995, rechecked=0.1)
    assert Counter.from_model_dir(faithful, device="cpu").precision == "int8"
    unfaithful = with_fidelity(model_dir, tmp_path / "unfaithful", 0.98, rechecked=0.1)
    assert Counter.from_model_dir(unfaithful, device="cpu").precision in ("bf16", "fp32")
    slow = with_fidelity(model_dir, tmp_path / "slow", 1.0, rechecked=0.3)
    assert Counter.from_model_dir(slow, device="cpu").precision in ("bf16", "fp32")
    # Asked for explicitly, int8 runs even so.
    assert Counter.from_model_dir(unfaithful, device="cpu", precision="int8").precision == "int8"
    (unfaithful / quantize.CALIBRATION_FILE).unlink()
    assert Counter.from_model_dir(unfaithful, device="cpu").precision in ("bf16", "fp32")


class Fixed(nn.Module):
    """A stand-in model answering fixed logits, for testing the re-check's routing alone."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, inputs):
        return self.logits[: len(inputs)].clone()


def test_close_calls_and_only_those_get_the_float_answer():
    int8 = Fixed([[2.0, 1.99, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 3.0]])  # row 0 is a near-tie
    fallback = Fixed([[0.0, 1.0, 0.0]])
    model = quantize.RecheckedInt8(int8, fallback, margin=0.05, autocast_context=nullcontext)
    logits = model(torch.zeros((3, 3, 8, 8)))
    assert logits.argmax(dim=1).tolist() == [1, 0, 2]
    assert (model.rechecked, model.images) == (1, 3)
    off = quantize.RecheckedInt8(int8, fallback, margin=0.0, autocast_context=nullcontext)
    assert off(torch.zeros((3, 3, 8, 8))).argmax(dim=1).tolist() == [0, 0, 2]


def test_fidelity_margin_covers_the_moves_it_measured():
    torch.manual_seed(0)
    reference = torch.randn(400, 4) * 3
    moved = reference + torch.randn(400, 4) * 0.05  # int8-like noise: flips only near-ties
    fidelity = quantize.measure_fidelity(Fixed(reference), Fixed(moved), [torch.zeros(400, 1)])
    assert fidelity.images == 400
    assert fidelity.agreement < 1.0  # some near-ties flipped ...
    assert fidelity.checked_agreement >= 0.995  # ... and the re-check takes them back
    assert 0.0 < fidelity.margin < 0.2 and 0.0 < fidelity.rechecked < 0.2


def test_int8_re_checked_gives_the_fp32_counts_on_new_bins(counting_model):
    fidelity = quantize.read_fidelity(counting_model)
    images = fresh_bins(200, 48)
    int8 = Counter.from_model_dir(counting_model, device="cpu", precision="int8")
    fp32 = Counter.from_model_dir(counting_model, device="cpu", precision="fp32", graph="eager")
    a, b = int8.predict_uint8(images), fp32.predict_uint8(images)
    assert int8.precision == "int8" and fp32.precision == "fp32"
    assert 0 < int8.model.rechecked < len(images)
    same = float((a.counts == b.counts).mean())
    # Here int8 alone matched fp32 on about 98.5 % of these 48 px bins, re-checked on 99-100 %.
    assert same >= 0.99, f"int8 and fp32 agree on {same:.1%} of 200 bins"
    assert np.abs(a.expected - b.expected).mean() < 0.05
    auto = Counter.from_model_dir(counting_model, device="cpu")
    assert (auto.precision == "int8") == fidelity.serves_int8


def test_int8_without_a_calibration_says_what_to_do(model_dir, tmp_path):
    uncalibrated = shutil.copytree(model_dir, tmp_path / "model")
    (uncalibrated / quantize.CALIBRATION_FILE).unlink()
    with pytest.raises(ModelNotFound, match=r"no quantization\.pt in model folder .*--precision"):
        Counter.from_model_dir(uncalibrated, device="cpu", precision="int8")


def test_a_calibration_for_other_weights_is_refused_by_name(model_dir, tmp_path):
    config = read_config(model_dir)
    other = save_model(build_model(config), config, tmp_path / "other")
    shutil.copy(model_dir / quantize.CALIBRATION_FILE, other / quantize.CALIBRATION_FILE)
    with pytest.raises(ValueError, match=r"quantization\.pt does not fit this model: .*weights"):
        Counter.from_model_dir(other, device="cpu", precision="int8")


def test_a_calibration_with_other_observers_is_refused_by_name(model_dir, tmp_path):
    folder = shutil.copytree(model_dir, tmp_path / "model")
    path = folder / quantize.CALIBRATION_FILE
    state = torch.load(path, weights_only=True)
    del state[next(k for k in state if k.startswith("activation_post_process_"))]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"does not fit this model: .* observers"):
        Counter.from_model_dir(folder, device="cpu", precision="int8")


def test_int8_is_refused_off_the_cpu_and_unknown_precisions_are_named(model_dir):
    with pytest.raises(ValueError, match="--precision int8 runs on a CPU"):
        resolve_inference_precision("int8", torch.device("cuda"), quantize.read_fidelity(model_dir))
    with pytest.raises(ValueError, match=r"one of auto, int8, bf16, fp16, fp32, got 'int4'"):
        resolve_inference_precision("int4", CPU, quantize.read_fidelity(model_dir))
    assert resolve_inference_precision("fp32", CPU, quantize.read_fidelity(model_dir)) == "fp32"


def test_calibration_needs_images(model_dir):
    model = build_model(ModelConfig(classes=(0, 1), preprocessing=Preprocessing(image_size=32)))
    with pytest.raises(ValueError, match="at least one image"):
        quantize.calibrate(model, [], 32)


def test_calibration_sample_spreads_over_the_split():
    assert quantize.calibration_sample(10, 64).tolist() == list(range(10))
    picked = quantize.calibration_sample(1000, 4)
    assert picked.tolist() == [0, 333, 666, 999]


def test_warm_up_is_not_counted_as_re_checked_requests(model_dir, tmp_path):
    faithful = with_fidelity(model_dir, tmp_path / "faithful", 1.0, rechecked=0.1)
    counter = Counter.from_model_dir(faithful, device="cpu")
    counter.warm_up((1, 2))
    assert (counter.model.images, counter.model.rechecked) == (0, 0)
    counter.predict_uint8(fresh_bins(3, counter.image_size))
    assert counter.model.images == 3


def test_a_staged_counter_upgrades_to_int8_while_another_thread_predicts(model_dir, tmp_path):
    """Counter.staged serves the eager float model at once and swaps int8 in when it is built.

    FX tracing (int8's prepare) patches torch.nn.Module.__call__ for the whole process: without
    the counter's lock a batch running meanwhile failed with "module is not installed as a
    submodule". Every batch here must succeed and give the counts of the finished int8 counter
    or of the float model.
    """
    import threading

    faithful = with_fidelity(model_dir, tmp_path / "faithful", 1.0, rechecked=0.1)
    counter, upgrade = Counter.staged(faithful, device="cpu", graph="frozen")
    assert counter.precision in ("bf16", "fp32") and counter.engine.graph == "eager"
    assert upgrade is not None
    images = fresh_bins(4, counter.image_size)
    reference = Counter.from_model_dir(faithful, device="cpu", graph="frozen")
    expected = reference.predict_uint8(images)
    eager = counter.predict_uint8(images)
    errors, answers, done = [], [], threading.Event()

    def serve():
        while not done.is_set():
            try:
                answers.append(counter.predict_uint8(images))
            except Exception as err:  # any failure fails the test
                errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        upgrade()
    finally:
        done.set()
        thread.join()
    assert not errors, errors[:1]
    assert answers
    assert counter.precision == "int8" and counter.engine.graph == "frozen"
    for answer in answers:
        assert answer.counts.tolist() in (expected.counts.tolist(), eager.counts.tolist())
    final = counter.predict_uint8(images)
    assert np.allclose(final.probabilities, expected.probabilities, atol=1e-3)


def test_auto_compiles_the_int8_re_check_only_when_it_re_checks_enough(model_dir, tmp_path):
    """The stored re-check share decides: below COMPILE_RECHECK_SHARE the re-check is frozen."""
    from invmon.serving.counter import COMPILE_RECHECK_SHARE, LoadPlan, resolve_graph

    few = with_fidelity(model_dir, tmp_path / "few", 1.0, rechecked=COMPILE_RECHECK_SHARE / 2)
    many = with_fidelity(model_dir, tmp_path / "many", 1.0, rechecked=COMPILE_RECHECK_SHARE)
    compiler = resolve_graph("auto", CPU)  # compiled where a C++ compiler exists
    assert LoadPlan.of(few, "cpu", "auto", "auto").graph == "frozen"
    assert LoadPlan.of(many, "cpu", "auto", "auto").graph == compiler
    # Asked for by name, the compiled graph is built whatever the share.
    assert LoadPlan.of(few, "cpu", "auto", "compiled").graph == "compiled"


class _Undecided(nn.Module):
    """An int8 stand-in whose every answer is a close call: the float model re-checks them all."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(inputs), 3)


def test_a_warmed_up_compiled_recheck_compiles_nothing_more():
    """A compiled graph guards on its inputs' strides and dispatch keys. Counter.warm_up makes
    plain NCHW tensors outside inference mode; served batches are channels_last inference
    tensors. Warmed up on the former, the compiled re-check compiled again at the first close
    call: a batch waited 35-41 s behind a ready predictor (docs/benchmarks.md)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(0)
    small = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    model = quantize.RecheckedInt8(
        _Undecided(), torch.compile(small, dynamic=True), 0.5, nullcontext
    )
    channels_last = torch.channels_last
    # As Counter.warm_up makes them: normalize's channels_last output, outside inference mode.
    warm = [torch.randn(n, 3, 16, 16).contiguous(memory_format=channels_last) for n in (1, 2, 8)]
    with torch.inference_mode():
        for inputs in warm:
            model.warm_up(inputs)
        graphs = counters["stats"]["unique_graphs"]
        for n in (3, 1, 5, 8):  # as Counter._logits passes a batch: an inference tensor
            model(torch.randn(n, 3, 16, 16).contiguous(memory_format=channels_last))
    assert counters["stats"]["unique_graphs"] == graphs
    assert model.rechecked == 17 + 11  # warm_up re-checks every image, as forward does
