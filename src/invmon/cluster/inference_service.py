"""Deploy: put a trained model behind KServe, and check that it answers.

On a cluster, :func:`deploy_to_cluster` creates or updates a v1beta1 InferenceService whose
predictor is the serving image (a custom ``kserve.Model``). KServe's storage initializer fetches
the model folder from ``STORAGE_URI`` (``s3://...``) with the credentials of the predictor's
ServiceAccount, whose Secret carries KServe's ``serving.kserve.io/s3-*`` annotations: no credential
is ever in the manifest. It then waits until the service reports Ready for the new generation (or
fails with the service's conditions), and sends a smoke request whose answer must match the model
run in-process.

In a local run there is no cluster: :func:`deploy_local` serves the model folder with KServe's
ModelServer on loopback, sends the same smoke requests, and stops the server.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from invmon.cluster import objects as cluster
from invmon.cluster.container_images import DEFAULT_IMAGES
from invmon.cluster.placement import parse_toleration
from invmon.serving.client import DEFAULT_MODEL_NAME

log = logging.getLogger(__name__)

KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
INFERENCE_SERVICE = cluster.Resource(
    KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL, "InferenceService"
)
DEPLOYMENT_MODES = ("Standard", "Knative")
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# KServe gives up on a model that cannot load; waiting longer would not help.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class DeployError(RuntimeError):
    """The InferenceService could not be rolled out, or does not answer correctly."""


@dataclass(frozen=True)
class ServiceSpec:
    """Settings of the InferenceService."""

    name: str = DEFAULT_MODEL_NAME
    namespace: str = "kubeflow-user"
    model_uri: str = ""
    image: str = DEFAULT_IMAGES.image("serve")
    service_account: str = "invmon-s3"
    deployment_mode: str = "Standard"
    min_replicas: int = 1
    max_replicas: int = 2
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    canary_traffic_percent: int | None = None

    def __post_init__(self):
        if not self.name or not set(self.name) <= _NAME_CHARS or not self.name[0].isalpha():
            raise ValueError(
                f"--name {self.name!r} is not a valid service name (lowercase letters, digits and "
                "'-', starting with a letter)"
            )
        if self.deployment_mode not in DEPLOYMENT_MODES:
            raise ValueError(
                f"deployment mode must be one of {', '.join(DEPLOYMENT_MODES)}, "
                f"got {self.deployment_mode!r}"
            )
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"replicas must satisfy 0 <= min <= max and max >= 1, got "
                f"{self.min_replicas}..{self.max_replicas}"
            )
        if self.min_replicas == 0 and self.deployment_mode != "Knative":
            raise ValueError("--min-replicas 0 (scale to zero) needs --deployment-mode Knative")
        if self.gpus < 0:
            raise ValueError(f"--gpus must be >= 0, got {self.gpus}")
        if self.canary_traffic_percent is not None:
            if self.deployment_mode != "Knative":
                raise ValueError(
                    "--canary-traffic-percent needs --deployment-mode Knative (traffic splitting "
                    "between revisions is Knative's)"
                )
            if not 0 <= self.canary_traffic_percent <= 100:
                raise ValueError(
                    f"--canary-traffic-percent must be between 0 and 100, "
                    f"got {self.canary_traffic_percent}"
                )


def render_inference_service(spec: ServiceSpec) -> dict:
    """The v1beta1 InferenceService for the custom predictor, as a plain dict.

    ``canary_traffic_percent`` is not rendered here: it only means something for an update of an
    existing service, so :func:`apply_inference_service` adds it.
    """
    if not spec.model_uri:
        raise ValueError("--model-uri is required (for example s3://bucket/models/bin-counter)")
    requests = {"cpu": spec.cpu, "memory": spec.memory}
    limits = dict(requests)
    if spec.gpus:
        limits["nvidia.com/gpu"] = str(spec.gpus)
    container = {
        "name": "kserve-container",
        "image": spec.image,
        "args": [
            "--model_name",
            spec.name,
            "--model_dir",
            "/mnt/models",
            "--http_port",
            "8080",
            "--enable_grpc",
            "false",
        ],
        # KServe's storage initializer downloads STORAGE_URI into /mnt/models before start,
        # with the credentials of the ServiceAccount below.
        "env": [{"name": "STORAGE_URI", "value": spec.model_uri}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        "readinessProbe": {
            "httpGet": {"path": f"/v2/models/{spec.name}/ready", "port": 8080},
            "periodSeconds": 5,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    predictor = {
        "serviceAccountName": spec.service_account,
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
        "containers": [container],
    }
    if spec.node_selector:
        predictor["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        predictor["tolerations"] = [dict(t) for t in spec.tolerations]
    manifest = {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "annotations": {DEPLOYMENT_MODE_ANNOTATION: spec.deployment_mode},
            "labels": dict(cluster.PART_OF),
        },
        "spec": {"predictor": predictor},
    }
    check_inference_service(manifest)
    return manifest


def check_inference_service(manifest: dict):
    """Read ``manifest`` into kserve's typed V1beta1InferenceService; raise on any unknown field."""
    from kserve import V1beta1InferenceService

    from invmon.cluster.typed import to_typed

    return to_typed(manifest, V1beta1InferenceService)


def toleration(text: str) -> dict:
    """A toleration from ``KEY[=VALUE]:EFFECT`` (the form ``invmon compile`` takes), as a dict."""
    return parse_toleration(text, "--toleration").to_dict()


# -- rolling out on a cluster ------------------------------------------------------------------


def _api_args(namespace: str) -> tuple:
    return (KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL)


def apply_inference_service(
    manifest: dict, api, canary_traffic_percent: int | None = None, attempts: int = 3
) -> tuple[str, dict]:
    """Create the InferenceService, or update the existing one; return (action, stored object).

    An update is a JSON merge patch (the ``patch`` verb, nothing broader) that makes the
    predictor exactly the rendered one: settings dropped from the manifest are removed from the
    service, labels and annotations others added are kept, and in Knative mode
    ``canary_traffic_percent`` of the traffic goes to the new revision. The patch carries the
    resourceVersion it was computed from, so a concurrent change is a conflict, and is retried.
    """
    from kubernetes.client.exceptions import ApiException

    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        return "created", api.create_namespaced_custom_object(*_api_args(namespace), manifest)
    except ApiException as err:
        if err.status != 409:
            raise DeployError(_api_failure("create", namespace, name, err)) from None
    for attempt in range(attempts):
        existing = cluster.get(api, INFERENCE_SERVICE, namespace, name)
        patch = update_patch(manifest, existing, canary_traffic_percent)
        try:
            return "updated", api.patch_namespaced_custom_object(*_api_args(namespace), name, patch)
        except ApiException as err:
            if err.status != 409 or attempt == attempts - 1:
                raise DeployError(_api_failure("update", namespace, name, err)) from None
            log.info("InferenceService %s/%s changed meanwhile; retrying", namespace, name)
    raise AssertionError("unreachable")


def update_patch(manifest: dict, existing: dict, canary_traffic_percent: int | None) -> dict:
    """The JSON merge patch (RFC 7386) that turns ``existing`` into the rendered ``manifest``."""
    metadata, old = manifest["metadata"], existing.get("metadata", {})
    wanted = metadata["annotations"][DEPLOYMENT_MODE_ANNOTATION]
    current = (old.get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION, wanted)
    if current != wanted:
        raise DeployError(
            f"InferenceService {metadata['namespace']}/{metadata['name']} runs in {current} mode; "
            f"KServe cannot switch it to {wanted}: delete it first or keep --deployment-mode "
            f"{current}"
        )
    predictor = copy.deepcopy(manifest["spec"]["predictor"])
    if canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = canary_traffic_percent
    old_predictor = (existing.get("spec") or {}).get("predictor") or {}
    return {
        "metadata": {
            "resourceVersion": old.get("resourceVersion"),
            "labels": metadata["labels"],
            "annotations": metadata["annotations"],
        },
        "spec": {"predictor": merge_patch(old_predictor, predictor)},
    }


def merge_patch(old, new):
    """A JSON merge patch from ``old`` to ``new``: changed keys, and None for removed ones."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def _api_failure(verb: str, namespace: str, name: str, err) -> str:
    return (
        f"could not {verb} InferenceService {namespace}/{name}: HTTP {err.status} {err.reason}"
        f"{': ' + err.body if err.body else ''}"
    )


def conditions_text(obj: dict) -> str:
    """The service's status conditions, one ``type=status (reason: message)`` per entry."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    if not conditions:
        return "no status conditions reported yet"
    parts = []
    for c in conditions:
        detail = ": ".join(x for x in (c.get("reason"), c.get("message")) if x)
        parts.append(f"{c.get('type')}={c.get('status')}" + (f" ({detail})" if detail else ""))
    return "; ".join(parts)


def is_ready(obj: dict, generation: int) -> bool:
    """True when the service is Ready for ``generation`` (not an older spec that was Ready)."""
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and observed < generation:
        return False
    return cluster.condition(obj, "Ready") is not None


def _failed_load(obj: dict) -> str | None:
    model_status = (obj.get("status") or {}).get("modelStatus") or {}
    if model_status.get("transitionStatus") not in FAILED_TRANSITIONS:
        return None
    info = model_status.get("lastFailureInfo") or {}
    detail = ": ".join(str(x) for x in (info.get("reason"), info.get("message")) if x)
    return f"{model_status['transitionStatus']}" + (f" ({detail})" if detail else "")


def wait_until_ready(
    api,
    namespace: str,
    name: str,
    generation: int,
    timeout: float = 600.0,
    poll: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Poll the InferenceService until it is Ready for ``generation``; return it.

    Raises DeployError with the service's conditions when the model failed to load or when
    ``timeout`` seconds pass first.
    """
    deadline, last = clock() + timeout, None
    while True:
        obj = cluster.get(api, INFERENCE_SERVICE, namespace, name)
        if is_ready(obj, generation):
            return obj
        text = conditions_text(obj)
        if text != last:
            log.info("InferenceService %s/%s: %s", namespace, name, text)
            last = text
        failure = _failed_load(obj)
        if failure:
            raise DeployError(
                f"InferenceService {namespace}/{name} failed to load its model: {failure}; "
                f"conditions: {text}"
            )
        if clock() >= deadline:
            raise DeployError(
                f"InferenceService {namespace}/{name} not Ready after {timeout:.0f}s; "
                f"conditions: {text}"
            )
        sleep(poll)


def service_url(obj: dict) -> str:
    """Where to reach the service: its cluster-local address, else its external URL."""
    status = obj.get("status") or {}
    url = (status.get("address") or {}).get("url") or status.get("url")
    if not url:
        name = obj.get("metadata", {}).get("name")
        raise DeployError(f"InferenceService {name} is Ready but reports no URL")
    return url.rstrip("/")


# -- smoke requests --------------------------------------------------------------------------


@dataclass
class SmokeResult:
    """The answers of one V1 and one V2 request carrying the same image."""

    url: str
    v1_count: int
    v2_count: int
    expected_count: int | None
    max_probability_difference: float | None
    seconds: float


def smoke_check(
    url: str,
    name: str,
    image: bytes,
    expected=None,
    tolerance: float = 0.05,
    host: str | None = None,
    timeout: float = 60.0,
) -> SmokeResult:
    """Send ``image`` over V1 and V2 and check the answers; raise DeployError if one is wrong.

    ``expected`` (Predictions of the same model run in-process) makes the check strict: both
    answers' class probabilities must be within ``tolerance`` of it (different hardware or
    precision moves them a little), and the counts must match unless the in-process answer is a
    near tie.
    """
    from invmon.serving.client import PredictError, PredictorClient

    start = time.monotonic()
    try:
        v1 = PredictorClient(url, name, "v1", host=host, timeout=timeout).predict([image])[0]
        # A JSON body, as most V2 clients send; the request id must come back.
        v2_client = PredictorClient(url, name, "v2", host=host, timeout=timeout, binary=False)
        v2 = v2_client.predict([image], request_id="smoke")[0]
    except PredictError as err:
        status = f"HTTP {err.status}: " if err.status else ""
        raise DeployError(f"smoke request to {url} failed: {status}{err}") from None
    for protocol, answer in (("V1", v1), ("V2", v2)):
        _check(
            abs(sum(answer.probabilities.values()) - 1) < 1e-3,
            f"{protocol} probabilities do not sum to 1: {answer}",
        )
    _check(v1.count == v2.count, f"V1 says {v1.count} items, V2 says {v2.count}")
    difference = None if expected is None else _compare(v1, v2, expected, tolerance)
    return SmokeResult(
        url=url,
        v1_count=v1.count,
        v2_count=v2.count,
        expected_count=None if expected is None else int(expected.counts[0]),
        max_probability_difference=None if difference is None else round(difference, 6),
        seconds=round(time.monotonic() - start, 3),
    )


def _compare(v1, v2, expected, tolerance: float) -> float:
    """Check both answers against the in-process Predictions; return the largest difference."""
    reference = expected.probabilities[0].astype(np.float64)
    difference = max(
        float(np.abs(np.array(list(a.probabilities.values())) - reference).max()) for a in (v1, v2)
    )
    _check(
        difference <= tolerance,
        f"served probabilities differ from the in-process model by {difference:.4f} "
        f"(allowed {tolerance})",
    )
    top2 = np.sort(reference)[-2:]
    if top2[1] - top2[0] > 2 * tolerance:
        _check(
            v1.count == int(expected.counts[0]),
            f"served count {v1.count} differs from the in-process count {expected.counts[0]}",
        )
    return difference


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise DeployError(f"smoke request failed: {message}")


@dataclass
class ClusterDeployReport:
    """What a rollout did, how long Ready took, and the smoke request's answer."""

    namespace: str
    name: str
    action: str
    generation: int
    canary_traffic_percent: int | None
    ready_seconds: float
    smoke: SmokeResult

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


def deploy_to_cluster(
    spec: ServiceSpec,
    smoke_image: bytes,
    model_dir: str | Path | None = None,
    api=None,
    timeout: float = 600.0,
    poll: float = 5.0,
    smoke_url: str | None = None,
    smoke_host: str | None = None,
) -> ClusterDeployReport:
    """Create or update the InferenceService, wait until Ready, then check a smoke request.

    ``model_dir`` is the model folder (when at hand) whose in-process answer the served one must
    match. ``smoke_url`` overrides the URL the service reports (for example an ingress gateway,
    with ``smoke_host`` as the Host header it routes on).
    """
    api = api or cluster.custom_objects_api()
    manifest = render_inference_service(spec)
    start = time.monotonic()
    action, stored = apply_inference_service(manifest, api, spec.canary_traffic_percent)
    generation = int(stored.get("metadata", {}).get("generation") or 1)
    log.info(
        "InferenceService %s/%s %s (generation %d)", spec.namespace, spec.name, action, generation
    )
    ready = wait_until_ready(api, spec.namespace, spec.name, generation, timeout, poll)
    ready_seconds = round(time.monotonic() - start, 1)
    expected = None
    if model_dir is not None:
        from invmon.serving.counter import Counter

        expected = Counter.from_model_dir(model_dir).predict_bytes([smoke_image])
    smoke = smoke_check(
        smoke_url or service_url(ready), spec.name, smoke_image, expected, host=smoke_host
    )
    return ClusterDeployReport(
        namespace=spec.namespace,
        name=spec.name,
        action=action,
        generation=generation,
        canary_traffic_percent=spec.canary_traffic_percent if action == "updated" else None,
        ready_seconds=ready_seconds,
        smoke=smoke,
    )


def current_namespace(default: str = "default") -> str:
    """The namespace this pod runs in (its ServiceAccount's), else ``default``."""
    return cluster.current_namespace(default)


def storage_uri(artifact_uri: str) -> str:
    """The storageUri KServe understands for a KFP artifact URI (``minio://`` becomes ``s3://``)."""
    uri = cluster.minio_as_s3(artifact_uri)
    if uri.startswith(("s3://", "gs://", "pvc://", "https://")):
        return uri
    raise ValueError(
        f"model URI {artifact_uri!r} is not fetchable by KServe (allowed: s3://, minio://, gs://, "
        "pvc://, https://); set the pipeline root to an object store"
    )


# -- local: a ModelServer on loopback ----------------------------------------------------------


@dataclass
class LocalDeployReport:
    """The outcome of serving a model on loopback and querying it."""

    url: str
    model_name: str
    image: str
    true_count: int | None
    v1_count: int
    v2_count: int
    in_process_count: int
    startup_seconds: float
    request_seconds: float

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


def deploy_local(
    model_dir: str | Path,
    image_path: str | Path,
    true_count: int | None = None,
    name: str = DEFAULT_MODEL_NAME,
) -> LocalDeployReport:
    """Serve ``model_dir`` with KServe's ModelServer on loopback, query it, then stop it.

    Sends the image at ``image_path`` once over V1 and once over V2, and fails unless both answers
    are well formed and equal the prediction of the same model run in-process (same machine and
    precision, so the tolerance is tight).
    """
    from invmon.serving.counter import Counter
    from invmon.serving.server import LocalServer

    image = Path(image_path).read_bytes()
    # The server runs the same frozen graph and precision as the in-process reference, so the
    # answers must agree to rounding (a compiled graph would differ in the last bf16 bits).
    expected = Counter.from_model_dir(model_dir, freeze=True).predict_bytes([image])
    start = time.monotonic()
    with LocalServer(model_dir, name=name, extra_args=["--graph", "frozen"]) as server:
        started = time.monotonic()
        smoke = smoke_check(server.url, name, image, expected, tolerance=1e-3)
    _check(
        smoke.v1_count == int(expected.counts[0]),
        f"served count {smoke.v1_count} differs from the in-process count {expected.counts[0]}",
    )
    return LocalDeployReport(
        url=server.url,
        model_name=name,
        image=str(image_path),
        true_count=true_count,
        v1_count=smoke.v1_count,
        v2_count=smoke.v2_count,
        in_process_count=int(expected.counts[0]),
        startup_seconds=round(started - start, 2),
        request_seconds=smoke.seconds,
    )


def first_test_image(arranged: str | Path) -> tuple[Path, int]:
    """The first test image of an arranged dataset and its recorded count."""
    from invmon.data.layout import image_locator, read_manifest

    rows = [r for r in read_manifest(arranged) if r[2] == "test"]
    if not rows:
        raise ValueError(f"arranged dataset {str(arranged)!r} has no test image to send")
    bin_id, count, split = rows[0]
    return image_locator(arranged)(bin_id, count, split), count


def deploy_local_from_dataset(
    model_dir: str | Path, arranged: str | Path, name: str = DEFAULT_MODEL_NAME
) -> LocalDeployReport:
    """:func:`deploy_local` with the first test image of an arranged dataset as the request."""
    image, count = first_test_image(arranged)
    return deploy_local(model_dir, image, true_count=count, name=name)
