"""A FAKE Kubernetes API server for KServe InferenceServices, on loopback.

No Kubernetes API server can run on this machine, so the deploy tests talk to this fake instead.
It speaks the same HTTP as the real API for the calls deploy makes (create, get and merge-patch
of ``serving.kserve.io/v1beta1`` InferenceServices in a namespace), so the real ``kubernetes``
client, its serialisation and its error handling are exercised. It keeps ``resourceVersion`` and
``generation`` as the API server does (a patch with a stale resourceVersion is a 409 Conflict)
and plays the KServe controller through a :class:`Controller` that decides what status each
GET shows.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/(?P<ns>[^/]+)/inferenceservices(?:/(?P<name>[^/?]+))?"
)


@dataclass
class Controller:
    """What the fake KServe controller reports for a service.

    ``ready_after`` GETs after each spec change, the service becomes Ready with ``url`` as its
    address; ``never_ready`` keeps it not ready with ``failure_condition``; ``failed_load`` reports
    KServe's BlockedByFailedLoad model status.
    """

    url: str = "http://127.0.0.1:1"
    ready_after: int = 2
    never_ready: bool = False
    failed_load: bool = False
    failure_condition: dict = field(
        default_factory=lambda: {
            "type": "PredictorReady",
            "status": "False",
            "reason": "ImagePullBackOff",
            "message": "Back-off pulling image registry.example/invmon-serve:missing",
        }
    )

    def status(self, obj: dict, gets_since_change: int) -> dict:
        generation = obj["metadata"]["generation"]
        if self.failed_load:
            return {
                "observedGeneration": generation,
                "conditions": [{"type": "Ready", "status": "False", "reason": "ModelLoadFailed"}],
                "modelStatus": {
                    "transitionStatus": "BlockedByFailedLoad",
                    "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no config.json"},
                },
            }
        if self.never_ready or gets_since_change < self.ready_after:
            return {
                "observedGeneration": generation - 1,
                "conditions": [
                    dict(self.failure_condition),
                    {"type": "Ready", "status": "False", "reason": "PredictorNotReady"},
                ],
            }
        return {
            "observedGeneration": generation,
            "url": f"http://{obj['metadata']['name']}.{obj['metadata']['namespace']}.example.com",
            "address": {"url": self.url},
            "conditions": [
                {"type": "PredictorReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
        }


class FakeKubernetesApi:
    """The fake API server; use as a context manager, then point a kubernetes client at ``url``."""

    def __init__(self, controller: Controller | None = None):
        self.controller = controller or Controller()
        self.objects: dict[tuple[str, str], dict] = {}
        self.gets_since_change: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.patches: list[dict] = []
        self._version = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKubernetesApi:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def client(self):
        """A ``CustomObjectsApi`` of the real kubernetes client, talking to this fake."""
        from kubernetes import client

        configuration = client.Configuration(host=self.url)
        return client.CustomObjectsApi(client.ApiClient(configuration))

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self):
                match = PATH.match(self.path)
                if not match:
                    self._answer(404, _status(404, "NotFound", f"no route {self.path}"))
                    return None
                fake.requests.append((self.command, self.path))
                return match["ns"], match["name"]

            def _body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def do_POST(self):
                if (route := self._route()) is None:
                    return
                obj = self._body()
                key = (route[0], obj["metadata"]["name"])
                with fake._lock:
                    if key in fake.objects:
                        self._answer(409, _status(409, "AlreadyExists", f"{key[1]} exists"))
                        return
                    obj["metadata"].update(
                        {"generation": 1, "resourceVersion": fake._next_version(), "uid": "u-1"}
                    )
                    fake.objects[key] = obj
                    fake.gets_since_change[key] = 0
                self._answer(201, obj)

            def do_GET(self):
                if (route := self._route()) is None:
                    return
                with fake._lock:
                    obj = fake.objects.get(route)
                    if obj is None:
                        self._answer(404, _status(404, "NotFound", f"{route[1]} not found"))
                        return
                    fake.gets_since_change[route] += 1
                    shown = copy.deepcopy(obj)
                    shown["status"] = fake.controller.status(obj, fake.gets_since_change[route])
                self._answer(200, shown)

            def do_PATCH(self):
                if (route := self._route()) is None:
                    return
                if self.headers["Content-Type"] != "application/merge-patch+json":
                    self._answer(415, _status(415, "UnsupportedMediaType", "merge patch only"))
                    return
                patch = self._body()
                with fake._lock:
                    current = fake.objects.get(route)
                    if current is None:
                        self._answer(404, _status(404, "NotFound", f"{route[1]} not found"))
                        return
                    version = (patch.get("metadata") or {}).get("resourceVersion")
                    if version is not None and version != current["metadata"]["resourceVersion"]:
                        self._answer(409, _status(409, "Conflict", "the object has been modified"))
                        return
                    obj = apply_merge_patch(copy.deepcopy(current), patch)
                    if obj.get("spec") != current.get("spec"):
                        obj["metadata"]["generation"] = current["metadata"]["generation"] + 1
                        fake.gets_since_change[route] = 0
                    obj["metadata"]["resourceVersion"] = fake._next_version()
                    fake.objects[route] = obj
                    fake.patches.append(patch)
                self._answer(200, obj)

        return Handler


def apply_merge_patch(target, patch):
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = apply_merge_patch(target.get(key), value)
    return target


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
