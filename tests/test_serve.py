"""The KServe predictor behind a real ModelServer, over real HTTP on loopback.

Every bad-request case goes through the server's whole HTTP stack and must come back as HTTP 400
(or 404/413) with a message naming the problem, after which the server still answers.
"""

import base64
import io
import json
import struct
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from invmon.data.transforms import normalize, prepare
from invmon.serving.client import post_json, v1_request, v2_request
from invmon.serving.counter import Counter
from invmon.serving.predictor import BinCounterModel
from invmon.serving.server import LocalServer

NAME = "bin-counter"
MAX_IMAGES = 6
MAX_IMAGE_BYTES = 200_000
MAX_PIXELS = 2_000_000


@pytest.fixture(scope="module")
def server(model_dir):
    limits = [
        "--graph",
        "frozen",  # the in-process reference below runs the same graph: answers agree exactly
        "--load",
        "blocking",  # ... from the first request on (staged, the first ones run eagerly)
        "--max_images",
        str(MAX_IMAGES),
        "--max_image_bytes",
        str(MAX_IMAGE_BYTES),
        "--max_pixels",
        str(MAX_PIXELS),
    ]
    # Blocking loads build the frozen graph before ready: minutes on a busy 2-core machine.
    with LocalServer(model_dir, name=NAME, extra_args=limits, startup_timeout=600) as running:
        yield running


@pytest.fixture(scope="module")
def counter(model_dir):
    # The server runs the frozen graph; so does the in-process reference.
    return Counter.from_model_dir(model_dir, freeze=True)


@pytest.fixture(scope="module")
def images(raw_dir):
    return [(raw_dir / "bin-images" / f"{n:05d}.jpg").read_bytes() for n in (1, 2, 3)]


def _v1(server):
    return f"{server.url}/v1/models/{NAME}:predict"


def _v2(server):
    return f"{server.url}/v2/models/{NAME}/infer"


def binary_v2_body(images: list[bytes], outputs_binary: bool = False) -> tuple[bytes, int]:
    """A V2 body with the binary-data extension: JSON header, then length-prefixed images."""
    raw = b"".join(struct.pack("<I", len(b)) + b for b in images)
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(images)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    if outputs_binary:
        header["parameters"] = {"binary_data_output": True}
    text = json.dumps(header).encode()
    return text + raw, len(text)


def post_bytes(url: str, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_health_and_readiness(server):
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        f"/v2/models/{NAME}/ready",
        f"/v1/models/{NAME}",
    ):
        with urllib.request.urlopen(server.url + path, timeout=5) as response:
            assert response.status == 200
    with urllib.request.urlopen(f"{server.url}/v1/models/{NAME}", timeout=5) as response:
        assert json.loads(response.read())["ready"] is True


def test_not_ready_before_a_successful_load(tmp_path, model_dir):
    model = BinCounterModel(NAME, str(model_dir))
    assert model.ready is False
    broken = BinCounterModel(NAME, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        broken.load()
    assert broken.ready is False


def test_a_server_whose_model_fails_to_load_never_reports_ready(tmp_path):
    with pytest.raises(RuntimeError, match="exited"), LocalServer(tmp_path, startup_timeout=60):
        pass


def test_v1_predicts_each_image_as_in_process(server, images, counter):
    status, body = post_json(_v1(server), v1_request(images))
    assert status == 200
    expected = counter.predict_bytes(images)
    assert [p["count"] for p in body["predictions"]] == expected.counts.tolist()
    for prediction, probabilities in zip(body["predictions"], expected.probabilities, strict=True):
        assert list(prediction["probabilities"]) == ["0", "1", "2", "3", "4", "5"]
        assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert prediction["confidence"] == pytest.approx(probabilities.max(), abs=1e-3)
        expected_count = sum(int(c) * p for c, p in prediction["probabilities"].items())
        assert prediction["expected_count"] == pytest.approx(expected_count, abs=1e-3)


def test_v2_json_bytes(server, images, counter):
    status, body = post_json(_v2(server), v2_request(images, "req-1"))
    assert status == 200 and body["id"] == "req-1" and body["model_name"] == NAME
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["count"]["shape"] == [3] and outputs["count"]["datatype"] == "INT64"
    assert outputs["count"]["data"] == counter.predict_bytes(images).counts.tolist()
    assert outputs["probabilities"]["shape"] == [3, 6]
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(3, 6)
    assert np.allclose(outputs["expected_count"]["data"], probabilities @ np.arange(6), atol=1e-3)


def test_v2_binary_extension_carries_raw_jpeg_bytes(server, images, counter):
    body, json_length = binary_v2_body(images)
    headers = {"Inference-Header-Content-Length": str(json_length)}
    status, answer, _ = post_bytes(_v2(server), body, headers)
    assert status == 200, answer
    outputs = {o["name"]: o for o in json.loads(answer)["outputs"]}
    assert outputs["count"]["data"] == counter.predict_bytes(images).counts.tolist()


def test_v2_binary_outputs_when_asked(server, images, counter):
    body, json_length = binary_v2_body(images[:2], outputs_binary=True)
    status, answer, headers = post_bytes(
        _v2(server), body, {"Inference-Header-Content-Length": str(json_length)}
    )
    assert status == 200
    header_length = int(headers["inference-header-content-length"])
    header = json.loads(answer[:header_length])
    count = next(o for o in header["outputs"] if o["name"] == "count")
    size = count["parameters"]["binary_data_size"]
    start = header_length + sum(
        o["parameters"]["binary_data_size"]
        for o in header["outputs"][: header["outputs"].index(count)]
    )
    counts = np.frombuffer(answer[start : start + size], dtype="<i8")
    assert counts.tolist() == counter.predict_bytes(images[:2]).counts.tolist()


def test_tritonclient_http_infer(server, images, counter):
    """NVIDIA Triton's HTTP client (binary-data extension both ways) gets counts back."""
    tritonclient = pytest.importorskip("tritonclient.http")
    client = tritonclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready(NAME)
    image = tritonclient.InferInput("image", [len(images)], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    outputs = [
        tritonclient.InferRequestedOutput("count", binary_data=True),
        tritonclient.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = client.infer(NAME, [image], outputs=outputs, request_id="triton-1")
    expected = counter.predict_bytes(images)
    assert result.as_numpy("count").tolist() == expected.counts.tolist()
    assert result.as_numpy("probabilities").shape == (3, 6)
    assert result.get_response()["id"] == "triton-1"
    client.close()


def test_tritonclient_json_base64(server, images, counter):
    tritonclient = pytest.importorskip("tritonclient.http")
    client = tritonclient.InferenceServerClient(server.url.removeprefix("http://"))
    image = tritonclient.InferInput("image", [1], "BYTES")
    encoded = np.array([base64.b64encode(images[0])], dtype=np.object_)
    image.set_data_from_numpy(encoded, binary_data=False)
    result = client.infer(NAME, [image])
    assert result.as_numpy("count").tolist() == counter.predict_bytes(images[:1]).counts.tolist()
    client.close()


def _fp32_tensor(counter, images) -> np.ndarray:
    batch = torch.from_numpy(np.stack([prepare(b, counter.image_size) for b in images]))
    return normalize(batch, counter.config.preprocessing).contiguous().numpy()


def test_v2_fp32_tensor_input_json_and_binary(server, counter, images):
    tensor = _fp32_tensor(counter, images)
    expected = counter.predict_bytes(images).counts.tolist()
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
    status, answer = post_json(_v2(server), body)
    assert status == 200
    assert next(o for o in answer["outputs"] if o["name"] == "count")["data"] == expected

    raw = tensor.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    status, answer, _ = post_bytes(
        _v2(server), header + raw, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 200, answer
    assert (
        next(o for o in json.loads(answer)["outputs"] if o["name"] == "count")["data"] == expected
    )


def _jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (120, 90, 60)).save(out, "JPEG", quality=50)
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _v2_json(name="image", shape=(1,), datatype="BYTES", data=None) -> dict:
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}]}


BAD_REQUESTS = {
    "invalid base64": (
        "v1",
        {"instances": [{"image": {"b64": "@@not-base64@@"}}]},
        "invalid base64",
    ),
    "not an image": (
        "v1",
        {"instances": [{"image": {"b64": _b64(b"plain text")}}]},
        "not a recognised image",
    ),
    "no images": ("v1", {"instances": []}, "no images"),
    "no instances": ("v1", {"rows": []}, "instances"),
    "instance without image": ("v1", {"instances": [{"picture": "x"}]}, "instance 0"),
    "body is a list": ("v1", [1, 2], "expected a JSON object"),
    "too many images": (
        "v1",
        {"instances": [{"image": {"b64": "AAAA"}}] * (MAX_IMAGES + 1)},
        f"at most {MAX_IMAGES}",
    ),
    "wrong datatype": ("v2", _v2_json(datatype="INT32", data=[1]), "datatype INT32"),
    "wrong tensor shape": (
        "v2",
        _v2_json("x", (1, 3, 8, 8), "FP32", [0.0] * 192),
        "shape [1, 3, 8, 8]",
    ),
    "tensor data does not fill its shape": (
        "v2",
        _v2_json("x", (1, 3, 32, 32), "FP32", [0.0] * 10),
        "does not match",
    ),
    "infinite values in tensor": (
        "v2",
        _v2_json("x", (1, 3, 32, 32), "FP32", [1e39] * 3072),
        "infinite",
    ),
    "missing input": ("v2", {"inputs": []}, "exactly one input"),
    "no inputs field": ("v2", {"id": "1"}, "inputs"),
    "two inputs": ("v2", {"inputs": _v2_json(data=["AAAA"])["inputs"] * 2}, "exactly one input"),
    "BYTES element count differs from shape": (
        "v2",
        _v2_json(shape=(2,), data=["AAAA"]),
        "shape [2]",
    ),
    "BYTES element not a string": ("v2", _v2_json(data=[5]), "base64 strings"),
    "unknown output": (
        "v2",
        {**_v2_json(data=[_b64(_jpeg(64, 48))]), "outputs": [{"name": "colour"}]},
        "unknown output",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_400_naming_the_problem(server, case):
    path, body, message = BAD_REQUESTS[case]
    status, answer = post_json(_v1(server) if path == "v1" else _v2(server), body)
    assert status == 400, answer
    assert message in json.dumps(answer), answer


def test_truncated_jpeg_is_refused(server, images):
    status, answer = post_json(_v1(server), v1_request([images[0][: len(images[0]) // 2]]))
    assert status == 400 and "image 0" in answer["error"], answer


def test_image_over_the_byte_limit_is_refused(server):
    big = np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(big).save(out, "PNG")
    assert len(out.getvalue()) > MAX_IMAGE_BYTES
    status, answer = post_json(_v1(server), v1_request([out.getvalue()]))
    assert status == 400 and f"over the limit of {MAX_IMAGE_BYTES}" in answer["error"], answer


def test_image_over_the_pixel_limit_is_refused_before_decoding(server):
    status, answer = post_json(_v1(server), v1_request([_jpeg(2000, 1500)]))
    assert status == 400 and f"over the limit of {MAX_PIXELS}" in answer["error"], answer


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b'{"inputs": [{"name": "x"}]}', {}, "shape"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"}]}', {}, "neither data"),
        (b"{}", {"Inference-Header-Content-Length": "900"}, "body holds 2 bytes"),
        (b"{}", {"Inference-Header-Content-Length": "two"}, "must be an integer"),
    ],
)
def test_malformed_v2_bodies_get_400(server, body, headers, message):
    status, answer, _ = post_bytes(_v2(server), body, headers)
    assert status == 400, answer
    assert message in answer.decode(), answer


def test_binary_data_that_does_not_match_its_header_gets_400(server, images):
    body, json_length = binary_v2_body(images[:1])
    for broken, message in (
        (body[:-10], "remain"),
        (body + b"extra", "follow the JSON"),
    ):
        status, answer, _ = post_bytes(
            _v2(server), broken, {"Inference-Header-Content-Length": str(json_length)}
        )
        assert status == 400 and message in answer.decode(), answer


def test_schema_errors_in_json_requests_are_400_not_422(server):
    status, answer = post_json(_v2(server), {"inputs": [{"name": "x", "datatype": "BYTES"}]})
    assert status == 400 and "shape" in answer["error"], answer


def test_request_body_over_the_limit_is_refused_without_being_kept(server):
    limit = MAX_IMAGES * (MAX_IMAGE_BYTES * 4 // 3 + 1024) + 1024 * 1024
    status, answer, _ = post_bytes(
        _v1(server), b"x" * (limit + 1), {"Content-Type": "application/json"}
    )
    assert status == 413 and "over the limit" in answer.decode()


def test_unknown_model_is_404(server, images):
    status, _ = post_json(f"{server.url}/v1/models/other:predict", v1_request(images[:1]))
    assert status == 404
    status, _ = post_json(f"{server.url}/v2/models/other/infer", v2_request(images[:1]))
    assert status == 404


def test_server_keeps_serving_after_bad_requests(server, images):
    post_json(_v1(server), {"instances": [{"image": {"b64": "x"}}]})
    post_bytes(_v2(server), b"\xff\x00garbage", {"Inference-Header-Content-Length": "3"})
    status, _ = post_json(_v1(server), v1_request(images[:1]))
    assert status == 200


@pytest.fixture(scope="module")
def default_server(model_dir):
    """The predictor with its default settings (here: a TorchInductor-compiled graph)."""
    with LocalServer(model_dir, name=NAME, startup_timeout=600) as running:
        yield running


def test_default_graph_choice(monkeypatch):
    from invmon.serving.counter import resolve_graph

    monkeypatch.setenv("CXX", sys.executable)  # a program that exists: compile on a CPU
    assert resolve_graph("auto", torch.device("cpu")) == "compiled"
    monkeypatch.setenv("CXX", "no-such-compiler")  # none: the frozen graph
    assert resolve_graph("auto", torch.device("cpu")) == "frozen"
    assert resolve_graph("auto", torch.device("cuda")) == "frozen"
    with pytest.raises(ValueError, match="--graph must be one of"):
        resolve_graph("jit", torch.device("cpu"))


def test_concurrent_requests_each_get_their_own_answer(default_server, raw_dir, counter):
    """Requests grouped into one model batch are answered per request, in the right order."""
    server = default_server
    bins = [(raw_dir / "bin-images" / f"{n:05d}.jpg").read_bytes() for n in range(1, 17)]
    expected = counter.predict_bytes(bins).probabilities

    def one(i):
        status, body = post_json(_v2(server), v2_request([bins[i]], f"r{i}"))
        assert status == 200 and body["id"] == f"r{i}"
        return next(o for o in body["outputs"] if o["name"] == "probabilities")["data"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(len(bins))))
    assert np.allclose(np.array(answers), expected, atol=2e-2)


def test_the_serving_image_logs_the_predictors_lines_where_kserve_logs():
    """Without this, KServe's logging setup drops what the predictor logs (precision, batches)."""
    code = (
        "import logging; from invmon.serving.server import _log_with_kserve; "
        "_log_with_kserve(None); "
        "logging.getLogger('invmon.serving.predictor').info('model loaded: int8 on cpu')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = (out.stdout + out.stderr).strip()  # KServe logs to stderr
    assert "invmon.serving.predictor INFO" in line and line.endswith("model loaded: int8 on cpu"), (
        out
    )


def _flags(parser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_invmon_serve_and_the_serving_image_derive_the_same_options():
    """One definition (ServeSettings): the image adds KServe's flags instead of port and name."""
    from invmon.cli import build_parser
    from invmon.cluster.inference_service import ServiceSpec, render_inference_service
    from invmon.serving.server import image_parser

    serve = build_parser(only="serve")._subparsers._group_actions[0].choices["serve"]
    image = image_parser()
    assert {"--max-pixels", "--decode-threads", "--max_pixels", "--decode_threads"} <= _flags(serve)
    assert _flags(serve) - {"--port", "--name"} <= _flags(image)
    assert {"--http_port", "--model_name", "--workers"} <= _flags(image)
    assert "--port" not in _flags(image) and "--name" not in _flags(image)
    # What an InferenceService passes, and what LocalServer passes, both parse.
    container = render_inference_service(ServiceSpec(model_uri="s3://m/x"))["spec"]["predictor"]
    args = image.parse_args([*container["containers"][0]["args"], "--max_images", "3"])
    assert (args.model, args.model_name, args.max_images) == ("/mnt/models", "bin-counter", 3)
    assert args.enable_grpc is False


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain; charset=utf-8", "text/xml"]
)
def test_v1_reads_a_json_body_whatever_content_type_it_declares(
    server, images, counter, content_type
):
    """curl -d declares application/x-www-form-urlencoded, as the README's example sends."""
    body = json.dumps(v1_request(images[:2])).encode()
    status, answer, _ = post_bytes(_v1(server), body, {"Content-Type": content_type})
    assert status == 200, answer
    counts = [p["count"] for p in json.loads(answer)["predictions"]]
    assert counts == counter.predict_bytes(images[:2]).counts.tolist()


def test_a_v1_body_that_is_not_json_is_400_naming_its_declared_type(server):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, answer, _ = post_bytes(_v1(server), b"image=bin.jpg", form)
    assert status == 400, answer
    assert "not JSON" in answer.decode() and "x-www-form-urlencoded" in answer.decode(), answer
    status, _, _ = post_bytes(_v1(server), b"{broken", {"Content-Type": "application/json"})
    assert status == 400
