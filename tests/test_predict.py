"""``invmon predict`` against a real ModelServer on loopback."""

import http.server
import json
import threading

import pytest

from invmon.cli import main
from invmon.serving.client import MalformedAnswer, PredictError, PredictorClient, predict_all
from invmon.serving.counter import Counter
from invmon.serving.server import LocalServer


@pytest.fixture(scope="module")
def server(model_dir):
    # Blocking: every answer from the frozen graph the in-process reference runs.
    with LocalServer(model_dir, extra_args=["--graph", "frozen", "--load", "blocking"]) as running:
        yield running


@pytest.fixture(scope="module")
def image_paths(raw_dir):
    return [raw_dir / "bin-images" / f"{n:05d}.jpg" for n in (4, 5, 6)]


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_predict_prints_a_count_per_image(server, image_paths, model_dir, protocol, capsys):
    assert (
        main(["predict", "--url", server.url, "--protocol", protocol, *map(str, image_paths)]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    expected = Counter.from_model_dir(model_dir, freeze=True).predict_bytes(
        [p.read_bytes() for p in image_paths]
    )
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in image_paths]
    assert [int(line.split("\t")[1].split()[1]) for line in lines] == expected.counts.tolist()


def test_v1_and_v2_clients_agree(server, image_paths):
    images = [p.read_bytes() for p in image_paths]
    v1 = PredictorClient(server.url, protocol="v1").predict(images)
    v2 = PredictorClient(server.url, protocol="v2").predict(images)
    assert [a.count for a in v1] == [a.count for a in v2]
    for a, b in zip(v1, v2, strict=True):
        assert set(a.probabilities) == set(b.probabilities) == set(range(6))
        assert a.expected_count == pytest.approx(b.expected_count, abs=1e-3)


def test_a_bad_image_is_reported_and_the_others_still_counted(server, image_paths, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(image_paths[0].read_bytes()[:300])
    images = {str(p): p.read_bytes() for p in image_paths}
    images[str(bad)] = bad.read_bytes()
    report = predict_all(PredictorClient(server.url), images, batch_size=4)
    assert set(report.answers) == {str(p) for p in image_paths}
    assert set(report.failed) == {str(bad)} and "image" in report.failed[str(bad)]


def test_cli_exits_1_naming_refused_images(server, image_paths, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    assert main(["predict", "--url", server.url, str(image_paths[0]), str(bad)]) == 1
    captured = capsys.readouterr()
    assert str(image_paths[0]) in captured.out
    assert "notes.jpg" in captured.err and "1 of 2 images were refused" in captured.err


def test_unreachable_server_and_bad_options_are_named(tmp_path, image_paths, capsys):
    with pytest.raises(PredictError, match="cannot reach"):
        PredictorClient("http://127.0.0.1:9", timeout=2).predict([b"x"])
    assert main(["predict", "--url", "localhost:8080", str(image_paths[0])]) == 2
    assert "--url must start with http://" in capsys.readouterr().err
    assert main(["predict", "--url", "http://x", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg" in capsys.readouterr().err


def test_json_and_binary_v2_requests_get_the_same_answers(server, image_paths):
    images = [p.read_bytes() for p in image_paths]
    binary = PredictorClient(server.url).predict(images, request_id="b")
    plain = PredictorClient(server.url, binary=False).predict(images, request_id="j")
    assert binary == plain


class _Garbage(http.server.BaseHTTPRequestHandler):
    """A "predictor" whose answers are not what the protocol promises."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(
            {"predictions": [{"count": "many"}]}
            if self.path.startswith("/v1/")
            else {"id": "other", "outputs": []}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_malformed_answer_is_an_error_not_a_count():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage) as garbage:
        threading.Thread(target=garbage.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{garbage.server_address[1]}"
        with pytest.raises(MalformedAnswer, match=r"V1 answer from .* is malformed"):
            PredictorClient(url, protocol="v1").predict([b"x"])
        with pytest.raises(MalformedAnswer, match=r"V2 answer .* malformed"):
            PredictorClient(url).predict([b"x"])
        with pytest.raises(MalformedAnswer, match="does not carry the request id 'mine'"):
            PredictorClient(url, binary=False).predict([b"x"], request_id="mine")
        garbage.shutdown()
