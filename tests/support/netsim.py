"""Network conditions for tests and benchmarks: an HTTP proxy in front of a real S3 server.

A loopback S3 server answers in about a millisecond and never fails; real S3 answers small GETs in
tens of milliseconds, throttles with 503 SlowDown, and sometimes drops a connection or cuts a body
short. :class:`NetSim` sits between a client and the server and adds exactly that: a delay before
each request is forwarded, and a seeded share of requests answered with SlowDown, closed without
an answer, or (GETs) cut off halfway through the body. It counts what it forwarded per method and
path, readable over HTTP at ``/__netsim__/stats`` (and reset with ``POST /__netsim__/reset``), so a
test in another process can check which objects a client fetched.

Run it in a thread (:func:`running`) or as its own process, away from the client's GIL::

    python tests/support/netsim.py --upstream http://127.0.0.1:5000 --port 5001 --delay-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

_STATS_PATH = "/__netsim__/stats"
_RESET_PATH = "/__netsim__/reset"
_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass(frozen=True)
class Faults:
    """What the proxy does to requests; shares are probabilities in [0, 1]."""

    delay: float = 0.0  # seconds added before each request is forwarded
    slowdown: float = 0.0  # answered 503 SlowDown, not forwarded
    drop: float = 0.0  # connection closed without an answer
    truncate: float = 0.0  # GETs: half the body is sent, then the connection is closed
    seed: int = 0

    def __post_init__(self):
        for name in ("slowdown", "drop", "truncate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a share between 0 and 1")
        if self.slowdown + self.drop + self.truncate > 1:
            raise ValueError("the fault shares must add up to at most 1")


class _Head:
    """The start line and headers of one HTTP message."""

    def __init__(self, raw: bytes):
        self.raw = raw
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()

    @property
    def length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None else None

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close" or self.start.startswith(
            "HTTP/1.0"
        )


async def _read_body(reader: asyncio.StreamReader, head: _Head, until_eof: bool) -> bytes:
    if head.chunked:
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            parts.append(size_line + data)
            if size == 0:
                return b"".join(parts)
    if head.length is not None:
        return await reader.readexactly(head.length)
    return await reader.read() if until_eof else b""


class NetSim:
    """The proxy itself: an asyncio server relaying HTTP/1.1 to ``upstream``."""

    def __init__(self, upstream: str, faults: Faults = Faults()):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults = faults
        self.random = random.Random(faults.seed)
        self.forwarded: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def stats(self) -> dict:
        """Requests forwarded per ``"METHOD path"`` and faults injected per kind."""
        return {"forwarded": dict(self.forwarded), "injected": dict(self.injected)}

    def _fault(self, method: str) -> str | None:
        draw = self.random.random()
        f = self.faults
        if draw < f.slowdown:
            return "slowdown"
        if draw < f.slowdown + f.drop:
            return "drop"
        if method == "GET" and draw < f.slowdown + f.drop + f.truncate:
            return "truncate"
        return None

    async def handle(self, client_reader, client_writer) -> None:
        """Serve one client connection until either side closes it."""
        upstream = None
        try:
            while True:
                try:
                    request = _Head(await client_reader.readuntil(b"\r\n\r\n"))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                body = await _read_body(client_reader, request, until_eof=False)
                method, path = request.start.split(" ")[:2]
                if path.startswith("/__netsim__/"):
                    self._control(method, path, client_writer)
                    continue
                if self.faults.delay:
                    await asyncio.sleep(self.faults.delay)
                fault = self._fault(method)
                if fault:
                    self.injected[fault] += 1
                if fault == "drop":
                    return
                if fault == "slowdown":
                    client_writer.write(_response(503, _SLOWDOWN_BODY, "application/xml"))
                    await client_writer.drain()
                    continue
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream)
                upstream[1].write(request.raw + body)
                await upstream[1].drain()
                response = _Head(await upstream[0].readuntil(b"\r\n\r\n"))
                no_body = method == "HEAD" or response.start.split(" ")[1] in ("204", "304")
                payload = b"" if no_body else await _read_body(upstream[0], response, True)
                self.forwarded[f"{method} {path.split('?')[0]}"] += 1
                if fault == "truncate" and len(payload) > 1:
                    client_writer.write(response.raw + payload[: len(payload) // 2])
                    await client_writer.drain()
                    return
                client_writer.write(response.raw + payload)
                await client_writer.drain()
                if response.closes:
                    upstream[1].close()
                    upstream = None
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # the proxy is stopping; the connection closes below
        finally:
            client_writer.close()
            if upstream is not None:
                upstream[1].close()

    def _control(self, method: str, path: str, writer) -> None:
        if path.startswith(_RESET_PATH) and method == "POST":
            self.forwarded.clear()
            self.injected.clear()
            writer.write(_response(200, b"{}", "application/json"))
        else:
            body = json.dumps(self.stats()).encode()
            writer.write(_response(200, body, "application/json"))

    async def serve(self, port: int, ready: threading.Event | None = None, stop=None) -> None:
        """Listen on 127.0.0.1:``port`` until ``stop`` (an asyncio.Event) is set, or forever."""
        server = await asyncio.start_server(self.handle, "127.0.0.1", port, limit=1 << 20)
        async with server:
            if ready is not None:
                ready.set()
            if stop is None:
                await server.serve_forever()
            else:
                await stop.wait()


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 503: "Slow Down"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(upstream: str, faults: Faults = Faults()) -> Iterator[tuple[str, NetSim]]:
    """Run a proxy in a background thread; yield its URL and the proxy (for its stats)."""
    proxy = NetSim(upstream, faults)
    port = free_port()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = None

    def main() -> None:
        nonlocal stop
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        loop.run_until_complete(proxy.serve(port, ready, stop))
        # Close the connections clients left open, then the loop.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=main, name="netsim", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the proxy did not start")
    try:
        yield f"http://127.0.0.1:{port}", proxy
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Block until something listens on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def process(upstream: str, faults: Faults = Faults()) -> Iterator[str]:
    """Run a proxy as its own process (no GIL shared with the client); yield its URL."""
    port = free_port()
    args = [sys.executable, __file__, "--upstream", upstream, "--port", str(port)]
    for name, value in asdict(faults).items():
        args += [f"--{name}", str(value)]
    child = subprocess.Popen(args)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.terminate()
        child.wait(10)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python tests/support/netsim.py --upstream URL --port N [faults]``."""
    parser = argparse.ArgumentParser(prog="netsim.py", description=__doc__)
    parser.add_argument("--upstream", required=True, help="URL of the S3 server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to each request")
    for name in ("delay", "slowdown", "drop", "truncate"):
        parser.add_argument(f"--{name}", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    faults = Faults(
        delay=args.delay or args.delay_ms / 1000,
        slowdown=args.slowdown,
        drop=args.drop,
        truncate=args.truncate,
        seed=args.seed,
    )
    asyncio.run(NetSim(args.upstream, faults).serve(args.port))


if __name__ == "__main__":
    main()
