"""A FAKE Kubernetes API server on loopback over real HTTP: custom objects, and the core,
apps, storage and authorization objects the preflight reads.

No real API server (nor the Katib, Kubeflow Trainer or KServe controllers) can run on this
machine, so the create/update/wait/fail logic of tune, train and deploy is tested against this
stand-in. The code under test talks to it through the real ``kubernetes`` client
(``CustomObjectsApi`` over HTTP), so URLs, verbs, label selectors, content types and JSON bodies
are exercised as they would be against a cluster. What is fake is the server side: it keeps
objects in memory, keeps ``generation`` and ``resourceVersion`` as the API server does (a merge
patch with a stale resourceVersion is a 409 Conflict), and a test-supplied ``controller`` plays
the operator, updating an object's status each time it is read.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<namespace>[^/]+)/"
    r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)

# Core objects in a namespace (/api/v1/namespaces/NS/secrets/NAME) and cluster-scoped ones
# (/api/v1/nodes, /api/v1/namespaces/NAME, /apis/storage.k8s.io/v1/storageclasses): kept in the
# same store, with namespace "" for cluster-scoped objects.
_CORE_PATH = re.compile(
    r"^/api/v1/namespaces/(?P<namespace>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)
_CLUSTER_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)
# A SubjectAccessReview's answer: access(spec.resourceAttributes, spec.user) -> allowed.
AccessFn = Callable[[dict, str], bool]

# controller(obj, reads): called on every GET of an object with the number of reads since it was
# created or its spec last changed; it may change ``obj`` (its status) in place.
ControllerFn = Callable[[dict, int], None]


class FakeKubernetesApi:
    """In-memory custom objects, a request log, and an HTTP server for them.

    Use as a context manager (``with FakeKubernetesApi(...) as fake: fake.client()``), or serve it
    with :func:`fake_kubernetes_server`. Objects are keyed ``(plural, namespace, name)``.
    """

    def __init__(
        self,
        controller: ControllerFn | None = None,
        forbidden_namespaces: tuple[str, ...] = (),
        access: AccessFn | None = None,
        forbidden_plurals: tuple[str, ...] = (),
    ):
        self.controller = controller
        self.forbidden_namespaces = forbidden_namespaces
        # SubjectAccessReviews are answered by ``access`` (None: every review is allowed);
        # ``forbidden_plurals`` are refused with 403 everywhere, as RBAC refuses a reader.
        self.access = access
        self.forbidden_plurals = forbidden_plurals
        self.reviews: list[dict] = []
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.reads: dict[tuple[str, str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.patches: list[dict] = []
        self.url = ""
        self._version = 0
        self._lock = threading.Lock()
        self._serving = ExitStack()

    # -- test helpers -------------------------------------------------------------------------

    def add(self, plural: str, obj: dict) -> None:
        """Store an object as if a controller had created it (for example a Katib Trial).
        Cluster-scoped objects (nodes, namespaces, storageclasses) have no namespace."""
        meta = obj["metadata"]
        with self._lock:
            self._stamp(obj, generation=1)
            self.objects[(plural, meta.get("namespace", ""), meta["name"])] = obj

    def client(self):
        """The real kubernetes client's ``CustomObjectsApi``, talking to this fake."""
        return custom_objects_api(self.url)

    def __enter__(self) -> FakeKubernetesApi:
        self.url = self._serving.enter_context(fake_kubernetes_server(self))
        return self

    def __exit__(self, *exc) -> None:
        self._serving.close()

    # -- the API ------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict, body: dict | None, content_type: str = ""
    ) -> tuple[int, dict]:
        """Answer one request: (HTTP status, JSON body)."""
        with self._lock:
            self.requests.append((method, path))
            match = route(path)
            if not match:
                return 404, _status(404, "NotFound", f"no route {path}")
            plural, namespace, name = match["plural"], match["namespace"], match["name"]
            if namespace in self.forbidden_namespaces or plural in self.forbidden_plurals:
                return 403, _status(403, "Forbidden", f"{plural} is forbidden in {namespace}")
            if plural == "subjectaccessreviews" and method == "POST":
                return self._review(body)
            if method == "POST" and name is None:
                return self._create((plural, namespace, body["metadata"]["name"]), body)
            if method == "GET" and name is not None:
                return self._get((plural, namespace, name))
            if method == "GET":
                return self._list(plural, namespace, query.get("labelSelector", [""])[0])
            if method == "PATCH" and name is not None:
                return self._patch((plural, namespace, name), body, content_type)
            return 405, _status(405, "MethodNotAllowed", method)

    def _review(self, body: dict) -> tuple[int, dict]:
        """Answer a SubjectAccessReview as the API server's authorizer would."""
        spec = body["spec"]
        self.reviews.append(spec)
        allowed = (
            True if self.access is None else self.access(spec["resourceAttributes"], spec["user"])
        )
        return 201, {**body, "status": {"allowed": bool(allowed)}}

    def _stamp(self, obj: dict, generation: int) -> None:
        self._version += 1
        obj["metadata"].update({"generation": generation, "resourceVersion": str(self._version)})

    def _create(self, key, body):
        if key in self.objects:
            return 409, _status(409, "AlreadyExists", f"{key[2]} already exists")
        obj = copy.deepcopy(body)
        obj["metadata"].setdefault("namespace", key[1])
        obj["metadata"]["creationTimestamp"] = "2026-01-05T10:00:00Z"
        obj["metadata"]["uid"] = f"uid-{len(self.objects) + 1}"
        self._stamp(obj, generation=1)
        self.objects[key] = obj
        self.reads[key] = 0
        return 201, obj

    def _get(self, key):
        if key not in self.objects:
            return 404, _status(404, "NotFound", f"{key[2]} not found")
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

    def _patch(self, key, patch, content_type):
        if content_type != "application/merge-patch+json":
            return 415, _status(415, "UnsupportedMediaType", "merge patch only")
        current = self.objects.get(key)
        if current is None:
            return 404, _status(404, "NotFound", f"{key[2]} not found")
        version = (patch.get("metadata") or {}).get("resourceVersion")
        if version is not None and version != current["metadata"]["resourceVersion"]:
            return 409, _status(409, "Conflict", "the object has been modified")
        obj = apply_merge_patch(copy.deepcopy(current), patch)
        generation = current["metadata"]["generation"]
        if obj.get("spec") != current.get("spec"):
            generation += 1
            self.reads[key] = 0
        self._stamp(obj, generation)
        self.objects[key] = obj
        self.patches.append(patch)
        return 200, obj


@dataclass
class Controller:
    """A fake KServe controller: what status an InferenceService shows when it is read.

    ``ready_after`` reads after each spec change the service becomes Ready with ``url`` as its
    address; ``never_ready`` keeps it not ready with ``failure_condition``; ``failed_load``
    reports KServe's BlockedByFailedLoad model status.
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

    def __call__(self, obj: dict, reads: int) -> None:
        obj["status"] = self.status(obj, reads)

    def status(self, obj: dict, reads: int) -> dict:
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
        if self.never_ready or reads < self.ready_after:
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
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            code, payload = fake.handle(method, url.path, parse_qs(url.query), body, content_type)
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

        def do_PATCH(self):
            self._respond("PATCH")

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


# -- core API objects (issue 22: unschedulable pods; cluster22) --------------------------------
# Pods live under /api/v1 rather than /apis/GROUP/VERSION. They are stored like custom objects
# (``fake.add("pods", pod)``) and listed by label selector; ``route`` gives the core group as "".


def route(path: str) -> dict | None:
    """The group, namespace, plural and name of an API path: group "" for the core API,
    namespace "" for cluster-scoped objects; None for a path the fake does not serve."""
    if match := _PATH.match(path):
        return match.groupdict()
    if match := _CORE_PATH.match(path):
        return {"group": "", **match.groupdict()}
    if match := _CLUSTER_PATH.match(path):
        return {"group": match["group"] or "", "namespace": "", **match.groupdict()}
    return None


def pod(name: str, namespace: str, labels: dict, unschedulable: str | None = None) -> dict:
    """A Pod as the API server shows it: Pending and unschedulable with the scheduler's
    ``unschedulable`` message, else Running."""
    if unschedulable is None:
        status = {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]}
    else:
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": unschedulable,
        }
        status = {"phase": "Pending", "conditions": [condition]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        "status": status,
    }
