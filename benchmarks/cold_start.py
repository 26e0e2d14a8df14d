"""Predictor cold start: time to ready, to the first correct answer, and the first 100 requests.

Each predictor is a fresh server process on loopback (the serving image's entry point, each run
with its own empty TorchInductor cache folder, as a new pod has), timed from just before the
process starts:

- ready: until ``GET /v2/health/ready`` answers 200 (polled every 50 ms);
- first correct: until a single-image V2 request gets the reference count (sent at ready, again
  until it is right);
- the first 100 requests after that, single images from 8 client threads: p50 and p99 latency,
  errors, and answers whose count differs from the reference;
- upgraded: with staged loading (the default), when the server logs that the final engine is
  swapped in (or that building it failed);
- steady: then 8 clients for ``--steady-seconds``: images/s on the final engine.

The reference counts and the baseline come from the naive predictor (benchmarks/predictor.py:
PIL, torchvision transforms, eager fp32, one image at a time), measured first in the same run.
Then the real predictor: its defaults (``--load staged --precision auto --graph auto``), its
defaults loaded blocking (the final engine built before ready, as before staged loading), and
one run per ``--precision`` and ``--graph`` choice (the other option at its default).

Model: --model DIR, or a ResNet50 trained here on synthetic bins at --image-size (by default the
model benchmarks/predictor.py trains; --train-bins and --train-epochs make a quicker one).

    flock /tmp/invmon-cpu.lock .venv/bin/python benchmarks/cold_start.py --model MODEL_DIR
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from invmon.serving.client import read_v2_answer, v2_binary_request
from invmon.serving.server import LocalServer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predictor import Load, NaiveServer, infer, load_images, train_quick_model  # noqa: E402

FIRST_REQUESTS = 100
CLIENTS = 8
UPGRADED, FAILED = "upgraded to", "upgrade failed"
CONFIGS = {
    "default": [],
    "--load blocking": ["--load", "blocking"],
    "--precision int8": ["--precision", "int8"],
    "--precision bf16": ["--precision", "bf16"],
    "--precision fp32": ["--precision", "fp32"],
    "--graph eager": ["--graph", "eager"],
    "--graph frozen": ["--graph", "frozen"],
    "--graph compiled": ["--graph", "compiled"],
}


def ask(host: str, port: int, body: tuple[bytes, int]) -> tuple[int, int | None]:
    """Send one single-image V2 request; return its status and the count (None on an error)."""
    import http.client

    connection = http.client.HTTPConnection(host, port, timeout=600)
    try:
        response, answer = infer(connection, *body)
        if response.status != 200:
            return response.status, None
        headers = {k.lower(): v for k, v in response.getheaders()}
        return 200, int(read_v2_answer(answer, headers)[1]["count"][0])
    finally:
        connection.close()


def first_requests(port: int, bodies, expected: list[int]) -> dict:
    """The first FIRST_REQUESTS single-image requests from CLIENTS threads: latency, errors."""
    lock, next_index = threading.Lock(), [0]
    latencies, errors, wrong = [], [0], [0]

    def client() -> None:
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= FIRST_REQUESTS:
                return
            start = time.perf_counter()
            status, count = ask("127.0.0.1", port, bodies[i % len(bodies)])
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)
                errors[0] += status != 200
                wrong[0] += status == 200 and count != expected[i % len(bodies)]

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "errors": errors[0],
        "wrong": wrong[0],
    }


def cold_start(server: LocalServer, bodies, expected, args, staged: bool) -> dict:
    """Start ``server`` cold and measure it (see the module docstring)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-", dir=args.work)
    server.poll, server.startup_timeout = 0.05, args.timeout
    start = time.monotonic()
    with server:
        result = {"ready_s": time.monotonic() - start}
        while ask("127.0.0.1", server.port, bodies[0])[1] != expected[0]:
            if time.monotonic() - start > args.timeout:
                raise TimeoutError(f"no correct answer after {args.timeout}s; see {server.log}")
        result["first_correct_s"] = time.monotonic() - start
        result.update(first_requests(server.port, bodies, expected))
        if staged and args.upgrade_timeout > 0:
            try:
                found = server.wait_for_log(UPGRADED, FAILED, timeout=args.upgrade_timeout)
                result["upgraded_s"] = time.monotonic() - start
                result["upgrade"] = "done" if found == UPGRADED else "FAILED"
            except TimeoutError:
                result["upgrade"] = "not done"
        if args.steady_seconds > 0:
            steady = Load(server.url, bodies, CLIENTS, args.steady_seconds).run()
            result["steady_img_s"] = steady["images_per_s"]
    result["log"] = str(server.log)
    return result


def row(name: str, r: dict) -> str:
    def cell(key: str, form: str) -> str:
        return format(r[key], form) if key in r else "-"

    upgraded = f"{cell('upgraded_s', '.1f')} ({r['upgrade']})" if "upgrade" in r else "-"
    return (
        f"| {name} | {cell('ready_s', '.1f')} | {cell('first_correct_s', '.1f')} | "
        f"{cell('p50_ms', '.0f')} | {cell('p99_ms', '.0f')} | {r['errors']} | {r['wrong']} | "
        f"{upgraded} | {cell('steady_img_s', '.1f')} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: train one here)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train-bins", type=int, default=600, help="bins to train a model on")
    parser.add_argument("--train-epochs", type=int, default=6)
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated: {', '.join(CONFIGS)}, or the predictor's flags "
        "('--load blocking --graph compiled')",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for ready")
    parser.add_argument(
        "--upgrade-timeout", type=float, default=600, help="seconds to wait for the upgrade (0: no)"
    )
    parser.add_argument("--steady-seconds", type=float, default=20, help="0: no steady load")
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    args.work = tempfile.mkdtemp(prefix="invmon-cold-start-")
    load_before = os.getloadavg()
    model = args.model or train_quick_model(
        args.image_size, Path(args.work), count=args.train_bins, epochs=args.train_epochs
    )
    bodies = [v2_binary_request([image]) for image in load_images(None, 64)]
    print(f"model {model}; load average before: {load_before[0]:.2f}", flush=True)

    naive = NaiveServer(model, log=Path(args.work) / "naive.log")
    with naive:  # the reference counts: eager fp32
        expected = [ask("127.0.0.1", naive.port, body)[1] for body in bodies]
    results = {"naive": cold_start(naive, bodies, expected, args, staged=False)}
    for name in names:
        log = Path(args.work) / f"{len(results)}-{name.strip('-').replace(' ', '-')}.log"
        flags = CONFIGS.get(name, shlex.split(name))
        server = LocalServer(model, extra_args=flags, log=log)
        staged = "blocking" not in name
        results[name] = cold_start(server, bodies, expected, args, staged)
        print(row(name, results[name]), flush=True)

    print(
        f"\n| predictor | ready s | first correct s | first {FIRST_REQUESTS} p50 ms | p99 ms | "
        "errors | wrong counts | upgraded s | steady img/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(row(name, r))
    load_after = os.getloadavg()
    print(f"\nload average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"logs in {args.work}")
    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
