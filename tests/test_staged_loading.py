"""Staged loading: ready on the eager float model, the final engine swapped in from a background
thread, and readiness that stays honest meanwhile.

The serving tests run the real ModelServer over HTTP on loopback (``LocalServer``); the server's
log tells when the background upgrade finished or failed.
"""

import logging
import threading

import numpy as np
import pytest
import torch
from test_quantize import with_fidelity

from invmon.data.synth import make_bin
from invmon.serving.client import post_json, v2_request
from invmon.serving.counter import Counter
from invmon.serving.options import ServingOptions
from invmon.serving.predictor import BinCounterModel
from invmon.serving.server import LocalServer
from invmon.training import quantize

NAME = "bin-counter"
UPGRADED, FAILED = "upgraded to", "upgrade failed"


def bins(count: int) -> list[bytes]:
    """Synthetic bins (counts 0-2) that no model here was trained on."""
    return [make_bin(seed=505, number=n, max_items=2)[1] for n in range(1, count + 1)]


def outputs(server: LocalServer, images: list[bytes], name: str = "count") -> list:
    """The server's output ``name`` for each image, one V2 request per image; a request that gets
    no answer within 120 s raises."""
    answers = []
    for image in images:
        url = f"{server.url}/v2/models/{NAME}/infer"
        status, body = post_json(url, v2_request([image]), timeout=120)
        assert status == 200, body
        answers.append(next(o for o in body["outputs"] if o["name"] == name)["data"][0])
    return answers


def counts(server: LocalServer, images: list[bytes]) -> list[int]:
    """The count the server gives each image."""
    return outputs(server, images)


def during_and_after_upgrade(model, flags: list[str], images, name: str, tmp_path, monkeypatch):
    """Serve ``model`` staged with ``flags``; ask for output ``name`` of ``images`` until the
    log says the upgrade is done, then once more. Returns (answers during, after, the log).

    The server compiles into an empty TorchInductor cache: with kernels cached by an earlier run
    of the same model (another checkout's CI run, say) the upgrade can finish before two rounds
    of requests, and the test would check nothing during it."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    log = tmp_path / "server.log"
    server = LocalServer(model, name=NAME, log=log, startup_timeout=300, extra_args=flags)
    during = []
    with server:
        assert "upgrading in the background" in log.read_text()
        while UPGRADED not in log.read_text():
            during.append(outputs(server, images, name))
            assert FAILED not in log.read_text(), log.read_text()
        after = outputs(server, images, name)
    assert len(during) >= 2, "the upgrade finished before requests could be sent during it"
    return during, after, log.read_text()


def test_requests_during_the_background_upgrade_get_the_counts_after_it(
    model_dir, tmp_path, monkeypatch
):
    """From ready on, answers come from the eager model, then from the compiled graph swapped in
    (compiling takes tens of seconds, so many requests are answered during it): every answer is
    the count the compiled graph gives. fp32, so that the two differ by float rounding only and
    the counts must be identical even for this barely trained model."""
    flags = ["--graph", "compiled", "--precision", "fp32"]
    during, after, log = during_and_after_upgrade(
        model_dir, flags, bins(12), "count", tmp_path, monkeypatch
    )
    for answer in during:
        assert answer == after
    assert "upgraded to fp32 (compiled graph)" in log


def test_requests_during_a_bf16_background_compile_are_answered(
    counting_model, tmp_path, monkeypatch
):
    """bf16, what ``--precision auto`` serves on most CPUs: the eager model runs under autocast
    while Dynamo traces the compiled graph on the upgrade thread. Autocast's cast cache and the
    GIL deadlocked the two (the whole server froze mid-compile, a request waited forever) until
    the served weights stopped requiring gradients. Every request sent during the compile is
    answered, with the expected counts of the compiled graph up to bf16 rounding."""
    flags = ["--graph", "compiled", "--precision", "bf16"]
    during, after, log = during_and_after_upgrade(
        counting_model, flags, bins(6), "expected_count", tmp_path, monkeypatch
    )
    assert "upgraded to bf16 (compiled graph)" in log
    assert np.allclose(during, [after] * len(during), atol=0.1), (during, after)


def test_a_batch_waits_for_a_torch_fx_trace_on_another_thread(model_dir):
    """torch.fx patches torch.nn.Module for the whole process while it traces, as TorchInductor
    does mid-compile on the upgrade thread: a request served meanwhile failed with "module is not
    installed as a submodule" (once in a CI run). A staged counter's batch waits for the trace.

    The traced module holds the trace open until the batch has run or 5 s have passed, so the
    order of the two says whether the batch ran inside the trace."""
    counter, upgrade = Counter.staged(model_dir, device="cpu", graph="frozen")
    assert upgrade is not None  # there is something to build, so tracing is kept apart
    images = np.zeros((2, 3, counter.image_size, counter.image_size), np.uint8)
    expected = counter.predict_uint8(images).counts.tolist()
    inside, batch_done, order = threading.Event(), threading.Event(), []

    class HeldOpen(torch.nn.Module):
        def forward(self, x):
            inside.set()
            batch_done.wait(timeout=5)
            order.append("trace ended")
            return x

    tracer = threading.Thread(target=torch.fx.symbolic_trace, args=(HeldOpen(),))
    tracer.start()
    assert inside.wait(timeout=60)
    try:
        answer = counter.predict_uint8(images).counts.tolist()
        order.append("batch ran")
    finally:
        batch_done.set()
        tracer.join()
    assert order == ["trace ended", "batch ran"]
    assert answer == expected


@pytest.fixture
def misfitting_calibration(model_dir, tmp_path):
    """A model folder whose int8 calibration train found faithful, but for other weights: int8
    is chosen (--precision auto), and building it fails in the background."""
    folder = with_fidelity(model_dir, tmp_path / "model", 1.0, rechecked=0.01)
    path = folder / quantize.CALIBRATION_FILE
    state = torch.load(path, weights_only=True)
    state["weights_fingerprint"] = state["weights_fingerprint"] + 1.0
    torch.save(state, path)
    return folder


def test_a_failed_upgrade_leaves_the_eager_model_serving_and_logs_why(
    misfitting_calibration, tmp_path
):
    images = bins(4)
    reference, _ = Counter.staged(misfitting_calibration, device="cpu")  # the eager float model
    expected = reference.predict_bytes(images).counts.tolist()
    log = tmp_path / "server.log"
    with LocalServer(misfitting_calibration, name=NAME, log=log) as server:
        assert server.wait_for_log(UPGRADED, FAILED) == FAILED
        assert counts(server, images) == expected
    text = log.read_text()
    assert "still serving" in text and "does not fit this model" in text, text


def test_blocking_load_refuses_what_staged_loading_serves_in_float(misfitting_calibration):
    """--load blocking builds int8 before ready, so the misfitting calibration stops it."""
    server = LocalServer(misfitting_calibration, name=NAME, extra_args=["--load", "blocking"])
    with pytest.raises(RuntimeError, match="exited"), server:
        pass


def test_a_failing_graph_build_keeps_the_predictor_ready_on_the_eager_model(
    model_dir, monkeypatch, caplog
):
    """In process: the frozen graph's build raises (as a broken TorchScript would). The eager
    stage before it (the float model, or int8 with an eager re-check) keeps serving."""
    import invmon.serving.counter as counter_module

    def broken(*args, **kwargs):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(counter_module, "frozen", broken)
    model = BinCounterModel(NAME, str(model_dir), options=ServingOptions(graph="frozen"))
    with caplog.at_level(logging.INFO, logger="invmon"):
        assert model.load() is True
        model.upgrader.join(timeout=300)
    try:
        assert model.ready and model.counter.engine.graph == "eager"
        assert "upgrade failed" in caplog.text and "no TorchScript here" in caplog.text
        images = np.zeros((2, 3, model.counter.image_size, model.counter.image_size), np.uint8)
        assert len(model.counter.predict_uint8(images).counts) == 2
    finally:
        model.stop()


def test_blocking_and_staged_loading_end_on_the_same_engine(model_dir):
    staged, upgrade = Counter.staged(model_dir, device="cpu", graph="frozen")
    if upgrade is not None:
        worker = threading.Thread(target=upgrade)
        worker.start()
        worker.join(timeout=300)
    blocking = Counter.from_model_dir(model_dir, device="cpu", graph="frozen")
    assert (staged.precision, staged.engine.graph) == (blocking.precision, "frozen")
    size = staged.image_size
    images = np.stack(
        [np.zeros((3, size, size), np.uint8), np.full((3, size, size), 200, np.uint8)]
    )
    assert np.allclose(
        staged.predict_uint8(images).probabilities,
        blocking.predict_uint8(images).probabilities,
        atol=1e-4,
    )
