"""The serving engine built ahead of time (an AOTInductor package in the model folder): served
from the start when it fits, with the eager model's counts; refused, with the reason logged, when
the model, torch, the CPU, the precision, the batch range or the package's bytes do not match, or
the manifest is not signed with the predictor's key.

One real build (minutes of the C++ compiler) for the module; the checks read what it wrote.
"""

import dataclasses
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from invmon.serving import prebuilt
from invmon.serving.counter import Counter

LARGEST = 8
KEY = "test-only signing key"
# A CPU capability that is not this machine's (machines of this kind have AVX-512 or AVX2 only).
OTHER_CPU = "AVX2" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "AVX512"


@pytest.fixture(autouse=True)
def signing_key(monkeypatch):
    monkeypatch.setenv(prebuilt.KEY_ENV, KEY)


def build_copy(model_dir, tmp_path_factory, precision: str):
    """A copy of the tiny model folder with an engine prebuilt in ``precision`` for batches of 1
    to LARGEST."""
    folder = tmp_path_factory.mktemp(f"prebuilt-{precision}") / "model"
    shutil.copytree(model_dir, folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(prebuilt.KEY_ENV, KEY)
        prebuilt.build(folder, LARGEST, precision)
    return folder


@pytest.fixture(scope="module")
def built(model_dir, tmp_path_factory):
    return build_copy(model_dir, tmp_path_factory, "fp32")


@pytest.fixture(scope="module")
def built_bf16(model_dir, tmp_path_factory):
    """The same, built in bf16 (autocast inside the package)."""
    return build_copy(model_dir, tmp_path_factory, "bf16")


def images(counter: Counter, count: int) -> np.ndarray:
    rng = np.random.default_rng(4)
    size = counter.image_size
    return rng.integers(0, 256, (count, 3, size, size), dtype=np.uint8)


def staged(folder, largest=LARGEST, **how):
    how = {"device": "cpu", "precision": "fp32", "graph": "auto", **how}
    return Counter.staged(folder, largest_batch=largest, use_prebuilt=True, **how)


@pytest.mark.slow
def test_a_prebuilt_engine_serves_from_the_start_with_the_eager_models_counts(built):
    counter, upgrade = staged(built)
    assert upgrade is None  # nothing to build in the background
    assert (counter.precision, counter.engine.graph) == ("fp32", "prebuilt")
    eager = Counter.from_model_dir(built, device="cpu", precision="fp32", graph="eager")
    for size in (1, 3, LARGEST):
        batch = images(counter, size)
        ours, reference = counter.predict_uint8(batch), eager.predict_uint8(batch)
        assert ours.counts.tolist() == reference.counts.tolist()
        assert np.allclose(ours.probabilities, reference.probabilities, atol=1e-4)
    # A batch larger than the package was built for runs on the eager model.
    batch = images(counter, LARGEST + 2)
    expected = eager.predict_uint8(batch).counts.tolist()
    assert counter.predict_uint8(batch).counts.tolist() == expected


@pytest.mark.slow
def test_a_bf16_engine_serves_a_bf16_predictor_with_the_counts_of_eager_bf16(built_bf16):
    """A predictor on a CPU with native bf16 serves bf16 with ``--precision auto``; an fp32-only
    package never fitted it, so such predictors compiled in the background after every start.
    bf16 is exercised here on any CPU (emulated where not native)."""
    counter, upgrade = staged(built_bf16, precision="bf16")
    assert upgrade is None
    assert (counter.precision, counter.engine.graph) == ("bf16", "prebuilt")
    eager = Counter.from_model_dir(built_bf16, device="cpu", precision="bf16", graph="eager")
    for size in (1, 3, LARGEST):
        batch = images(counter, size)
        ours, reference = counter.predict_uint8(batch), eager.predict_uint8(batch)
        assert ours.counts.tolist() == reference.counts.tolist()
        assert np.allclose(ours.probabilities, reference.probabilities, atol=2e-2)
    fp32, _ = staged(built_bf16, precision="fp32")  # the package is not the precision it serves
    assert fp32.engine.graph != "prebuilt"


def test_an_engine_is_built_in_fp32_or_bf16_and_auto_is_what_a_predictor_would_serve():
    from invmon.training.device import resolve_precision

    native = resolve_precision("auto", torch.device("cpu")) == torch.bfloat16
    assert prebuilt.float_precision("auto") == ("bf16" if native else "fp32")
    assert [prebuilt.float_precision(p) for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    with pytest.raises(ValueError, match=r"built in auto, fp32, bf16, not 'int8'"):
        prebuilt.float_precision("int8")


# Run in a fresh interpreter: this test process has imported torchvision long since.
LOAD_AND_LIST_IMPORTS = """
import sys
from invmon.serving.counter import Counter
counter, upgrade = Counter.staged(
    sys.argv[1], largest_batch=int(sys.argv[2]), use_prebuilt=True,
    device="cpu", precision="fp32", graph="auto",
)
assert upgrade is None and counter.engine.graph == "prebuilt", counter.engine
print(sorted(m for m in ("torchvision", "torch._dynamo", "torch._inductor") if m in sys.modules))
"""


@pytest.mark.slow
def test_a_predictor_on_a_prebuilt_engine_imports_no_compiler_and_no_torchvision(built):
    """What makes it ready in seconds: torchvision imports torch._dynamo and TorchInductor (about
    2 s), and the eager model it would build is not needed while every batch fits the package."""
    command = [sys.executable, "-c", LOAD_AND_LIST_IMPORTS, str(built), str(LARGEST)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def edited_manifest(built, tmp_path, sign=True, **changes):
    """A copy of ``built`` whose manifest says ``changes``, signed again with the key (as our
    build would have signed an engine built elsewhere) unless ``sign`` is False."""
    folder = tmp_path / "model"
    shutil.copytree(built, folder)
    path = folder / prebuilt.ENGINE_DIR / prebuilt.MANIFEST_FILE
    manifest = prebuilt.Manifest(**{**json.loads(path.read_text()), **changes})
    if sign:
        manifest = manifest.signed(KEY.encode())
    path.write_text(json.dumps(dataclasses.asdict(manifest)))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"torch": "2.13.0"}, "built for torch version 2.13.0"),
        ({"cpu": OTHER_CPU}, f"built for CPU capability {OTHER_CPU}"),
        ({"model_sha256": "0" * 64}, "built for model 000"),
        ({"precision": "bf16"}, "built for precision bf16"),
        ({"largest_batch": LARGEST - 1}, f"built for batches up to {LARGEST - 1}"),
        ({"package_sha256": "0" * 64}, "does not hash to its manifest"),
        ({"torch": "2.13.0", "sign": False}, "is not signed with this predictor's"),
        ({"signature": "0" * 64, "sign": False}, "is not signed with this predictor's"),
    ],
)
def test_a_prebuilt_engine_that_does_not_fit_is_not_loaded_and_the_log_says_why(
    built, tmp_path, caplog, changes, reason
):
    folder = edited_manifest(built, tmp_path, **changes)
    with caplog.at_level(logging.INFO, logger="invmon"):
        counter, upgrade = staged(folder)
    assert "prebuilt engine not used" in caplog.text and reason in caplog.text, caplog.text
    assert counter.engine.graph == "eager" and upgrade is not None  # the background path


@pytest.mark.slow
def test_changed_weights_or_more_batches_than_built_for_refuse_the_engine(built, tmp_path):
    wanted = prebuilt.here(built, "fp32", 32, LARGEST)
    assert prebuilt.misfit(built, wanted) is None
    assert "batches up to" in prebuilt.misfit(built, prebuilt.here(built, "fp32", 32, 64))
    folder = tmp_path / "model"
    shutil.copytree(built, folder)
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")
    assert "built for model" in prebuilt.misfit(folder, prebuilt.here(folder, "fp32", 32, 8))


@pytest.mark.slow
def test_without_the_key_the_package_is_never_opened(built, monkeypatch, caplog):
    monkeypatch.delenv(prebuilt.KEY_ENV)
    with caplog.at_level(logging.INFO, logger="invmon"):
        counter, upgrade = staged(built)
    assert counter.engine.graph == "eager" and upgrade is not None
    assert f"{prebuilt.KEY_ENV} is not set" in caplog.text
    assert KEY not in caplog.text


@pytest.mark.slow
def test_a_package_changed_after_its_manifest_was_signed_is_not_loaded(built, tmp_path, caplog):
    folder = tmp_path / "model"
    shutil.copytree(built, folder)
    with open(folder / prebuilt.ENGINE_DIR / prebuilt.PACKAGE_FILE, "ab") as package:
        package.write(b"\0")
    with caplog.at_level(logging.INFO, logger="invmon"):
        counter, upgrade = staged(folder)
    assert counter.engine.graph == "eager" and upgrade is not None
    assert "does not hash to its manifest" in caplog.text


@pytest.mark.slow
def test_prebuilt_off_never_opens_the_package(built):
    counter, upgrade = Counter.staged(built, device="cpu", precision="fp32", graph="auto")
    assert counter.engine.graph == "eager" and upgrade is not None


@pytest.mark.slow
def test_without_the_cpp_package_loader_the_public_loader_runs_the_same_package(built, monkeypatch):
    """_load_package calls PyTorch's C++ loader directly (0.4 s sooner for a 224 px model) and
    falls back to ``torch._inductor.aoti_load_package`` where a PyTorch has no such class: the
    fallback must run the package to the same logits."""
    package = built / prebuilt.ENGINE_DIR / prebuilt.PACKAGE_FILE
    direct = prebuilt._load_package(package)
    monkeypatch.setattr(prebuilt, "_cpp_package_loader", lambda: None)
    public = prebuilt._load_package(package)
    size = Counter.from_model_dir(built, device="cpu", precision="fp32").image_size
    batch = torch.rand(3, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.allclose(public(batch), direct(batch), atol=1e-5)
