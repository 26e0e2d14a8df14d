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

With ``--ramp``, instead: time to full speed with an engine prebuilt into the model folder
(``invmon serve --prebuild``, its build timed first) against today's default (``--prebuilt off``)
in the same run, both at ``--ramp-precision`` (fp32 by default, or bf16). From ready, 8 clients
send single images back to back until the server has nothing left to build (its upgrade logged)
and then ``--steady-seconds`` more; each answer is timestamped from process start. Reported per
predictor: ready, the time by which a 5-second window of answers first ran at 90 % of the
default's steady-state images/s (the last ``--steady-seconds``, on its final engine) and at 90 %
of its own, its steady images/s, and counts that differ from the naive eager fp32 predictor's.

Model: --model DIR, or a ResNet50 trained here on synthetic bins at --image-size (by default the
model benchmarks/predictor.py trains; --train-bins and --train-epochs make a quicker one).

    flock /tmp/invmon-cpu.lock .venv/bin/python benchmarks/cold_start.py --model MODEL_DIR
    flock /tmp/invmon-cpu.lock .venv/bin/python benchmarks/cold_start.py --ramp
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import shlex
import shutil
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


WINDOW = 5.0  # seconds of answers that must run at the target rate


def ramp(server: LocalServer, bodies, args) -> dict:
    """Start ``server`` cold and load it from ready on (see ``--ramp`` in the module docstring)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-", dir=args.work)
    server.poll, server.startup_timeout = 0.05, args.timeout
    start = time.monotonic()
    answered, lock, stop = [], threading.Lock(), threading.Event()

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        i = offset
        while not stop.is_set():
            response, _ = infer(connection, *bodies[i % len(bodies)])
            if response.status == 200:
                with lock:
                    answered.append(time.monotonic() - start)
            i += CLIENTS
        connection.close()

    with server:
        result = {"ready_s": time.monotonic() - start}
        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        if "upgrading in the background" in server.log.read_text():
            try:
                found = server.wait_for_log(UPGRADED, FAILED, timeout=args.upgrade_timeout)
                result["upgrade"] = "done" if found == UPGRADED else "FAILED"
            except TimeoutError:
                result["upgrade"] = "not done"
            result["upgraded_s"] = time.monotonic() - start
        time.sleep(args.steady_seconds)
        stop.set()
        for t in threads:
            t.join()
        end = time.monotonic() - start
        result["counts"] = [ask("127.0.0.1", server.port, body)[1] for body in bodies]
    times = np.sort(np.array(answered))
    result["times"] = times
    result["steady_img_s"] = float(np.sum(times >= end - args.steady_seconds) / args.steady_seconds)
    result["log"] = str(server.log)
    return result


def time_to_rate(times: np.ndarray, rate: float) -> float | None:
    """When (from process start) a WINDOW of answers first ran at ``rate`` images/s: the end of
    the first such window; None if none did."""
    ends = np.searchsorted(times, times + WINDOW)
    reached = np.nonzero((ends - np.arange(len(times))) / WINDOW >= rate)[0]
    return float(times[reached[0]] + WINDOW) if len(reached) else None


def ramp_comparison(model: Path, bodies, expected: list[int], args) -> None:
    """Prebuild the engine into a copy of ``model``; compare time to full speed (``--ramp``)."""
    from invmon.serving.prebuilt import KEY_ENV, build

    os.environ.setdefault(KEY_ENV, secrets.token_hex(16))  # this run's key; servers inherit it
    folder = Path(args.work) / "prebuilt-model"
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("engine"))
    start = time.monotonic()
    build(folder, 64, args.ramp_precision)
    print(f"prebuilt engine built in {time.monotonic() - start:.1f}s", flush=True)
    results = {}
    # A float precision (an int8 model never uses a package): fp32, what --precision auto serves
    # on an AVX2-only CPU when int8 is not faithful, or bf16, what it serves where bf16 is native.
    configs = {"default (--prebuilt off)": ["--prebuilt", "off"], "prebuilt": []}
    for name, flags in configs.items():
        flags = ["--precision", args.ramp_precision, *flags]
        log = Path(args.work) / f"ramp-{len(results)}.log"
        results[name] = ramp(LocalServer(folder, extra_args=flags, log=log), bodies, args)
        print(f"{name}: ready {results[name]['ready_s']:.1f}s", flush=True)
    reference = results["default (--prebuilt off)"]["steady_img_s"]
    print(
        "\n| predictor | ready s | 90 % of default's steady img/s at s | 90 % of own at s | "
        "upgraded s | steady img/s | wrong counts |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        to_default = time_to_rate(r["times"], 0.9 * reference)
        to_own = time_to_rate(r["times"], 0.9 * r["steady_img_s"])
        wrong = sum(c != e for c, e in zip(r["counts"], expected, strict=True))
        upgraded = f"{r['upgraded_s']:.1f} ({r['upgrade']})" if "upgrade" in r else "-"
        print(
            f"| {name} | {r['ready_s']:.1f} | {_seconds(to_default)} | {_seconds(to_own)} | "
            f"{upgraded} | {r['steady_img_s']:.1f} | {wrong} |"
        )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


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
    parser.add_argument(
        "--ramp", action="store_true", help="time to full speed: prebuilt engine against default"
    )
    parser.add_argument(
        "--ramp-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="--ramp: the precision of both predictors and of the engine",
    )
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
    if args.ramp:
        ramp_comparison(model, bodies, expected, args)
        print(f"\nload average (1 min) before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
        print(f"logs in {args.work}")
        print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))
        return
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
