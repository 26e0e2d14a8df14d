"""Reaching the predictor through the Istio mesh of a Kubeflow Profile: the AuthorizationPolicy
that admits its callers, and how a refusal reads.

Apart from :mod:`invmon.cluster.inference_service`, which renders the service itself.
"""

from __future__ import annotations

from invmon.cluster import objects as cluster

# The body Istio's sidecar answers a request with (HTTP 403) when no AuthorizationPolicy allows it.
ISTIO_DENIED = "RBAC: access denied"
# The label KServe puts on the predictor's pods (kserve/kserve pkg/constants/constants.go:61).
PREDICTOR_POD_LABEL = "serving.kserve.io/inferenceservice"
# The predictor's inference and health paths, V1 and V2 (Istio: a trailing * is a prefix match).
PREDICTOR_PATHS = ("/v1/models/*", "/v2/models/*", "/v2/health/*")


def render_authorization_policy(name: str, namespace: str, callers: tuple[str, ...] = ()) -> dict:
    """The Istio AuthorizationPolicy that admits the predictor ``name``'s callers.

    Only pods of ``namespace`` (the service's own) and of the ``callers`` namespaces are
    admitted, only to the predictor's pods and only on its inference and health paths. Istio
    knows a caller's namespace from its mTLS identity, so a caller needs a sidecar: KFP starts
    its task pods without one, so the deploy step's smoke request is refused (HTTP 403 ``RBAC:
    access denied``) and reported as skipped. Admitting callers without an identity would admit
    any pod of the cluster, which is what this policy must not do.
    """
    if not namespace:
        raise ValueError(
            f"AuthorizationPolicy {name}-predictor: a namespace is required (it is the first "
            "namespace the policy admits)"
        )
    namespaces = [namespace, *(n for n in callers if n != namespace)]
    return {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": f"{name}-predictor",
            "namespace": namespace,
            "labels": dict(cluster.PART_OF),
        },
        "spec": {
            "action": "ALLOW",
            "selector": {"matchLabels": {PREDICTOR_POD_LABEL: name}},
            "rules": [
                {
                    "from": [{"source": {"namespaces": namespaces}}],
                    "to": [{"operation": {"paths": list(PREDICTOR_PATHS)}}],
                }
            ],
        },
    }
