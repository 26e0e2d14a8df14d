"""Helpers shared by the benchmarks: the real ABID sample, and peak memory of a measured child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def sample_dir() -> Path:
    """The real ABID sample named by ABID_SAMPLE_DIR (these benchmarks need real photos)."""
    value = os.environ.get("ABID_SAMPLE_DIR")
    if not value or not (Path(value) / "bin-images").is_dir():
        sys.exit(
            "set ABID_SAMPLE_DIR to a folder holding the ABID sample's bin-images/ and metadata/"
        )
    return Path(value)


def measure_in_child(script: str, *args: str) -> dict:
    """Run ``script --measure ...`` in a fresh process; return the JSON it prints, plus its peak
    resident memory (``peak_rss_mib``, the largest of the process and its own children)."""
    child = subprocess.Popen(
        [sys.executable, script, "--measure", *args], stdout=subprocess.PIPE, text=True
    )
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{script} --measure {' '.join(args)} failed")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024)
    return result


def report(result: dict) -> None:
    """Print a measurement as the last line of a child's output."""
    import resource

    result["self_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))
