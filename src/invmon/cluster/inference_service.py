"""The KServe InferenceService of the model: render it, check it, create or update it, wait.

:func:`render_inference_service` writes a v1beta1 InferenceService whose predictor is the serving
image (a custom ``kserve.Model``), checked field by field against kserve's typed model. KServe's
storage initializer fetches the model folder from ``STORAGE_URI`` (``s3://...``) with the
credentials of the predictor's ServiceAccount, whose Secret carries KServe's
``serving.kserve.io/s3-*`` annotations: no credential is ever in the manifest.
:func:`roll_out` creates or updates the service and waits until it reports Ready for the new
generation, or fails with the service's conditions. The deploy stage (:mod:`invmon.stages.deploy`)
then sends the smoke requests.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from invmon.cluster import objects as cluster
from invmon.cluster import typed
from invmon.cluster.container_images import DEFAULT_IMAGES
from invmon.cluster.placement import PodOptions, parse_toleration
from invmon.core.settings import Settings, inherit, setting
from invmon.serving.client import DEFAULT_MODEL_NAME
from invmon.serving.options import ENGINE_KEY_ENV

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
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SECRET = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

# Probes of the predictor, from its measured start-up (docs/benchmarks.md, "Predictor cold
# start"; docs/cluster.md, "Predictor start-up and probes"). It reports ready once its float
# model answers eagerly (staged loading, docs/serving.md): about 8 s after the process starts on
# 2 cores, and the int8 or compiled engine is swapped in later without leaving ready. The
# startup probe asks every 2 s, so a replica takes traffic within 2 s of being ready, and gives
# up after STARTUP_BUDGET_S: room for a slow node, a 1-CPU pod and --load blocking (which builds
# the final engine first; up to about a minute and a half with a compiled graph), while a
# predictor stuck in start-up is still restarted. Only then does the readiness probe run, every
# 5 s with 5 s to answer (a burst of requests keeps every core busy).
STARTUP_PERIOD_S = 2
STARTUP_BUDGET_S = 240
READINESS_PERIOD_S = 5
READINESS_TIMEOUT_S = 5


class DeployError(RuntimeError):
    """The InferenceService could not be rolled out, or does not answer correctly."""


def toleration(text: str) -> dict:
    """A toleration from ``KEY[=VALUE]:EFFECT`` (the form ``invmon compile`` takes), as a dict."""
    return parse_toleration(text, "--toleration").to_dict()


@dataclass(frozen=True)
class ServiceSpec(Settings):
    """Settings of the InferenceService."""

    name: str = setting(DEFAULT_MODEL_NAME, help="service and model name")
    namespace: str = setting("", help="Kubernetes namespace (empty: this pod's, or default)")
    # The storageUri KServe fetches (s3://...); the deploy stage sets it from --model-uri.
    model_uri: str = setting("", help="storage URI of the model folder", cli=False)
    image: str = setting("", help="predictor image (empty: the project's serving image)")
    service_account: str = setting(
        "invmon-s3", help="ServiceAccount whose Secret carries KServe's S3 settings"
    )
    deployment_mode: str = setting(
        "Standard",
        choices=DEPLOYMENT_MODES,
        help="Standard (a Kubernetes Deployment) or Knative (scale to zero, canary rollouts)",
    )
    min_replicas: int = setting(1, help="fewest predictor replicas (0 needs Knative)", minimum=0)
    max_replicas: int = setting(2, help="most predictor replicas", minimum=1)
    cpu: str = setting("1", help="CPU request and limit per replica")
    memory: str = setting("2Gi", help="memory request and limit per replica")
    gpus: int = setting(0, help="GPUs per replica", minimum=0)
    # The pool's node label and taints as the training pods take them; the predictor keeps its
    # tolerations as the API's dicts, which is how the deploy task receives them from KFP.
    node_selector: dict[str, str] = inherit(  # noqa: RUF009 (a dataclasses.field, as setting's)
        PodOptions, "node_selector", help="node label the predictor must run on (repeatable)"
    )
    tolerations: tuple[dict, ...] = inherit(
        PodOptions,
        "tolerations",
        help="node taint the predictor tolerates (repeatable)",
        parse=toleration,
    )
    canary_traffic_percent: int | None = setting(
        None, help="on update in Knative mode: share of traffic for the new revision"
    )
    # Istio admits callers by the namespace of their mTLS identity: the service's own namespace
    # always, these besides (an application's namespace; istio-system for the ingress gateway).
    callers: tuple[str, ...] = setting(
        (),
        help="namespace besides the service's own whose pods may call the predictor (repeatable; "
        "its Istio AuthorizationPolicy admits only these)",
        flag="--caller-namespace",
        metavar="NAMESPACE",
    )
    monitor: str = setting(
        "",
        help="URL of invmon monitor: KServe's payload logger sends it every request and response "
        "as CloudEvents (empty: no logger)",
        metavar="URL",
    )
    engine_key_secret: str = setting(
        "",
        help="Secret whose INVMON_ENGINE_KEY the predictor verifies an engine prebuilt into the "
        "model folder with (invmon prebuild; empty: the predictor never opens one)",
        metavar="SECRET",
    )
    # Set by deploy --from-registry: the modelregistry/* labels that tie the service to a
    # registered version.
    labels: dict[str, str] = setting(
        default_factory=dict, help="labels added to the service's own", cli=False
    )

    def __post_init__(self):
        for caller in self.callers:
            if not _NAMESPACE.fullmatch(caller):
                raise ValueError(
                    f"--caller-namespace {caller!r} is not a namespace name (lowercase letters, "
                    "digits and '-', at most 63)"
                )
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
        check_secret_name(self.engine_key_secret, "--engine-key-secret")
        if self.monitor and not self.monitor.startswith(("http://", "https://")):
            raise ValueError(
                f"--monitor {self.monitor!r} is not a URL KServe's logger can send to (allowed: "
                "http://... or https://...)"
            )
        super().__post_init__()


def check_secret_name(name: str, flag: str) -> None:
    """Raise ValueError naming ``flag`` when ``name`` is neither empty nor a Secret's name."""
    if name and not _SECRET.fullmatch(name):
        raise ValueError(
            f"{flag} {name!r} is not a Secret name (lowercase letters, digits, '-' and '.', at "
            "most 253)"
        )


def render_inference_service(spec: ServiceSpec) -> dict:
    """The v1beta1 InferenceService for the custom predictor, as a plain dict.

    ``canary_traffic_percent`` is not rendered here: it only means something for an update of an
    existing service, so :func:`apply_inference_service` adds it.
    """
    if not spec.model_uri:
        raise ValueError("--model-uri is required (for example s3://bucket/models/bin-counter)")
    predictor = {
        "serviceAccountName": spec.service_account,
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
        "containers": [_predictor_container(spec)],
    }
    if spec.node_selector:
        predictor["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        predictor["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.monitor:
        # mode all: the monitor joins each request with its response by the CloudEvent id.
        predictor["logger"] = {"url": spec.monitor, "mode": "all"}
    manifest = {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "annotations": {DEPLOYMENT_MODE_ANNOTATION: spec.deployment_mode},
            "labels": {**cluster.PART_OF, **spec.labels},
        },
        "spec": {"predictor": predictor},
    }
    check_inference_service(manifest)
    return manifest


def _predictor_container(spec: ServiceSpec) -> dict:
    """The serving image's container: KServe's flags, the model's storage URI, non-root."""
    requests = {"cpu": spec.cpu, "memory": spec.memory}
    limits = dict(requests)
    if spec.gpus:
        limits["nvidia.com/gpu"] = str(spec.gpus)
    return {
        "name": "kserve-container",
        "image": spec.image or DEFAULT_IMAGES.image("serve"),
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
        "env": [{"name": "STORAGE_URI", "value": spec.model_uri}, *_engine_key(spec)],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        **probes(spec.name),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _engine_key(spec: ServiceSpec) -> list[dict]:
    """The predictor's key for a prebuilt engine, from its Secret (never a value in the
    manifest); none without :attr:`ServiceSpec.engine_key_secret`."""
    if not spec.engine_key_secret:
        return []
    ref = {"name": spec.engine_key_secret, "key": ENGINE_KEY_ENV}
    return [{"name": ENGINE_KEY_ENV, "valueFrom": {"secretKeyRef": ref}}]


def probes(name: str, port: int = 8080) -> dict:
    """The predictor container's startup and readiness probes (see STARTUP_BUDGET_S).

    Both ask the model's ready endpoint, which answers 200 once the model answers correctly.
    """
    ready = {"httpGet": {"path": f"/v2/models/{name}/ready", "port": port}}
    return {
        "startupProbe": {
            **ready,
            "periodSeconds": STARTUP_PERIOD_S,
            "timeoutSeconds": STARTUP_PERIOD_S,
            "failureThreshold": STARTUP_BUDGET_S // STARTUP_PERIOD_S,
        },
        "readinessProbe": {
            **ready,
            "periodSeconds": READINESS_PERIOD_S,
            "timeoutSeconds": READINESS_TIMEOUT_S,
            "failureThreshold": 3,
        },
    }


def check_inference_service(manifest: dict):
    """Read ``manifest`` into kserve's typed V1beta1InferenceService; raise on any unknown field."""
    from kserve import V1beta1InferenceService

    return typed.check(manifest, V1beta1InferenceService)


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


@dataclass
class Rollout:
    """What :func:`roll_out` did, and the service once Ready."""

    action: str  # created or updated
    generation: int
    ready: dict
    seconds: float


def roll_out(spec: ServiceSpec, api=None, timeout: float = 600.0, poll: float = 5.0) -> Rollout:
    """Create or update the InferenceService of ``spec`` and wait until it is Ready.

    Raises DeployError when the API refuses it, its model fails to load, or ``timeout`` seconds
    pass first.
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
    return Rollout(action, generation, ready, round(time.monotonic() - start, 1))


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
