"""Predictor throughput and latency under 8 concurrent clients, against a naive predictor.

Both predictors load the same model folder and run behind the same KServe ModelServer HTTP stack
on loopback; 8 client threads send single-image V2 requests (binary-data extension, as Triton's
clients do) back to back for a fixed time. Reported per predictor: images/s, p50 and p99 latency,
errors; then whether both give the same count for every image, and the throughput ratio last.

- naive: PIL decode, torchvision transforms, eager fp32, one image at a time in the handler
  (benchmarks/naive_predictor.py);
- predictor: the real one with its defaults (decode threads, grouping of concurrent requests into
  batches; int8 with close calls re-checked in bf16 when train found int8 faithful for this model,
  else bf16 where the CPU supports it; see invmon.training.quantize);
- predictor, no grouping: the same with ``--max_batch_images 1``, to show what grouping adds.

Images: the real ABID sample when ABID_SAMPLE_DIR is set (or --images DIR), else synthetic bins.
Model: --model DIR, or (default) a ResNet50 trained here for six epochs on 600 synthetic bins at
--image-size, so that its answers spread over the classes and the comparison means something.
Counts are compared on the load's images and on 300 new synthetic bins.

    flock /tmp/invmon-cpu.lock .venv/bin/python benchmarks/predictor.py
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from invmon.serving.client import read_v2_answer, v2_binary_request
from invmon.serving.server import LocalServer

# The synthetic training data is test support, kept under tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

NAME = "bin-counter"
HERE = Path(__file__).resolve().parent


class NaiveServer(LocalServer):
    """benchmarks/naive_predictor.py in a subprocess on loopback."""

    def command(self) -> list[str]:
        return [
            sys.executable,
            str(HERE / "naive_predictor.py"),
            "--model_dir",
            self.model_dir,
            "--http_port",
            str(self.port),
            "--configure_logging",
            "false",
        ]


def load_images(folder: Path | None, count: int) -> list[bytes]:
    """Bin photos from ``folder``/bin-images, or ``count`` synthetic bins."""
    if folder is not None:
        paths = sorted((folder / "bin-images").glob("*.jpg"))[:count]
        return [p.read_bytes() for p in paths]
    from invmon.data.synth import make_bin

    return [make_bin(seed=7, number=n, max_items=5)[1] for n in range(1, count + 1)]


def train_quick_model(image_size: int, out: Path, count: int = 600, epochs: int = 6) -> Path:
    """A ResNet50 that counts 0-3 items in synthetic bins (about 80 % accurate), trained here.

    Six epochs on 600 synthetic bins at ``image_size`` (fewer with ``count`` and ``epochs``, for a
    quicker, less accurate model). Not on the ABID sample: a model trained
    for minutes on 300 real photos answers nearly the same for every photo (two epochs: "5" for
    all 300), which makes "same count as the naive predictor" say nothing.
    """
    from support.datasets import synthetic_shards

    from invmon.training.config import TrainConfig
    from invmon.training.loop import fit

    shards = synthetic_shards(
        out,
        count,
        seed=7,
        max_items=3,
        classes="0-3",
        split="0.8,0.1,0.1",
        image_size=image_size,
        workers=2,
    )
    config = TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, device="cpu")
    fit(shards, config, out=out / "model", quiet=True)
    return out / "model"


def infer(connection: http.client.HTTPConnection, body: bytes, json_length: int):
    """Send one binary V2 request on a kept-alive connection; return the response and its body."""
    connection.request(
        "POST",
        f"/v2/models/{NAME}/infer",
        body,
        {"Inference-Header-Content-Length": str(json_length)},
    )
    response = connection.getresponse()
    return response, response.read()


class Load:
    """Client threads sending single-image V2 requests back to back."""

    def __init__(self, url: str, bodies: list[tuple[bytes, int]], clients: int, seconds: float):
        self.host, self.port = url.removeprefix("http://").split(":")
        self.bodies, self.clients, self.seconds = bodies, clients, seconds
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.lock = threading.Lock()

    def _client(self, offset: int, stop_at: float) -> None:
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
        i, latencies, statuses = offset, [], {}
        while time.monotonic() < stop_at:
            body, json_length = self.bodies[i % len(self.bodies)]
            start = time.perf_counter()
            response, _ = infer(connection, body, json_length)
            latencies.append(time.perf_counter() - start)
            statuses[response.status] = statuses.get(response.status, 0) + 1
            i += self.clients
        connection.close()
        with self.lock:
            self.latencies += latencies
            for status, n in statuses.items():
                self.statuses[status] = self.statuses.get(status, 0) + n

    def run(self) -> dict:
        stop_at = time.monotonic() + self.seconds
        threads = [
            threading.Thread(target=self._client, args=(k, stop_at)) for k in range(self.clients)
        ]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        ok = self.statuses.get(200, 0)
        latencies = np.array(self.latencies) * 1000
        return {
            "images_per_s": ok / elapsed,
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "requests": int(sum(self.statuses.values())),
            "errors": int(sum(n for s, n in self.statuses.items() if s != 200)),
        }


def counts_of(url: str, bodies: list[tuple[bytes, int]]) -> list[int]:
    """The count each image gets, asked one request at a time."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    counts = []
    for body, json_length in bodies:
        response, answer = infer(connection, body, json_length)
        headers = {k.lower(): v for k, v in response.getheaders()}
        counts.append(int(read_v2_answer(answer, headers)[1]["count"][0]))
    connection.close()
    return counts


def measure(
    server: LocalServer, bodies, clients: int, seconds: float, warmup: float, checks: dict
) -> dict:
    """Throughput and latency under load, then the count of every image of every ``checks`` set.

    A predictor started with a log is measured once its staged loading has swapped in the final
    engine (or failed to, which the log says): the steady state, not the first seconds.
    """
    with server:
        # The predictor logs this before it reports ready.
        if server.log is not None and "upgrading in the background" in server.log.read_text():
            found = server.wait_for_log("upgraded to", "upgrade failed", timeout=1800)
            print(f"predictor {' '.join(server.extra_args)}: {found} ({server.log})", flush=True)
        Load(server.url, bodies, clients, warmup).run()
        result = Load(server.url, bodies, clients, seconds).run()
        result["counts"] = {name: counts_of(server.url, b) for name, b in checks.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: train a quick one)")
    parser.add_argument("--images", type=Path, help="folder with bin-images/ (default: sample)")
    parser.add_argument("--count", type=int, default=300, help="images to cycle through")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--skip-unbatched", action="store_true")
    parser.add_argument(
        "--server-args", default="", help="extra flags for the predictor, e.g. '--graph frozen'"
    )
    args = parser.parse_args()

    folder = args.images or (
        Path(os.environ["ABID_SAMPLE_DIR"]) if "ABID_SAMPLE_DIR" in os.environ else None
    )
    images = load_images(folder, args.count)
    source = (
        f"{len(images)} real ABID images from {folder}"
        if folder
        else f"{len(images)} synthetic bins"
    )
    work = Path(tempfile.mkdtemp(prefix="invmon-bench-"))
    model = args.model or train_quick_model(args.image_size, work)
    bodies = [v2_binary_request([image]) for image in images]
    from invmon.data.synth import make_bin

    # Counts are compared on the load's photos and on new bins like the quick model's training
    # data, where its answers spread over every class.
    held_out = [make_bin(seed=404, number=n, max_items=3)[1] for n in range(1, args.count + 1)]
    checks = {
        "load images": bodies,
        "new synthetic bins": [v2_binary_request([b]) for b in held_out],
    }
    import torch

    from invmon.serving.counter import resolve_inference_precision
    from invmon.training.device import resolve_precision
    from invmon.training.quantize import read_fidelity

    precision = resolve_inference_precision("auto", torch.device("cpu"), read_fidelity(model))
    if precision == "auto":
        precision = "bf16" if resolve_precision("auto", torch.device("cpu")) else "fp32"
    print(
        f"model {model} (the predictor's --precision auto runs {precision} on this CPU); {source}; "
        f"{args.clients} clients, {args.seconds:.0f}s per run",
        flush=True,
    )

    load = (bodies, args.clients, args.seconds, args.warmup, checks)
    runs = {"naive": measure(NaiveServer(model), *load)}
    flags = args.server_args.split()
    logs = Path(work)
    runs["predictor"] = measure(
        LocalServer(model, extra_args=flags, startup_timeout=600, log=logs / "predictor.log"),
        *load,
    )
    if not args.skip_unbatched:
        unbatched = LocalServer(
            model,
            extra_args=[*flags, "--max_batch_images", "1"],
            startup_timeout=600,
            log=logs / "unbatched.log",
        )
        runs["predictor, no grouping"] = measure(unbatched, *load)

    print(
        f"\n{'predictor':<24}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'requests':>10}{'errors':>8}"
    )
    for name, r in runs.items():
        print(
            f"{name:<24}{r['images_per_s']:>10.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['requests']:>10}{r['errors']:>8}"
        )
    for check in checks:
        naive_counts = np.array(runs["naive"]["counts"][check])
        spread = np.bincount(naive_counts).tolist()
        print(f"{check}: naive counts per class {spread}")
        for name in list(runs)[1:]:
            same = float((np.array(runs[name]["counts"][check]) == naive_counts).mean())
            print(f"  same count as naive ({name}): {same:.2%} of {len(naive_counts)} images")
    summary = {k: {m: v for m, v in r.items() if m != "counts"} for k, r in runs.items()}
    print(json.dumps(summary))
    ratio = runs["predictor"]["images_per_s"] / runs["naive"]["images_per_s"]
    print(f"throughput ratio predictor/naive: {ratio:.2f}x")


if __name__ == "__main__":
    main()
