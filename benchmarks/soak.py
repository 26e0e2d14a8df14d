"""Soak: minutes of mixed valid and invalid requests from several clients against the predictor.

The predictor runs behind KServe's ModelServer on loopback; each client thread sends, in a loop,
a random mix of valid requests (V1, V2 JSON, V2 binary, several images per request) and invalid
ones (bad base64, bytes that are not an image, truncated JPEG, an oversized image, too many
images, a wrong tensor shape or datatype, no input, malformed JSON, a wrong binary header, an
unknown model). Passes when no answer is a 5xx, every valid request gets 200, every invalid one
gets its 4xx, and the server's memory stays steady. Prints the status counts, the server's RSS at
the start and the end of the measured period (and its peak), and the end/start RSS ratio last.

    flock /tmp/invmon-cpu.lock .venv/bin/python benchmarks/soak.py --seconds 300
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from invmon.data.synth import make_bin
from invmon.data.transforms import Preprocessing
from invmon.serving.client import v1_request, v2_binary_request, v2_request
from invmon.serving.server import LocalServer
from invmon.training.model import ModelConfig, build_model, save_model

NAME = "bin-counter"
MAX_IMAGES = 8
MAX_IMAGE_BYTES = 300_000


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _noise_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(side).randbytes(side * side * 3)).save(
        out, "PNG"
    )
    return out.getvalue()


def request_mix(images: list[bytes]) -> list[tuple[str, str, bytes, dict, int]]:
    """(kind, path, body, headers, expected status) for every request kind the clients send."""
    v1, v2 = f"/v1/models/{NAME}:predict", f"/v2/models/{NAME}/infer"
    js = {"Content-Type": "application/json"}

    def as_json(body) -> bytes:
        return json.dumps(body).encode()

    binary, length = v2_binary_request(images[:3])
    bad_binary, bad_length = v2_binary_request(images[:1])
    big = _noise_png(400)
    assert len(big) > MAX_IMAGE_BYTES
    mix = [
        ("v1 one image", v1, as_json(v1_request(images[:1])), js, 200),
        ("v1 four images", v1, as_json(v1_request(images[:4])), js, 200),
        ("v2 json", v2, as_json(v2_request(images[1:3], "soak")), js, 200),
        ("v2 binary", v2, binary, {"Inference-Header-Content-Length": str(length)}, 200),
        ("bad base64", v1, as_json({"instances": [{"image": {"b64": "%%%"}}]}), js, 400),
        ("not an image", v1, as_json(v1_request([b"GIF89a but not really"])), js, 400),
        ("truncated jpeg", v1, as_json(v1_request([images[0][:2000]])), js, 400),
        ("oversized image", v1, as_json(v1_request([big])), js, 400),
        ("too many images", v1, as_json(v1_request(images[:1] * (MAX_IMAGES + 1))), js, 400),
        (
            "wrong shape",
            v2,
            as_json(
                {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0, 1, 2]}]}
            ),
            js,
            400,
        ),
        (
            "wrong datatype",
            v2,
            as_json({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}]}),
            js,
            400,
        ),
        ("no input", v2, as_json({"inputs": []}), js, 400),
        ("malformed json", v1, b'{"instances": [', js, 400),
        (
            "binary header too long",
            v2,
            bad_binary[:-7],
            {"Inference-Header-Content-Length": str(bad_length)},
            400,
        ),
        ("unknown model", "/v2/models/other/infer", as_json(v2_request(images[:1])), js, 404),
    ]
    return mix


class Client(threading.Thread):
    """Sends random requests of the mix until told to stop; tallies (kind, status)."""

    def __init__(self, url: str, mix, seed: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.host, self.port = url.removeprefix("http://").split(":")
        self.mix, self.random, self.stop = mix, random.Random(seed), stop
        self.tally: Counter = Counter()
        self.wrong: Counter = Counter()

    def run(self) -> None:
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
        while not self.stop.is_set():
            kind, path, body, headers, expected = self.random.choice(self.mix)
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0  # connection dropped: counted as a failure
                connection.close()
                connection = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
            self.tally[status] += 1
            if status != expected:
                self.wrong[(kind, status)] += 1
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--model", type=Path, help="model folder (default: untrained ResNet50)")
    args = parser.parse_args()

    model = args.model
    if model is None:
        config = ModelConfig(classes=tuple(range(6)), preprocessing=Preprocessing(args.image_size))
        model = save_model(build_model(config), config, Path(tempfile.mkdtemp()) / "model")
    images = [make_bin(seed=11, number=n, max_items=5)[1] for n in range(1, 9)]
    mix = request_mix(images)
    limits = ["--max_images", str(MAX_IMAGES), "--max_image_bytes", str(MAX_IMAGE_BYTES)]
    with LocalServer(model, extra_args=limits) as server:
        pid = server.process.pid
        stop = threading.Event()
        clients = [Client(server.url, mix, seed, stop) for seed in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(min(20.0, args.seconds / 10))  # let allocators settle before the baseline
        start_rss, peak, start = rss_mib(pid), 0.0, time.monotonic()
        samples = []
        while time.monotonic() - start < args.seconds:
            time.sleep(5)
            samples.append(rss_mib(pid))
            peak = max(peak, samples[-1])
        end_rss = rss_mib(pid)
        stop.set()
        for c in clients:
            c.join()
        alive = server.process.poll() is None
    tally, wrong = Counter(), Counter()
    for c in clients:
        tally.update(c.tally)
        wrong.update(c.wrong)
    total = sum(tally.values())
    server_errors = sum(n for status, n in tally.items() if status >= 500 or status == 0)
    print(
        f"{args.clients} clients, {args.seconds:.0f}s, {total} requests "
        f"({total / args.seconds:.1f}/s), {len(mix)} request kinds"
    )
    print("statuses:", dict(sorted(tally.items())))
    print("unexpected answers:", dict(wrong) or "none")
    print(f"5xx or dropped: {server_errors}; server alive at the end: {alive}")
    print(f"server RSS: start {start_rss:.0f} MiB, end {end_rss:.0f} MiB, peak {peak:.0f} MiB")
    print(f"RSS end/start ratio: {end_rss / start_rss:.3f}")


if __name__ == "__main__":
    main()
