"""Benchmark: objects/s of `invmon ingest` against the original project's one-at-a-time loop.

Both copy the same ABID-sized objects (images of about 57 KB, metadata of about 2 KB) from the same
loopback S3 server (moto, in its own process) through a proxy (its own process) that adds 20 ms to
every request, as a nearby S3 region does. A third measurement is the ceiling: many parallel raw
GETs (urllib3, no disk, no bookkeeping) against the same proxy in the same run. The baseline a user
would reach for instead is s5cmd (the Go S3 copier), copying the same bucket with the same number of
requests in flight: both are timed as whole processes, start-up included, alternating, and
`invmon ingest` also writes its report and checks every object it copied.

    .venv/bin/python benchmarks/ingest.py            # 1,200 bins = 2,400 objects

Prints objects/s and peak memory of each, then the ratios, last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import urllib3

from invmon.data.s3 import make_client, make_public_bucket

# The network simulator is test support, kept under tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.netsim import Faults, free_port, process, wait_for_port

BUCKET = "abid-benchmark"


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process, so that it does not share the client's GIL."""
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return child, f"http://127.0.0.1:{port}"


def seed(url: str, bins: int) -> list[str]:
    """Upload ``bins`` ABID-sized image + metadata pairs; return the keys."""
    client = make_client(url, anonymous=True, max_connections=16)
    make_public_bucket(client, BUCKET)
    rng = np.random.default_rng(0)
    # ABID: mean image 57 KB; metadata documents about 2 KB.
    sizes = np.clip(rng.normal(57_000, 18_000, bins), 15_000, 160_000).astype(int)
    keys = []

    def put(number: int) -> None:
        bin_id = f"{number + 1:05d}"
        image = rng.bytes(int(sizes[number]))
        document = json.dumps({"EXPECTED_QUANTITY": 1, "pad": "x" * 1900}).encode()
        client.put_object(Bucket=BUCKET, Key=f"bin-images/{bin_id}.jpg", Body=image)
        client.put_object(Bucket=BUCKET, Key=f"metadata/{bin_id}.json", Body=document)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(bins)))
    for number in range(bins):
        keys += [f"bin-images/{number + 1:05d}.jpg", f"metadata/{number + 1:05d}.json"]
    return keys


def _watch_peak_rss(pid: int, peak: list[int], done: threading.Event) -> None:
    """Keep ``peak[0]`` at the process's VmHWM in MiB until it exits (``done``).

    Not the rusage of ``wait4``: a child's ``ru_maxrss`` includes the pages of this Python process
    it was forked from, before it ran its own program (every child read this process's 76-82 MiB).
    VmHWM is the peak of the program's own memory since it started.
    """
    status = Path(f"/proc/{pid}/status")
    while not done.wait(0.02):
        try:
            text = status.read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak[0] = max(peak[0], int(line.split()[1]) // 1024)


def run_child(args: list[str]) -> tuple[float, int, str]:
    """Run a command; return wall seconds, its peak RSS in MiB, and its stdout."""
    start = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak, done = [0], threading.Event()
    watcher = threading.Thread(target=_watch_peak_rss, args=(child.pid, peak, done), daemon=True)
    watcher.start()
    out = child.stdout.read()
    child.wait()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    if child.returncode:
        raise RuntimeError(f"{args[:4]} failed with exit code {child.returncode}")
    return seconds, peak[0], out


ORIGINAL = """
import sys, time, boto3, os
from botocore import UNSIGNED
from botocore.config import Config
url, bucket, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                  config=Config(signature_version=UNSIGNED))
keys = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
    keys += [o["Key"] for o in page.get("Contents", [])]
keys = keys[:n]
start = time.perf_counter()
for key in keys:  # the original notebook: one download_file after another
    os.makedirs(os.path.join(out, os.path.dirname(key)), exist_ok=True)
    s3.download_file(bucket, key, os.path.join(out, key))
print(len(keys), time.perf_counter() - start)
"""


def original_loop(url: str, out: Path, objects: int) -> tuple[float, int]:
    """The original project's loop in its own process: objects/s and peak RSS."""
    _, rss, text = run_child([sys.executable, "-c", ORIGINAL, url, BUCKET, str(out), str(objects)])
    copied, seconds = text.split()
    return int(copied) / float(seconds), rss


def raw_gets(url: str, keys: list[str], threads: int) -> float:
    """The ceiling: parallel GETs of every key, bodies read and dropped."""
    pool = urllib3.PoolManager(maxsize=threads)

    def get(key: str) -> int:
        response = pool.request("GET", f"{url}/{BUCKET}/{key}")
        if response.status != 200:
            raise RuntimeError(f"GET {key}: HTTP {response.status}")
        return len(response.data)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as executor:
        list(executor.map(get, keys))
    return len(keys) / (time.perf_counter() - start)


FUNCTION = """
import sys
from invmon.data.s3 import S3Options
from invmon.stages import ingest
url, bucket, out, workers, limit = sys.argv[1:6]
report = ingest.run(ingest.IngestSettings(source=f"s3://{bucket}", out=out,
                    s3=S3Options(endpoint_url=url, anonymous=True), workers=int(workers),
                    limit=int(limit) or None))
"""


def invmon_ingest(url: str, out: Path, workers: int, limit: int = 0, cli: bool = False):
    """Ingest in its own process, as `invmon ingest` (``cli``) or as the KFP component calls it.

    Returns objects/s over the copy (the report's seconds), wall seconds with start-up, peak RSS
    in MiB and the number of objects.
    """
    if cli:
        args = [sys.executable, "-m", "invmon.cli", "ingest", "--source", f"s3://{BUCKET}"]
        args += ["--out", str(out), "--endpoint-url", url, "--anonymous"]
        args += ["--workers", str(workers)] + (["--limit", str(limit)] if limit else [])
    else:
        args = [sys.executable, "-c", FUNCTION, url, BUCKET, str(out), str(workers), str(limit)]
    wall, rss, _ = run_child(args)
    report = json.loads((out / "ingest_report.json").read_text())
    if report["failed"] or report["copied"] != report["objects"]:
        raise RuntimeError(f"ingest did not copy everything: {report}")
    return report["objects"] / report["seconds"], wall, rss, report["objects"]


def s5cmd_copy(url: str, out: Path, workers: int) -> tuple[float, int, int]:
    """s5cmd copying the whole bucket: wall seconds with start-up, peak RSS, files written."""
    binary = Path(sys.executable).with_name("s5cmd")
    args = [str(binary), "--endpoint-url", url, "--no-sign-request", "--numworkers", str(workers)]
    wall, rss, _ = run_child([*args, "cp", f"s3://{BUCKET}/*", f"{out}/"])
    return wall, rss, sum(1 for p in out.rglob("*") if p.is_file())


def versus_s5cmd(url: str, tmp: Path, workers: int, rounds: int, objects: int) -> list[float]:
    """`invmon ingest` (the CLI) against s5cmd; the wall-time ratios, one a round.

    The order alternates (s5cmd first in odd rounds, ingest first in even ones): moto slows down
    as it serves, run after run, so a fixed order would hand the later process a slower server
    in every round.
    """
    ratios = []
    for round_ in range(rounds):
        runs = {}
        order = ("s5cmd", "ingest") if round_ % 2 == 0 else ("ingest", "s5cmd")
        for name in order:
            if name == "s5cmd":
                runs[name] = s5cmd_copy(url, tmp / f"s5-{round_}", workers)
            else:
                _, *runs[name] = invmon_ingest(url, tmp / f"cli-{round_}", workers, cli=True)
        (s5_wall, s5_rss, copied), (cli_wall, cli_rss, _) = runs["s5cmd"], runs["ingest"]
        if copied != objects:
            raise RuntimeError(f"s5cmd copied {copied} of {objects} objects")
        ratios.append(s5_wall / cli_wall)
        print(
            f"round {round_ + 1} ({order[0]} first): s5cmd ({workers} workers) {s5_wall:.2f}s, "
            f"{objects / s5_wall:.1f} objects/s, peak RSS {s5_rss} MiB; `invmon ingest` "
            f"({workers} in flight) {cli_wall:.2f}s, {objects / cli_wall:.1f} objects/s, "
            f"peak RSS {cli_rss} MiB"
        )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", type=int, default=1200, help="bins (2 objects each)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="added to each request")
    parser.add_argument("--workers", type=int, default=32, help="ingest requests in flight")
    parser.add_argument("--raw-threads", type=int, default=64, help="threads of the raw GETs")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of each pair")
    parser.add_argument(
        "--s5cmd-workers", type=int, default=64, help="requests in flight of s5cmd and ingest"
    )
    parser.add_argument(
        "--original-objects", type=int, default=0, help="objects the original loop copies (all)"
    )
    args = parser.parse_args()
    moto, moto_url = start_moto()
    try:
        print(f"seeding {args.bins} bins ({2 * args.bins} objects) into moto at {moto_url}")
        keys = seed(moto_url, args.bins)
        faults = Faults(delay=args.delay_ms / 1000)
        with process(moto_url, faults) as url, tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            print(f"delay proxy ({args.delay_ms:.0f} ms per request) at {url}")
            raw_gets(url, keys[:200], args.raw_threads)  # warm the server up
            raws, ingests = [], []
            for round_ in range(args.rounds):
                raws.append(raw_gets(url, keys, args.raw_threads))
                rate, _, rss, n = invmon_ingest(url, tmp / f"r{round_}", args.workers)
                ingests.append(rate)
                print(
                    f"round {round_ + 1}: raw parallel GETs ({args.raw_threads} threads) "
                    f"{raws[-1]:6.1f} objects/s; ingest ({args.workers} in flight) {rate:6.1f} "
                    f"objects/s, peak RSS {rss} MiB"
                )
            _, _, half_rss, _ = invmon_ingest(url, tmp / "half", args.workers, args.bins // 2)
            cli_rate, cli_wall, cli_rss, _ = invmon_ingest(url, tmp / "cli", args.workers, cli=True)
            print(
                f"ingest peak RSS: {rss} MiB for {n} objects, {half_rss} MiB for half of them; "
                f"`invmon ingest` (the CLI): {cli_rate:.1f} objects/s, {cli_wall:.1f}s wall with "
                f"start-up, peak RSS {cli_rss} MiB"
            )
            ratios = versus_s5cmd(url, tmp, args.s5cmd_workers, args.rounds, len(keys))
            objects = args.original_objects or len(keys)
            original, original_rss = original_loop(url, tmp / "original", objects)
            print(
                f"original loop (one download_file at a time): {original:.1f} objects/s "
                f"({objects} objects), peak RSS {original_rss} MiB"
            )
    finally:
        moto.terminate()
        moto.wait(10)
    best, ceiling = max(ingests), max(raws)
    print(
        f"best of {args.rounds}: ingest {best:.1f}, raw parallel GETs {ceiling:.1f}, original "
        f"loop {original:.1f} objects/s"
    )
    ratios.sort()
    print(
        f"ingest vs original loop: {best / original:.1f}x; "
        f"ingest vs raw parallel GETs: {100 * best / ceiling:.0f}%; "
        f"`invmon ingest` vs s5cmd (wall, start-up included): median "
        f"{statistics.median(ratios):.2f}x "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
