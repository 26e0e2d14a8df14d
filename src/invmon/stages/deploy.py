"""Deploy: put a trained model behind KServe, and check that it answers.

``target`` says where the model goes, and :func:`run` is the one place that dispatches on it, for
``invmon deploy`` and the deploy component alike:

- ``kserve``: create or update the InferenceService (:mod:`invmon.cluster.inference_service`),
  wait until it is Ready for the new generation, then send smoke requests whose answers must match
  the model run in this process (when a local copy of the model folder is at hand);
- ``kserve`` with ``dry_run``: only render the manifest;
- ``local`` (a pipeline run without a cluster): serve the model folder with KServe's ModelServer
  on loopback, send the same smoke requests, and stop the server.

With ``from_registry`` (``NAME[:VERSION]``, the newest version when none is given) the model's
storage URI comes from the Kubeflow Model Registry (:mod:`invmon.cluster.registry`), and the
InferenceService carries the version's ``modelregistry/registered-model-id`` and
``modelregistry/model-version-id`` labels.

The smoke requests are one V1 and one V2 request carrying the same image, sent through the shared
client (:class:`invmon.serving.client.PredictorClient`). On a cluster, when Istio refuses them
(HTTP 403 ``RBAC: access denied``: a Profile namespace without the predictor's
AuthorizationPolicy), the check is skipped with a message saying what to apply; the rollout itself
succeeded.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from invmon.cluster.inference_service import DeployError, ServiceSpec
from invmon.cluster.objects import KFP_OBJECT_STORE_ENDPOINT
from invmon.cluster.registry import RegistryOptions
from invmon.core.command import Command, as_json
from invmon.core.settings import Settings, setting
from invmon.serving.client import DEFAULT_MODEL_NAME

TARGETS = ("kserve", "local")
log = logging.getLogger(__name__)


class MeshRefused(DeployError):
    """Istio's sidecar refused the smoke request: no AuthorizationPolicy admits the caller."""


@dataclass(frozen=True)
class DeploySettings(Settings):
    """Settings of deploy: the model, its InferenceService, the target and the smoke request."""

    model_uri: str = setting(
        "",
        help="s3:// URI of the model folder (with --local: a local model folder; "
        "not with --from-registry)",
    )
    from_registry: str = setting(
        "",
        help="deploy a version registered in the Kubeflow Model Registry (latest when no VERSION "
        "is given): its storage URI, and its ids as the service's modelregistry/* labels",
        metavar="NAME[:VERSION]",
    )
    registry: RegistryOptions = setting(default_factory=RegistryOptions, group="Model Registry")
    service: ServiceSpec = setting(default_factory=ServiceSpec, group="InferenceService")
    target: str = setting(
        "kserve",
        choices=TARGETS,
        help="kserve: create or update the InferenceService, wait for Ready and smoke-test it; "
        "local: serve the model folder on loopback and send real requests (also --local)",
    )
    store_endpoint: str = setting(
        KFP_OBJECT_STORE_ENDPOINT,
        help="KFP's object store as the storage initializer reaches it, for minio:// models "
        "(KFP 2.15 or older: http://minio-service.kubeflow:9000)",
    )
    dry_run: bool = setting(False, help="print the manifest, apply nothing")
    timeout: float = setting(600.0, help="seconds to wait for Ready", above=0)
    model: str | None = setting(
        None, help="local copy of the model folder: the smoke answer must match it"
    )
    smoke_url: str | None = setting(
        None, help="URL for the smoke request (default: the service's own)"
    )
    smoke_host: str | None = setting(
        None, help="Host header for the smoke request (ingress routing)"
    )
    sample: str | None = setting(
        None, help="image for the smoke request (default: a synthetic bin)"
    )
    arranged: str | None = setting(
        None, help="arranged dataset whose first test image is the smoke request", cli=False
    )

    def __post_init__(self):
        if bool(self.model_uri) == bool(self.from_registry):
            raise ValueError(
                "give the model as one of --model-uri URI or --from-registry NAME[:VERSION]"
            )
        if self.from_registry and not self.registry.enabled:
            raise ValueError("--from-registry needs --registry-url (the Model Registry's address)")
        super().__post_init__()


def from_registry(settings: DeploySettings) -> DeploySettings:
    """``settings`` with the registered version's storage URI and labels (unchanged when no
    version is named)."""
    if not settings.from_registry:
        return settings
    from invmon.cluster.registry import resolve

    version = resolve(settings.registry, settings.from_registry)
    log.info("deploying %s version %s from %s", version.name, version.version, version.registry)
    labels = {**settings.service.labels, **version.labels()}
    return settings.replace(
        model_uri=version.uri, from_registry="", service=settings.service.replace(labels=labels)
    )


def run(settings: DeploySettings):
    """Deploy as ``settings.target`` says; return the report (the manifest on a dry run)."""
    from invmon.cluster import inference_service as service

    settings = from_registry(settings)
    if settings.target == "local":
        image, count = _smoke_image(settings)
        model_dir = settings.model or settings.model_uri
        return deploy_local(model_dir, image, true_count=count, name=settings.service.name)
    spec = settings.service.replace(
        namespace=settings.service.namespace or service.current_namespace(),
        model_uri=service.storage_uri(settings.model_uri),
    )
    store = kfp_store_endpoint(settings)
    if store:
        from invmon.cluster.store_credentials import STORE_ACCOUNT

        spec = spec.replace(service_account=STORE_ACCOUNT)
    if settings.dry_run:
        return service.render_inference_service(spec)
    image, _count = _smoke_image(settings)
    return deploy_to_cluster(
        spec,
        image.read_bytes(),
        model_dir=settings.model,
        timeout=settings.timeout,
        smoke_url=settings.smoke_url,
        smoke_host=settings.smoke_host,
        kfp_store=store,
    )


def kfp_store_endpoint(settings: DeploySettings) -> str | None:
    """The endpoint of KFP's object store when the model is there (``minio://``) and no other
    ServiceAccount was chosen: the service then runs as the store's account
    (:mod:`invmon.cluster.store_credentials`)."""
    default_account = ServiceSpec().service_account
    if settings.model_uri.startswith("minio://") and (
        settings.service.service_account == default_account
    ):
        return settings.store_endpoint
    return None


def _smoke_image(settings: DeploySettings) -> tuple[Path, int | None]:
    """The smoke request's image and, when known, its recorded count."""
    if settings.sample:
        return Path(settings.sample), None
    if settings.arranged:
        return first_test_image(settings.arranged)
    return _synthetic_sample(), None


def first_test_image(arranged: str | Path) -> tuple[Path, int]:
    """The first test image of an arranged dataset and its recorded count."""
    from invmon.data.layout import image_locator, read_manifest

    rows = [r for r in read_manifest(arranged) if r[2] == "test"]
    if not rows:
        raise ValueError(f"arranged dataset {str(arranged)!r} has no test image to send")
    bin_id, count, split = rows[0]
    return image_locator(arranged)(bin_id, count, split), count


def _synthetic_sample() -> Path:
    from invmon.data.synth import make_bin

    _, jpeg, _, _ = make_bin(seed=0, number=1, max_items=5)
    path = Path(tempfile.mkdtemp()) / "sample.jpg"
    path.write_bytes(jpeg)
    return path


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
        from invmon.cluster.mesh import ISTIO_DENIED

        if err.status == 403 and ISTIO_DENIED in str(err):
            raise MeshRefused(f"{url} answered HTTP 403 {ISTIO_DENIED!r}") from None
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
    import numpy as np

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


# -- on a cluster ----------------------------------------------------------------------------


@dataclass
class ClusterDeployReport:
    """What a rollout did, how long Ready took, and the smoke request's answer (or why the
    check was skipped)."""

    namespace: str
    name: str
    action: str
    generation: int
    canary_traffic_percent: int | None
    ready_seconds: float
    smoke: SmokeResult | None
    smoke_skipped: str | None = None

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
    kfp_store: str | None = None,
) -> ClusterDeployReport:
    """Create or update the InferenceService, wait until Ready, then check a smoke request.

    ``model_dir`` is the model folder (when at hand) whose in-process answer the served one must
    match. ``smoke_url`` overrides the URL the service reports (for example an ingress gateway,
    with ``smoke_host`` as the Host header it routes on). ``kfp_store`` (the endpoint of KFP's
    object store, for a model there) first gives the service's ServiceAccount the store's keys.
    """
    from invmon.cluster import objects as cluster
    from invmon.cluster.inference_service import roll_out, service_url

    api = api or cluster.custom_objects_api()
    if kfp_store:
        from invmon.cluster import store_credentials

        core = store_credentials.core_api_for(api)
        try:
            store_credentials.copy_credentials(core, spec.namespace, kfp_store)
        except store_credentials.StoreCredentialsError as err:
            raise DeployError(str(err)) from None
    rollout = roll_out(spec, api, timeout, poll)
    expected = None
    if model_dir is not None:
        from invmon.serving.counter import Counter

        expected = Counter.from_model_dir(model_dir).predict_bytes([smoke_image])
    url = smoke_url or service_url(rollout.ready)
    smoke, skipped = None, None
    try:
        smoke = smoke_check(url, spec.name, smoke_image, expected, host=smoke_host)
    except MeshRefused as err:
        skipped = mesh_refused_message(spec, str(err))
        log.warning("%s", skipped)
    return ClusterDeployReport(
        namespace=spec.namespace,
        name=spec.name,
        action=rollout.action,
        generation=rollout.generation,
        canary_traffic_percent=(
            spec.canary_traffic_percent if rollout.action == "updated" else None
        ),
        ready_seconds=rollout.seconds,
        smoke=smoke,
        smoke_skipped=skipped,
    )


def mesh_refused_message(spec: ServiceSpec, refusal: str) -> str:
    """Why the smoke check was skipped, and the AuthorizationPolicy that lets it run."""
    import yaml

    from invmon.cluster.mesh import render_authorization_policy

    policy = render_authorization_policy(spec.name, spec.namespace, spec.callers)
    return (
        f"smoke check skipped: {refusal}. The InferenceService {spec.namespace}/{spec.name} is "
        "Ready, but Istio refuses this pod: pipeline pods run without an Istio sidecar, and a "
        "Kubeflow Profile namespace admits only callers with one, by the namespace of their "
        "identity. Check it from a pod with a sidecar (or through the ingress gateway) once "
        f"the AuthorizationPolicy {policy['metadata']['name']} "
        "(manifests/multi-user/predictor-authorizationpolicy.yaml for bin-counter) admits its "
        "namespace; the policy for this service, to apply before the check next time:\n"
        + yaml.safe_dump(policy, sort_keys=False)
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
    # Loaded in full before ready (not staged): every answer comes from that same engine.
    args = ["--graph", "frozen", "--load", "blocking"]
    with LocalServer(model_dir, name=name, extra_args=args) as server:
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


# -- the command -----------------------------------------------------------------------------


def _local_option(parser: argparse.ArgumentParser) -> None:
    """--local, the older spelling of --target local (a flag that sets a choice)."""
    parser.add_argument(
        "--local",
        dest="target",
        action="store_const",
        const="local",
        help="serve --model-uri (a folder) on loopback and send real requests",
    )


def show(result, settings: DeploySettings) -> str:
    """The manifest as YAML on a dry run, else the report as JSON."""
    if isinstance(result, dict):
        import yaml

        return yaml.safe_dump(result, sort_keys=False).rstrip("\n")
    return as_json(result)


DEPLOY = Command(
    DeploySettings,
    run,
    description="Create or update a KServe InferenceService for the model, wait until it is "
    "Ready (failing with its conditions otherwise) and check a smoke request. --dry-run prints "
    "the manifest; --local serves a model folder on loopback instead.",
    show=show,
    extend=_local_option,
)
