"""Custom resources on a cluster: create, wait for a condition, check against typed models.

Katib Experiments and Kubeflow Trainer TrainJobs are custom objects; the ``kubernetes`` client's
``CustomObjectsApi`` creates and reads them. Their typed models come from the ``kubeflow``
package (``kubeflow_katib_api``, ``kubeflow_trainer_api``): objects are built from those models in
code, and :func:`invmon.cluster.typed.check` reads the resulting JSON back field by field, so that
a misspelt or misplaced field is an error here, not a silently dropped field on a cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
PART_OF = {"app.kubernetes.io/part-of": "inventory-monitoring"}


@dataclass(frozen=True)
class Resource:
    """Where a kind of custom object lives in the API (group, version, plural)."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        """``group/version``."""
        return f"{self.group}/{self.version}"


def custom_objects_api(api_client=None):
    """A CustomObjectsApi: in a pod from its ServiceAccount, elsewhere from the kubeconfig."""
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client)


def current_namespace(default: str) -> str:
    """The namespace this pod runs in (KFP runs tasks in the user's profile), else ``default``."""
    path = Path(NAMESPACE_FILE)
    return path.read_text().strip() if path.is_file() else default


def create_or_reuse(api, resource: Resource, manifest: dict) -> dict:
    """Create ``manifest``; if an object of that name exists (a retried task), reuse it."""
    from kubernetes.client.exceptions import ApiException

    namespace = manifest["metadata"]["namespace"]
    name = manifest["metadata"]["name"]
    try:
        return api.create_namespaced_custom_object(
            resource.group, resource.version, namespace, resource.plural, manifest
        )
    except ApiException as err:
        if err.status != 409:
            raise RuntimeError(
                f"could not create {resource.kind} {namespace}/{name}: {err.status} {err.reason}"
            ) from err
    log.info("%s %s/%s exists already: following it", resource.kind, namespace, name)
    return get(api, resource, namespace, name)


def get(api, resource: Resource, namespace: str, name: str) -> dict:
    """Read one custom object."""
    return api.get_namespaced_custom_object(
        resource.group, resource.version, namespace, resource.plural, name
    )


def condition(obj: dict, kind: str) -> dict | None:
    """The status condition of type ``kind`` when it is true, else None."""
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind and str(item.get("status")) == "True":
            return item
    return None


def wait_for(
    read: Callable[[], dict],
    succeeded: str,
    failed: str,
    what: str,
    timeout: float,
    poll: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_poll: Callable[[dict], None] | None = None,
) -> dict:
    """Poll ``read()`` until condition ``succeeded`` or ``failed`` is true; return the object.

    Raises RuntimeError with the failure's reason and message, or TimeoutError after ``timeout``
    seconds.
    """
    deadline = clock() + timeout
    while True:
        obj = read()
        if on_poll is not None:
            on_poll(obj)
        if condition(obj, succeeded):
            return obj
        if bad := condition(obj, failed):
            raise RuntimeError(
                f"{what} failed: {bad.get('reason', 'no reason given')}: "
                f"{bad.get('message', 'no message')}"
            )
        if clock() >= deadline:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f}s")
        sleep(poll)


# KFP's default object store, which its artifacts name as minio://BUCKET/KEY. Since KFP 2.16 it is
# SeaweedFS (kubeflow/pipelines 5ef18b95 "Remove minio", #12613): the launcher's own default is
# "seaweedfs.kubeflow:9000" (backend/src/v2/objectstore/config.go:29). KFP <= 2.15 served MinIO at
# http://minio-service.kubeflow:9000: pass that as the endpoint there (artifact_endpoint_url).
KFP_OBJECT_STORE_ENDPOINT = "http://seaweedfs.kubeflow:9000"


def minio_as_s3(uri: str) -> str:
    """``minio://BUCKET/KEY`` (how KFP records artifacts on its object store) as
    ``s3://BUCKET/KEY``.

    The store speaks S3, so the object is the same; only the endpoint differs. Other URIs are
    returned unchanged.
    """
    return "s3://" + uri[len("minio://") :] if uri.startswith("minio://") else uri


def s3_location(uri: str, endpoint_url: str | None = None) -> tuple[str, str | None]:
    """An artifact URI as the ``s3://`` location and endpoint that pods outside KFP can read.

    KFP records artifacts on its default object store as ``minio://BUCKET/KEY``; that is S3 at
    the store's endpoint (``endpoint_url``, else :data:`KFP_OBJECT_STORE_ENDPOINT`). Other stores
    (``gs://``) cannot be read by the training image and are refused.
    """
    if uri.startswith("s3://"):
        return uri, endpoint_url or None
    if uri.startswith("minio://"):
        return minio_as_s3(uri), endpoint_url or KFP_OBJECT_STORE_ENDPOINT
    raise ValueError(
        f"artifact {uri!r} is not on S3 or MinIO: Katib trials and TrainJobs read and write "
        "s3:// locations (set the pipeline root to an s3:// bucket)"
    )


def object_name(prefix: str, *parts: str) -> str:
    """A stable name for an object created on behalf of a task (the same when it is retried)."""
    import hashlib

    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"
