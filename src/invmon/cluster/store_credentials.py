"""KServe's credentials for a model in KFP's own object store (``minio://`` artifacts).

A ``minio://BUCKET/KEY`` model is ``s3://BUCKET/KEY`` on KFP's store (SeaweedFS at
``seaweedfs.kubeflow:9000`` since KFP 2.16, plain HTTP). KServe's storage initializer takes its S3
settings from the Secrets of the predictor's ServiceAccount: the endpoint, HTTPS and region from
the Secret's ``serving.kserve.io/s3-*`` annotations, and the keys by reference
(``secretKeyRef``) to the key names of the cluster-wide ``inferenceservice-config`` ``credentials``
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` as KServe installs it; kserve/kserve
pkg/credentials/s3/s3_secret.go:70-103, pkg/credentials/service_account_credentials.go:234-300).
There is no per-Secret setting for other key names, and KFP's Secret ``mlpipeline-minio-artifact``
names its keys ``accesskey``/``secretkey`` and carries no KServe annotations (and belongs to KFP,
whose profile controller rewrites it). So the keys have to be copied, once per deploy, into a
Secret of the project's: :data:`STORE_SECRET`, annotated for KFP's store, carried by the
ServiceAccount :data:`STORE_ACCOUNT` that the InferenceService names.

The copy moves the values as the API returns them (base64 ``data``) from one API object to the
other; they are never decoded, logged, written to a file, or put in an error message.
Multi-user: the Profile namespace's own ``mlpipeline-minio-artifact``; single-user: ``kubeflow``'s,
where such runs deploy.
"""

from __future__ import annotations

import logging

from invmon.cluster import objects as cluster
from invmon.cluster.placement import KFP_OBJECT_STORE_SECRET, S3Secret

log = logging.getLogger(__name__)

STORE_SECRET = "invmon-kfp-store"
STORE_ACCOUNT = "invmon-kfp-store"
# KServe's default key names (config/configmap/inferenceservice.yaml credentials.s3).
KSERVE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MERGE_PATCH = "application/merge-patch+json"


class StoreCredentialsError(RuntimeError):
    """The object store's credentials could not be given to KServe."""


def store_host(endpoint_url: str) -> str:
    """``host:port`` of an endpoint URL (KServe's annotation takes no scheme)."""
    return endpoint_url.split("://", 1)[-1].rstrip("/")


def render_store_secret(namespace: str, endpoint_url: str, region: str = "us-east-1") -> dict:
    """The Secret KServe reads KFP's store with, without its values (:func:`copy_credentials`
    fills them from the store's own Secret)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": STORE_SECRET,
            "namespace": namespace,
            "labels": dict(cluster.PART_OF),
            "annotations": {
                "serving.kserve.io/s3-endpoint": store_host(endpoint_url),
                "serving.kserve.io/s3-usehttps": "1" if endpoint_url.startswith("https") else "0",
                "serving.kserve.io/s3-region": region,
            },
        },
        "type": "Opaque",
    }


def render_store_account(namespace: str) -> dict:
    """The ServiceAccount the InferenceService runs as: it carries :data:`STORE_SECRET`."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": STORE_ACCOUNT,
            "namespace": namespace,
            "labels": dict(cluster.PART_OF),
        },
        "secrets": [{"name": STORE_SECRET}],
        "automountServiceAccountToken": False,
    }


def copy_credentials(
    core_api,
    namespace: str,
    endpoint_url: str,
    source: S3Secret = KFP_OBJECT_STORE_SECRET,
) -> str:
    """Create or update :data:`STORE_SECRET` and :data:`STORE_ACCOUNT` in ``namespace`` with the
    keys of ``source`` (KFP's store Secret); return the ServiceAccount's name.

    ``core_api`` is a kubernetes ``CoreV1Api``. Needs ``get`` on the source Secret, ``create``
    on secrets and serviceaccounts, and ``patch`` on the two objects by name.
    """
    original = _read(core_api, namespace, source)
    secret = render_store_secret(namespace, endpoint_url)
    # base64 strings straight from the API: copied, never decoded.
    secret["data"] = {
        KSERVE_KEYS[0]: original[source.access_key],
        KSERVE_KEYS[1]: original[source.secret_key],
    }
    _create_or_patch(core_api, "secret", namespace, STORE_SECRET, secret)
    _create_or_patch(
        core_api, "service_account", namespace, STORE_ACCOUNT, render_store_account(namespace)
    )
    log.info(
        "KServe reads KFP's object store as ServiceAccount %s/%s (Secret %s, keys of %s)",
        namespace,
        STORE_ACCOUNT,
        STORE_SECRET,
        source.name,
    )
    return STORE_ACCOUNT


def _read(core_api, namespace: str, source: S3Secret) -> dict:
    from kubernetes.client.exceptions import ApiException

    try:
        data = core_api.read_namespaced_secret(source.name, namespace).data or {}
    except ApiException as err:
        raise StoreCredentialsError(
            f"could not read Secret {namespace}/{source.name} (KFP's object store keys): HTTP "
            f"{err.status} {err.reason}. Multi-user: is {namespace} a Profile with pipelines? "
            "Single-user: deploy in kubeflow. Or use an s3:// pipeline root (external-s3)"
        ) from None
    missing = [k for k in (source.access_key, source.secret_key) if k not in data]
    if missing:
        raise StoreCredentialsError(
            f"Secret {namespace}/{source.name} has no key {', '.join(missing)} "
            f"(expected {source.access_key} and {source.secret_key})"
        )
    return data


def _create_or_patch(core_api, kind: str, namespace: str, name: str, body: dict) -> None:
    """Create ``body``; when it exists, merge-patch it to ``body``. Errors name the object only
    (an API error body could echo what was sent)."""
    from kubernetes.client.exceptions import ApiException

    try:
        getattr(core_api, f"create_namespaced_{kind}")(namespace, body)
        return
    except ApiException as err:
        if err.status != 409:
            raise StoreCredentialsError(_failure("create", kind, namespace, name, err)) from None
    # The generated patch_namespaced_* methods send a dict as a JSON patch (their first content
    # type) and this client version takes no content type: send the merge patch directly.
    plural = "serviceaccounts" if kind == "service_account" else "secrets"
    try:
        core_api.api_client.call_api(
            f"/api/v1/namespaces/{namespace}/{plural}/{name}",
            "PATCH",
            header_params={"Content-Type": MERGE_PATCH, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            response_type="object",
            _return_http_data_only=True,
        )
    except ApiException as err:
        raise StoreCredentialsError(_failure("update", kind, namespace, name, err)) from None


def _failure(verb: str, kind: str, namespace: str, name: str, err) -> str:
    what = "ServiceAccount" if kind == "service_account" else "Secret"
    return f"could not {verb} {what} {namespace}/{name}: HTTP {err.status} {err.reason}"


def core_api_for(custom_api):
    """A ``CoreV1Api`` over the same API client as ``custom_api`` (a CustomObjectsApi)."""
    from kubernetes import client

    return client.CoreV1Api(custom_api.api_client)
