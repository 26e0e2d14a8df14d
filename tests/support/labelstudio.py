"""A real Label Studio server for tests: its own virtual environment, sqlite, loopback, token auth.

Label Studio (a Django application with about 150 pinned dependencies) cannot share our
environment, so :func:`label_studio_env` makes ``.venv-labelstudio/`` at the repository root from
``requirements-labelstudio.lock`` the first time a test needs it (minutes; a fresh clone in CI
does this too) and reuses it while the lock file is unchanged. :class:`LabelStudioServer` starts
``label-studio start`` on 127.0.0.1 at a free port with a fresh data folder and one user whose
API token the test chooses, waits until it answers, and stops it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements-labelstudio.lock"
VENV = Path(os.environ.get("LABEL_STUDIO_VENV", ROOT / ".venv-labelstudio"))
_STAMP = "invmon-lock.sha256"


def label_studio_env() -> Path:
    """The ``label-studio`` executable of the test environment, made from the lock if needed.

    One maker at a time (a file lock): ``scripts/test.sh`` starts making it in the background
    while the other tests run, and a test that needs it first waits for that instead of racing.
    """
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{VENV}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        return _made_env()


def _made_env() -> Path:
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    executable = VENV / "bin" / "label-studio"
    stamp = VENV / _STAMP
    if executable.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return executable
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    done = subprocess.run(
        [*pip, "--disable-pip-version-check", "-r", str(LOCK)], capture_output=True, text=True
    )
    if done.returncode:  # pip's own words, not the whole install log
        raise RuntimeError(f"installing {LOCK.name} failed: {(done.stdout + done.stderr)[-3000:]}")
    stamp.write_text(digest + "\n")
    print(f"made {VENV} from {LOCK.name} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return executable


class LabelStudioError(RuntimeError):
    """Label Studio answered a request with an error status."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LabelStudioServer:
    """``label-studio start`` on loopback with a fresh sqlite database; a context manager."""

    def __init__(self, executable: Path, data_dir: Path, startup_timeout: float = 900):
        self.executable, self.data_dir = executable, Path(data_dir)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(20)
        self.user = "reviewer@example.com"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LabelStudioServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LATEST_VERSION_CHECK": "false",  # no call to PyPI on start
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "DJANGO_DB": "sqlite",
        }
        command = [str(self.executable), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        command += ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        command += ["--username", self.user, "--password", secrets.token_hex(12)]
        command += ["--user-token", self.token, "--enable-legacy-api-token"]
        self.log = open(self.data_dir / "server.log", "wb")  # closed in __exit__
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label-studio exited {self.process.returncode}: {self._tail()}")
            try:
                self.request("GET", "/api/projects")
                return
            except (LabelStudioError, urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        raise TimeoutError(
            f"label-studio did not answer in {self.startup_timeout}s: {self._tail()}"
        )

    def _tail(self) -> str:
        return (self.data_dir / "server.log").read_text(errors="replace")[-3000:]

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the server and workers
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.log.close()

    def request(self, method: str, path: str, body=None, timeout: float = 120):
        """Call the REST API with the user's token; the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                text = answer.read()
        except urllib.error.HTTPError as err:  # the body says what Label Studio did not like
            body = err.read().decode(errors="replace")[:2000]
            raise LabelStudioError(f"{method} {path}: HTTP {err.code}: {body}") from None
        return json.loads(text) if text else None
