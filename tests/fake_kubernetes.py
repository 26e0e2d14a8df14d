"""A FAKE Kubernetes API server for custom objects, on loopback over real HTTP.

No real API server (nor Katib or Kubeflow Trainer controllers) can run on this machine, so the
create/wait/fail logic is tested against this stand-in. The code under test talks to it through
the real ``kubernetes`` client (``CustomObjectsApi`` over HTTP), so URLs, verbs, label selectors
and JSON bodies are exercised as they would be against a cluster; what is fake is the server side:
it stores objects in memory and a test-supplied ``controller`` plays the operator, changing an
object's status each time it is read.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<namespace>[^/]+)/"
    r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)


class FakeKubernetesApi:
    """In-memory custom objects plus a request log; ``controller(obj, reads)`` updates status."""

    def __init__(
        self,
        controller: Callable[[dict, int], None] | None = None,
        forbidden_namespaces: tuple[str, ...] = (),
    ):
        self.forbidden_namespaces = forbidden_namespaces
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.reads: dict[tuple[str, str, str], int] = {}
        self.controller = controller
        self.lock = threading.Lock()

    def add(self, plural: str, obj: dict) -> None:
        """Store an object as if a controller had created it (for example a Katib Trial)."""
        meta = obj["metadata"]
        self.objects[(plural, meta["namespace"], meta["name"])] = obj

    def handle(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((method, path))
            match = _PATH.match(path)
            if not match:
                return 404, _status(404, "NotFound", f"no route {path}")
            plural, namespace, name = match["plural"], match["namespace"], match["name"]
            if namespace in self.forbidden_namespaces:  # as when RBAC does not allow it
                return 403, _status(403, "Forbidden", f"{plural} is forbidden in {namespace}")
            if method == "POST" and name is None:
                return self._create(plural, namespace, body)
            if method == "GET" and name is not None:
                return self._get(plural, namespace, name)
            if method == "GET":
                return self._list(plural, namespace, query.get("labelSelector", [""])[0])
            return 405, _status(405, "MethodNotAllowed", method)

    def _create(self, plural, namespace, body):
        key = (plural, namespace, body["metadata"]["name"])
        if key in self.objects:
            return 409, _status(409, "AlreadyExists", f"{key[2]} already exists")
        obj = copy.deepcopy(body)
        obj["metadata"].setdefault("namespace", namespace)
        obj["metadata"]["creationTimestamp"] = "2026-01-05T10:00:00Z"
        self.objects[key] = obj
        return 201, obj

    def _get(self, plural, namespace, name):
        key = (plural, namespace, name)
        if key not in self.objects:
            return 404, _status(404, "NotFound", f"{name} not found")
        self.reads[key] = self.reads.get(key, 0) + 1
        if self.controller is not None:
            self.controller(self.objects[key], self.reads[key])
        return 200, self.objects[key]

    def _list(self, plural, namespace, selector):
        wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
        items = [
            obj
            for (p, ns, _), obj in sorted(self.objects.items())
            if p == plural
            and ns == namespace
            and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        return 200, {"apiVersion": "v1", "kind": "List", "items": items}


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


@contextmanager
def fake_kubernetes_server(fake: FakeKubernetesApi) -> Iterator[str]:
    """Serve ``fake`` on 127.0.0.1 (a free port); yield its URL."""

    class Handler(BaseHTTPRequestHandler):
        def _respond(self, method: str) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            code, payload = fake.handle(method, url.path, parse_qs(url.query), body)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._respond("GET")

        def do_POST(self):
            self._respond("POST")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def custom_objects_api(url: str):
    """The real kubernetes client's CustomObjectsApi, pointed at the fake server."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url
    return client.CustomObjectsApi(client.ApiClient(configuration))
