"""No compile in the request path: a compiled engine is ready for every batch the batcher can form
before it serves, and compiles nothing after.

A dynamic TorchInductor graph is guarded on batch-size ranges (on a CPU: 1, 2-15, 16 and more);
warmed up on 1, 2 and 8 images only, the predictor compiled again at the first batch of 16 or
more, and every request of that burst waited for the compile (7.5-35.8 s at 64 px).
"""

import asyncio
import base64
import statistics
import time

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from invmon.data.synth import make_bin
from invmon.serving.compiled import CompiledGraph, eager_batches
from invmon.serving.counter import Counter
from invmon.serving.options import Limits, ServingOptions
from invmon.serving.predictor import BinCounterModel

NAME = "bin-counter"
LARGEST = 24  # past the 16-image boundary where a CPU conv graph is compiled again


def graphs_compiled() -> int:
    """Graphs Dynamo has compiled in this process so far."""
    return counters["stats"]["unique_graphs"]


class SmallConvNet(torch.nn.Module):
    """Small enough to compile in seconds; its convolution splits graphs by batch size the way
    a ResNet50's do."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def batch(size: int) -> torch.Tensor:
    return torch.randn(size, 3, 20, 20).contiguous(memory_format=torch.channels_last)


def test_a_compiled_graph_is_ready_for_every_batch_size_and_never_compiles_once_sealed():
    torch.manual_seed(0)
    model = SmallConvNet().eval().requires_grad_(False)
    graph = CompiledGraph(model, largest=LARGEST)
    with torch.inference_mode():
        graph(batch(1))  # warming up: compiles what every size up to LARGEST needs
        graph.seal()
        assert graph.graphs >= 1  # at least one size beyond the first needed its own graph
        before = graphs_compiled()
        for size in range(1, LARGEST + 1):
            inputs = batch(size)
            assert graph.fits(inputs), size
            assert torch.allclose(graph(inputs), model(inputs), atol=1e-4)
        assert graphs_compiled() == before
        assert graph.eager_batches == 0


class OtherConvNet(SmallConvNet):
    def forward(self, x):  # its own code object, so no graph compiled above fits it
        return self.head(torch.relu(self.conv(x)).amax((2, 3)))


def test_a_sealed_graph_runs_a_batch_no_graph_fits_eagerly_instead_of_compiling():
    model = OtherConvNet().eval().requires_grad_(False)
    graph = CompiledGraph(model, largest=1)  # made ready for single images only
    with torch.inference_mode():
        graph(batch(1))
        graph.seal()
        before = graphs_compiled()
        inputs = batch(5)
        assert not graph.fits(inputs)
        assert torch.allclose(graph(inputs), model(inputs), atol=1e-5)
    assert graphs_compiled() == before
    assert graph.eager_batches == 1


def v1_payload(images: list[bytes]) -> dict:
    return {"instances": [{"image": {"b64": base64.b64encode(i).decode()}} for i in images]}


async def timed_request(model: BinCounterModel, payload: dict) -> tuple[float, list[int]]:
    """One request through the predictor's own path (parse, decode, batcher): its wait and
    counts."""
    start = time.perf_counter()
    request = await model.preprocess(payload)
    answer = await model.postprocess(await model.predict(request))
    return time.perf_counter() - start, [p["count"] for p in answer["predictions"]]


async def burst(model: BinCounterModel, images: list[bytes]):
    """LARGEST single-image requests at once, and one request of LARGEST images."""
    singles = [timed_request(model, v1_payload([image])) for image in images]
    return await asyncio.gather(*singles, timed_request(model, v1_payload(images)))


@pytest.mark.slow
def test_a_burst_at_the_largest_batch_right_after_the_upgrade_compiles_nothing(model_dir):
    """fp32 compiled (what ``--precision auto`` serves on an AVX2-only CPU): once the background
    upgrade is done, a burst that forms the largest batch the batcher can form compiles no graph,
    runs no batch eagerly, and no request waits more than a few batch times (a full batch timed
    on the same engine right after). Counts are the eager model's."""
    options = ServingOptions(
        device="cpu", precision="fp32", graph="compiled", max_batch_images=LARGEST
    )
    model = BinCounterModel(NAME, str(model_dir), Limits(max_images=LARGEST), options)
    assert model.load()
    try:
        model.upgrader.join(timeout=900)
        assert model.counter.engine.graph == "compiled"
        images = [make_bin(seed=23, number=n, max_items=3)[1] for n in range(1, LARGEST + 1)]
        before = graphs_compiled()
        answers = asyncio.run(burst(model, images))
        assert graphs_compiled() == before
        assert eager_batches(model.counter.model) == 0
        assert model.batcher.stats.largest == LARGEST
        size = model.counter.image_size
        full = torch.from_numpy(np.zeros((LARGEST, 3, size, size), np.uint8))
        batch_times = []
        for _ in range(3):
            start = time.perf_counter()
            model.counter.predict_many([full])
            batch_times.append(time.perf_counter() - start)
        batch_time = statistics.median(batch_times)
        waits = [wait for wait, _ in answers]
        assert max(waits) <= 10 * batch_time, (max(waits), batch_time)
        assert graphs_compiled() == before
    finally:
        model.stop()
    eager = Counter.from_model_dir(model_dir, device="cpu", precision="fp32", graph="eager")
    expected = eager.predict_bytes(images).counts.tolist()
    assert [counts[0] for _, counts in answers[:-1]] == expected
    assert answers[-1][1] == expected
