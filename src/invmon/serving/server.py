"""Serve a model folder with KServe's ModelServer, and run one on loopback.

:func:`serve` is ``invmon serve``; :func:`main` is the serving image's entry point
(``python -m invmon.serving --model_dir DIR``), whose parser extends KServe's own
(``--http_port``, ``--model_name``, ``--enable_grpc``, ...) with the options of
:class:`invmon.serving.options.ServeSettings` instead of redefining those flags.
:class:`LocalServer` runs the same entry point in a subprocess on loopback, which is how a local
pipeline run "deploys" and how the tests send real HTTP.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from invmon.core.settings import add_options, from_args
from invmon.serving.client import DEFAULT_MODEL_NAME
from invmon.serving.options import (
    KSERVE_FLAGS,
    Limits,
    ServeSettings,
    ServingOptions,
    largest_batch,
)

log = logging.getLogger(__name__)


def build_model(
    model_dir: str,
    name: str = DEFAULT_MODEL_NAME,
    limits: Limits | None = None,
    options: ServingOptions | None = None,
):
    """Create and load the predictor for ``model_dir``."""
    from invmon.serving.predictor import BinCounterModel

    model = BinCounterModel(name, model_dir, limits=limits, options=options)
    model.load()
    return model


def _quiet_framework_warnings() -> None:
    # KServe 0.21 still returns ORJSONResponse, which FastAPI warns about on every request.
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated.*")


def model_server(limits: Limits, **kwargs):
    """KServe's ModelServer with the predictor's strict request decoding and request limits.

    See :mod:`invmon.serving.rest` for what the strict data plane corrects. The FastAPI app is
    KServe's own
    (``kserve.model_server.app``); the error handler and the body-size guard are added to it
    before the server starts.
    """
    import kserve
    from kserve.model_server import app

    from invmon.serving.rest import BodySizeLimit, StrictDataPlane, install_error_handlers

    _quiet_framework_warnings()
    server = kserve.ModelServer(**kwargs)
    server.dataplane = StrictDataPlane(model_registry=server.registered_models)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_request_bytes)
    return server


def serve(settings: ServeSettings, **server_args) -> None:
    """Serve ``settings.model`` over HTTP (V1 and V2) until interrupted.

    ``server_args`` go to KServe's ModelServer (the serving image passes KServe's own flags);
    without them there is one worker and gRPC stays off. With ``settings.prebuild`` it builds
    the serving engine into the model folder instead (:func:`invmon.serving.prebuilt.build`).
    """
    if settings.prebuild:
        from invmon.serving.prebuilt import build

        largest = largest_batch(settings.options, settings.limits)
        precision = settings.options.precision
        print(f"building the serving engine for batches of 1 to {largest} (minutes)", flush=True)
        print(f"written: {build(settings.model, largest, precision)}", flush=True)
        return
    model = build_model(settings.model, settings.name, settings.limits, settings.options)
    server_args = {"http_port": settings.port, "enable_grpc": False, "workers": 1, **server_args}
    model_server(settings.limits, **server_args).start([model])


def image_parser() -> argparse.ArgumentParser:
    """The serving image's parser: KServe's own, plus the options of :class:`ServeSettings`.

    The port and the model name are KServe's flags (``--http_port``, ``--model_name``); every
    other serving option is derived from the same fields as ``invmon serve``'s.
    """
    from kserve.model_server import parser as kserve_parser

    parser = argparse.ArgumentParser(
        prog="python -m invmon.serving",
        description="Serve an inventory-monitoring model folder with KServe.",
        parents=[kserve_parser],
    )
    add_options(parser, ServeSettings, exclude=tuple(KSERVE_FLAGS))
    return parser


def _log_with_kserve(log_config_file: str | None) -> None:
    """Configure KServe's logging now, and send invmon's INFO lines through its handlers.

    KServe configures only its own and uvicorn's loggers, so without this what the predictor
    logs (the precision the model runs in, batching and int8 re-check counts) would be dropped.
    """
    from kserve import logging as kserve_logging

    kserve_logging.configure_logging(log_config_file)
    ours = logging.getLogger("invmon")
    ours.setLevel(logging.INFO)
    handlers = logging.getLogger(kserve_logging.KSERVE_LOGGER_NAME).handlers
    if handlers:  # else KServe left logging to whoever configured the root logger
        ours.handlers, ours.propagate = list(handlers), False


def main(argv: list[str] | None = None) -> None:
    """Entry point of the serving image (``python -m invmon.serving``)."""
    parser = image_parser()
    args = parser.parse_args(argv)
    if args.configure_logging:
        _log_with_kserve(args.log_config_file)
    kserve_values = {field: getattr(args, flag) for field, flag in KSERVE_FLAGS.items()}
    try:
        settings = from_args(ServeSettings, args, **kserve_values)
    except ValueError as err:
        parser.error(str(err))
    serve(settings, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc, workers=args.workers)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """The predictor served by a ModelServer subprocess on loopback, for as long as the context.

    ``url`` is the server's base URL. Readiness is KServe's: the model's ready endpoint answers 200
    only after the model folder loaded. With ``log`` (a file path) the server's output goes there,
    with KServe's logging on (the predictor's INFO lines: precision, upgrades); see
    :meth:`wait_for_log`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        name: str = DEFAULT_MODEL_NAME,
        port: int | None = None,
        startup_timeout: float = 120.0,
        extra_args: list[str] | None = None,
        log: str | Path | None = None,
    ):
        self.model_dir, self.name = str(model_dir), name
        self.log = Path(log) if log is not None else None
        self.poll = 0.25  # seconds between readiness checks
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args or []
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The server's command line: the serving image's entry point."""
        return [
            sys.executable,
            "-m",
            "invmon.serving",
            "--model_dir",
            self.model_dir,
            "--model_name",
            self.name,
            "--http_port",
            str(self.port),
            "--enable_grpc",
            "false",
            "--configure_logging",
            "true" if self.log else "false",
            *self.extra_args,
        ]

    def __enter__(self) -> LocalServer:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.log is None:
            self.process = subprocess.Popen(self.command(), env=env)
        else:
            with open(self.log, "wb") as out:  # the child keeps its own descriptor
                self.process = subprocess.Popen(
                    self.command(), env=env, stdout=out, stderr=subprocess.STDOUT
                )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        ready = f"{self.url}/v2/models/{self.name}/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"model server exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(ready, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(self.poll)
        raise TimeoutError(f"model server not ready after {self.startup_timeout:.0f}s at {ready}")

    def wait_for_log(self, *texts: str, timeout: float = 600.0) -> str:
        """Wait until the server's log holds one of ``texts``; return the one found first.

        Raises TimeoutError after ``timeout`` seconds and RuntimeError when the server exits.
        """
        if self.log is None:
            raise ValueError("wait_for_log needs a LocalServer started with log=PATH")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            found = [t for t in texts if t in text]
            if found:
                return min(found, key=text.index)
            if self.process.poll() is not None:
                raise RuntimeError(f"model server exited with code {self.process.returncode}")
            time.sleep(0.2)
        raise TimeoutError(f"none of {texts} in {self.log} after {timeout:.0f}s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
