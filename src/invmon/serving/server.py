"""Serve a model folder with KServe's ModelServer, and talk to a running server.

``python -m invmon.serving.server --model_dir DIR`` is the serving image's entry point. Its parser
extends
KServe's own (``--http_port``, ``--model_name``, ``--enable_grpc``, ...) instead of redefining
those flags. :class:`LocalServer` runs the same entry point in a subprocess on loopback, which is
how a local pipeline run "deploys" and how the tests send real HTTP.
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

from invmon.serving.client import DEFAULT_MODEL_NAME
from invmon.serving.predictor import Limits, ServingOptions

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


def serve(
    model_dir: str,
    port: int = 8080,
    name: str = DEFAULT_MODEL_NAME,
    limits: Limits | None = None,
    options: ServingOptions | None = None,
) -> None:
    """Serve ``model_dir`` over HTTP (V1 and V2) until interrupted. gRPC stays off."""
    limits = limits or Limits()
    model = build_model(model_dir, name, limits, options)
    model_server(limits, http_port=port, enable_grpc=False, workers=1).start([model])


def _parser() -> argparse.ArgumentParser:
    from kserve.model_server import parser as kserve_parser

    from invmon.serving.counter import GRAPHS
    from invmon.training.device import DEVICES, INFERENCE_PRECISION_HELP, INFERENCE_PRECISIONS

    parser = argparse.ArgumentParser(
        description="Serve an inventory-monitoring model folder with KServe.",
        parents=[kserve_parser],
    )
    parser.add_argument("--model_dir", required=True, help="model folder written by invmon train")
    parser.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} (or cuda:N)")
    parser.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default="auto",
        help=INFERENCE_PRECISION_HELP,
    )
    parser.add_argument(
        "--max_images",
        type=int,
        default=Limits.max_images,
        help="most images accepted in one request",
    )
    parser.add_argument(
        "--max_image_bytes",
        type=int,
        default=Limits.max_image_bytes,
        help="largest encoded image accepted, in bytes",
    )
    parser.add_argument(
        "--max_pixels",
        type=int,
        default=Limits.max_pixels,
        help="largest image accepted, in pixels (checked before decoding)",
    )
    parser.add_argument(
        "--max_batch_images",
        type=int,
        default=ServingOptions.max_batch_images,
        help="most images run in one model batch when concurrent requests are grouped "
        "(1 turns grouping off)",
    )
    parser.add_argument(
        "--graph",
        choices=GRAPHS,
        default=ServingOptions.graph,
        help="how the model runs: frozen TorchScript graph, TorchInductor-compiled (fastest on "
        "CPU, slower start, needs a C++ compiler), eager, or auto",
    )
    parser.add_argument(
        "--decode_threads",
        type=int,
        default=ServingOptions.decode_threads,
        help="threads decoding images (0: one per CPU core)",
    )
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
    """Entry point of the serving image."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.configure_logging:
        _log_with_kserve(args.log_config_file)
    try:
        limits = Limits(args.max_images, args.max_image_bytes, args.max_pixels)
        options = ServingOptions(
            device=args.device,
            precision=args.precision,
            max_batch_images=args.max_batch_images,
            decode_threads=args.decode_threads,
            graph=args.graph,
        )
    except ValueError as err:
        parser.error(str(err))
    model = build_model(args.model_dir, args.model_name, limits, options)
    model_server(
        limits,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        workers=args.workers,
    ).start([model])


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """The predictor served by a ModelServer subprocess on loopback, for as long as the context.

    ``url`` is the server's base URL. Readiness is KServe's: the model's ready endpoint answers 200
    only after the model folder loaded.
    """

    def __init__(
        self,
        model_dir: str | Path,
        name: str = DEFAULT_MODEL_NAME,
        port: int | None = None,
        startup_timeout: float = 120.0,
        extra_args: list[str] | None = None,
    ):
        self.model_dir, self.name = str(model_dir), name
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
            "invmon.serving.server",
            "--model_dir",
            self.model_dir,
            "--model_name",
            self.name,
            "--http_port",
            str(self.port),
            "--enable_grpc",
            "false",
            "--configure_logging",
            "false",
            *self.extra_args,
        ]

    def __enter__(self) -> LocalServer:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.command(), env=env)
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
            time.sleep(0.25)
        raise TimeoutError(f"model server not ready after {self.startup_timeout:.0f}s at {ready}")

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


if __name__ == "__main__":
    main()
