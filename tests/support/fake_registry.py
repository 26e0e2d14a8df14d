"""A FAKE Kubeflow Model Registry server on loopback over real HTTP.

The registry server (Go, backed by MySQL or Postgres) cannot run on this machine, so the
registration and ``deploy --from-registry`` code is tested against this stand-in, through the
registry's real Python client (``model-registry``). It answers the part of the REST API the
client uses, as the registry's OpenAPI document (``api/openapi/model-registry.yaml``, the
``mr_openapi`` package the client is generated from) specifies: paths under
``/api/model_registry/v1``, camelCase bodies, ``Error`` bodies ``{code, message}``, 201 on
create, 404 on a ``find`` that matches nothing, 409 on a duplicate name, list bodies with
``nextPageToken``/``pageSize``/``size``/``items`` and ``orderBy``/``sortOrder`` honoured.
With ``token`` set, a request without ``Authorization: Bearer <token>`` is answered 401.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PREFIX = "/api/model_registry/v1"


@dataclass
class RegistryState:
    """What the fake registry holds: objects by id, and every request it answered."""

    token: str | None = None
    models: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    artifacts: dict[str, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    _next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new(self, body: dict) -> dict:
        """``body`` with a fresh id and creation time, as the server adds them."""
        self._next += 1
        # Creation times are milliseconds since the epoch; tests create versions within the same
        # millisecond, so the id breaks ties, and the time is made strictly increasing.
        now = str(int(time.time() * 1000) + self._next)
        return {
            **body,
            "id": str(self._next),
            "createTimeSinceEpoch": now,
            "lastUpdateTimeSinceEpoch": now,
        }

    def version_of(self, model_name: str, version: str) -> dict | None:
        """The stored version ``version`` of the registered model named ``model_name``."""
        model = _one(self.models.values(), name=model_name)
        if model is None:
            return None
        return _one(self.versions.values(), name=version, registeredModelId=model["id"])

    def artifact_of(self, version_id: str) -> dict | None:
        """The model artifact of a version."""
        return _one(self.artifacts.values(), parent=version_id)


def _one(items, **wanted) -> dict | None:
    for item in items:
        if all(item.get(k) == v for k, v in wanted.items()):
            return item
    return None


class _Missing(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _page(items: list[dict], query: dict) -> dict:
    """A list body ordered and cut as ``orderBy``, ``sortOrder`` and ``pageSize`` say."""
    key = {"CREATE_TIME": "createTimeSinceEpoch", "LAST_UPDATE_TIME": "lastUpdateTimeSinceEpoch"}
    order = key.get(query.get("orderBy", "ID"), "id")
    items = sorted(items, key=lambda item: int(item[order]))
    if query.get("sortOrder") == "DESC":
        items.reverse()
    size = int(query.get("pageSize", 100))
    start = int(query.get("nextPageToken") or 0)
    page = items[start : start + size]
    token = str(start + size) if start + size < len(items) else ""
    return {"nextPageToken": token, "pageSize": size, "size": len(page), "items": page}


class _Handler(BaseHTTPRequestHandler):
    state: RegistryState

    def log_message(self, *args):  # keep test output quiet
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        state = self.state
        with state.lock:
            state.requests.append((method, url.path, self.headers.get("Authorization")))
            if state.token and self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._answer(401, {"code": "401", "message": "Unauthorized"})
            if not url.path.startswith(PREFIX):
                return self._answer(404, {"code": "404", "message": f"no route {url.path}"})
            try:
                status, answer = _route(state, method, url.path[len(PREFIX) :], query, body)
            except _Missing as err:
                return self._answer(err.status, {"code": str(err.status), "message": str(err)})
        self._answer(status, answer)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


def _route(state: RegistryState, method: str, path: str, query: dict, body):
    parts = path.strip("/").split("/")
    if method == "GET" and parts == ["registered_models"]:
        return 200, _page(list(state.models.values()), query)
    if method == "POST" and parts == ["registered_models"]:
        if _one(state.models.values(), name=body["name"]):
            raise _Missing(409, f"registered model {body['name']!r} already exists")
        model = state.new({**body, "state": "LIVE"})
        state.models[model["id"]] = model
        return 201, model
    if method == "GET" and parts == ["registered_model"]:
        return 200, _found(_one(state.models.values(), name=query.get("name")), "model")
    if method == "GET" and len(parts) == 3 and parts[0] == "registered_models":
        versions = [v for v in state.versions.values() if v["registeredModelId"] == parts[1]]
        return 200, _page(versions, query)
    if method == "POST" and parts == ["model_versions"]:
        return 201, _create_version(state, body)
    if method == "GET" and parts == ["model_version"]:
        wanted = {"name": query.get("name"), "registeredModelId": query.get("parentResourceId")}
        return 200, _found(_one(state.versions.values(), **wanted), "model version")
    if method == "POST" and len(parts) == 3 and parts[0] == "model_versions":
        return 201, _create_artifact(state, parts[1], body)
    if method == "GET" and parts == ["model_artifact"]:
        wanted = {"name": query.get("name"), "parent": query.get("parentResourceId")}
        found = _found(_one(state.artifacts.values(), **wanted), "model artifact")
        return 200, {k: v for k, v in found.items() if k != "parent"}
    raise _Missing(404, f"{method} {path} is not part of this fake registry")


def _found(item: dict | None, what: str) -> dict:
    if item is None:
        raise _Missing(404, f"no {what} found")
    return item


def _create_version(state: RegistryState, body: dict) -> dict:
    if body.get("registeredModelId") not in state.models:
        raise _Missing(404, f"no registered model {body.get('registeredModelId')!r}")
    parent = body["registeredModelId"]
    if _one(state.versions.values(), name=body["name"], registeredModelId=parent):
        raise _Missing(409, f"model version {body['name']!r} already exists")
    version = state.new({**body, "state": "LIVE"})
    state.versions[version["id"]] = version
    return version


def _create_artifact(state: RegistryState, version_id: str, body: dict) -> dict:
    if version_id not in state.versions:
        raise _Missing(404, f"no model version {version_id!r}")
    if body.get("artifactType") != "model-artifact":
        raise _Missing(400, f"artifactType {body.get('artifactType')!r} is not served here")
    artifact = state.new({**body, "parent": version_id})
    state.artifacts[artifact["id"]] = artifact
    return {k: v for k, v in artifact.items() if k != "parent"}


@contextmanager
def fake_registry(token: str | None = None) -> Iterator[tuple[str, RegistryState]]:
    """Serve a fake Model Registry on loopback: yields (its http:// URL, its state)."""
    state = RegistryState(token=token)
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
