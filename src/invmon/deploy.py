"""Deploy: put a trained model behind KServe.

On a cluster this is a v1beta1 InferenceService whose predictor is the serving image (a custom
``kserve.Model``), with the model folder fetched from ``storageUri`` by KServe's storage
initializer using a ServiceAccount that carries the S3 credentials (none are in the manifest).

In a local run there is no cluster: :func:`deploy_local` serves the model folder with KServe's
ModelServer on loopback, sends real requests with a bin image, checks that the answers match the
model run in-process, and stops the server.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from invmon.images import DEFAULT_IMAGES
from invmon.predictor import DEFAULT_MODEL_NAME

log = logging.getLogger(__name__)

KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
DEPLOYMENT_MODES = ("Standard", "Knative")


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

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "").isalnum() or not self.name[0].isalpha():
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


def render_inference_service(spec: ServiceSpec) -> dict:
    """The v1beta1 InferenceService for the custom predictor, as a plain dict."""
    if not spec.model_uri:
        raise ValueError("--model-uri is required (for example s3://bucket/models/bin-counter)")
    resources = {"cpu": spec.cpu, "memory": spec.memory}
    limits = dict(resources)
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
        # KServe's storage initializer downloads STORAGE_URI into /mnt/models before start.
        "env": [{"name": "STORAGE_URI", "value": spec.model_uri}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": resources, "limits": limits},
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
    manifest = {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "annotations": {"serving.kserve.io/deploymentMode": spec.deployment_mode},
            "labels": {"app.kubernetes.io/part-of": "inventory-monitoring"},
        },
        "spec": {"predictor": predictor},
    }
    check_inference_service(manifest)
    return manifest


def check_inference_service(manifest: dict):
    """Read ``manifest`` into kserve's typed V1beta1InferenceService; raise on any unknown field."""
    from kserve import V1beta1InferenceService

    from invmon.k8s import to_typed

    return to_typed(manifest, V1beta1InferenceService)


def apply_inference_service(manifest: dict, api=None) -> str:
    """Create the InferenceService, or replace its spec when it exists; return what was done.

    ``api`` is a ``kubernetes.client.CustomObjectsApi``; by default one is built from the
    in-cluster service account or the local kubeconfig.
    """
    from kubernetes.client.exceptions import ApiException

    api = api or _custom_objects_api()
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    args = (KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL)
    try:
        api.create_namespaced_custom_object(*args, manifest)
        return "created"
    except ApiException as err:
        if err.status != 409:
            raise
    api.patch_namespaced_custom_object(*args, name, {"spec": manifest["spec"]})
    return "updated"


def _custom_objects_api():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


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
    are well formed and equal the prediction of the same model run in-process.
    """
    from invmon.inference import Counter
    from invmon.serve import LocalServer, post_json, v1_request, v2_request

    image = Path(image_path).read_bytes()
    expected = int(Counter.from_model_dir(model_dir).predict_bytes([image]).counts[0])
    start = time.monotonic()
    with LocalServer(model_dir, name=name) as server:
        started = time.monotonic()
        status, v1 = post_json(f"{server.url}/v1/models/{name}:predict", v1_request([image]))
        _check(status == 200, f"V1 request failed with HTTP {status}: {v1}")
        v1_count = int(v1["predictions"][0]["count"])
        probabilities = v1["predictions"][0]["probabilities"]
        _check(abs(sum(probabilities.values()) - 1) < 1e-3, f"probabilities do not sum to 1: {v1}")
        status, v2 = post_json(f"{server.url}/v2/models/{name}/infer", v2_request([image], "smoke"))
        _check(status == 200, f"V2 request failed with HTTP {status}: {v2}")
        outputs = {o["name"]: o for o in v2["outputs"]}
        v2_count = int(np.asarray(outputs["count"]["data"]).reshape(-1)[0])
        _check(v2.get("id") == "smoke", f"V2 answer does not carry the request id: {v2}")
        finished = time.monotonic()
    _check(
        v1_count == v2_count == expected,
        f"served counts (V1 {v1_count}, V2 {v2_count}) differ from the in-process count {expected}",
    )
    return LocalDeployReport(
        url=server.url,
        model_name=name,
        image=str(image_path),
        true_count=true_count,
        v1_count=v1_count,
        v2_count=v2_count,
        in_process_count=expected,
        startup_seconds=round(started - start, 2),
        request_seconds=round(finished - started, 3),
    )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"local deployment check failed: {message}")


def deploy_local_from_dataset(
    model_dir: str | Path, arranged: str | Path, name: str = DEFAULT_MODEL_NAME
) -> LocalDeployReport:
    """:func:`deploy_local` with the first test image of an arranged dataset as the request."""
    from invmon import abid
    from invmon.arrange import read_manifest

    rows = [r for r in read_manifest(arranged) if r[2] == "test"]
    if not rows:
        raise ValueError(f"arranged dataset {str(arranged)!r} has no test image to send")
    bin_id, count, split = rows[0]
    image = Path(arranged) / split / str(count) / f"{bin_id}{abid.IMAGE_SUFFIX}"
    return deploy_local(model_dir, image, true_count=count, name=name)


_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def storage_uri(artifact_uri: str) -> str:
    """The storageUri KServe understands for a KFP artifact URI (``minio://`` becomes ``s3://``)."""
    if artifact_uri.startswith("minio://"):
        return "s3://" + artifact_uri[len("minio://") :]
    if artifact_uri.startswith(("s3://", "gs://", "pvc://", "https://")):
        return artifact_uri
    raise ValueError(
        f"model URI {artifact_uri!r} is not fetchable by KServe (allowed: s3://, minio://, gs://, "
        "pvc://, https://); set the pipeline root to an object store"
    )


def deploy_to_cluster(
    model_uri: str,
    name: str = DEFAULT_MODEL_NAME,
    namespace: str = "",
    image: str = "",
    service_account: str = "invmon-s3",
) -> str:
    """Create or update the InferenceService for ``model_uri`` in ``namespace``."""
    if not namespace:
        namespace = (
            Path(_NAMESPACE_FILE).read_text().strip()
            if Path(_NAMESPACE_FILE).is_file()
            else "default"
        )
    spec = ServiceSpec(
        name=name,
        namespace=namespace,
        model_uri=storage_uri(model_uri),
        image=image or DEFAULT_IMAGES.image("serve"),
        service_account=service_account,
    )
    action = apply_inference_service(render_inference_service(spec))
    return f"InferenceService {namespace}/{name} {action}"
