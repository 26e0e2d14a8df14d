"""The KServe predictor behind a real ModelServer, over real HTTP on loopback."""

import base64
import json
import urllib.request

import numpy as np
import pytest

from invmon.inference import Counter
from invmon.serve import LocalServer, post_json, v1_request, v2_request

NAME = "bin-counter"


@pytest.fixture(scope="module")
def server(model_dir):
    with LocalServer(model_dir, name=NAME) as running:
        yield running


@pytest.fixture(scope="module")
def images(raw_dir):
    return [(raw_dir / "bin-images" / f"{n:05d}.jpg").read_bytes() for n in (1, 2, 3)]


def test_health_and_readiness(server):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{NAME}/ready"):
        with urllib.request.urlopen(server.url + path, timeout=5) as response:
            assert response.status == 200


def test_v1_predicts_each_image_as_in_process(server, images, model_dir):
    status, body = post_json(f"{server.url}/v1/models/{NAME}:predict", v1_request(images))
    assert status == 200
    expected = Counter.from_model_dir(model_dir).predict_bytes(images)
    assert [p["count"] for p in body["predictions"]] == expected.counts.tolist()
    for prediction, probabilities in zip(body["predictions"], expected.probabilities, strict=True):
        assert list(prediction["probabilities"]) == ["0", "1", "2", "3", "4", "5"]
        assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert prediction["confidence"] == pytest.approx(probabilities.max(), abs=1e-3)


def test_v2_json_bytes(server, images):
    status, body = post_json(f"{server.url}/v2/models/{NAME}/infer", v2_request(images, "req-1"))
    assert status == 200 and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["count"]["shape"] == [3] and outputs["count"]["datatype"] == "INT64"
    assert outputs["probabilities"]["shape"] == [3, 6]
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(3, 6)
    expected = probabilities @ np.arange(6)
    assert np.allclose(outputs["expected_count"]["data"], expected, atol=1e-3)


def test_v2_fp32_tensor_input(server, model_dir, images):
    counter = Counter.from_model_dir(model_dir)
    import torch

    from invmon.transforms import normalize, prepare

    batch = torch.from_numpy(np.stack([prepare(b, 32) for b in images]))
    tensor = normalize(batch, counter.config.preprocessing).contiguous().numpy()
    body = {
        "inputs": [
            {
                "name": "pixels",
                "shape": list(tensor.shape),
                "datatype": "FP32",
                "data": tensor.reshape(-1).tolist(),
            }
        ]
    }
    status, answer = post_json(f"{server.url}/v2/models/{NAME}/infer", body)
    assert status == 200
    counts = next(o for o in answer["outputs"] if o["name"] == "count")["data"]
    assert counts == counter.predict_bytes(images).counts.tolist()


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("v1", {"instances": [{"image": {"b64": "@@not-base64@@"}}]}, "invalid base64"),
        (
            "v1",
            {"instances": [{"image": {"b64": base64.b64encode(b"plain text").decode()}}]},
            "not a recognised image",
        ),
        ("v1", {"instances": []}, "no images"),
        ("v1", {"rows": []}, "instances"),
        (
            "v2",
            {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}]},
            "datatype INT32",
        ),
        (
            "v2",
            {
                "inputs": [
                    {"name": "x", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}
                ]
            },
            "shape",
        ),
    ],
)
def test_bad_requests_get_400_naming_the_problem(server, path, body, message):
    url = (
        f"{server.url}/v1/models/{NAME}:predict"
        if path == "v1"
        else f"{server.url}/v2/models/{NAME}/infer"
    )
    status, answer = post_json(url, body)
    assert status == 400, answer
    assert message in json.dumps(answer)


def test_unknown_model_is_404(server, images):
    status, _ = post_json(f"{server.url}/v1/models/other:predict", v1_request(images[:1]))
    assert status == 404


def test_server_keeps_serving_after_bad_requests(server, images):
    post_json(f"{server.url}/v1/models/{NAME}:predict", {"instances": [{"image": {"b64": "x"}}]})
    status, _ = post_json(f"{server.url}/v1/models/{NAME}:predict", v1_request(images[:1]))
    assert status == 200
