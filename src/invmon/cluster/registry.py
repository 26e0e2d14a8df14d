"""The Kubeflow Model Registry: record a model version with its lineage, and look one up to deploy.

Everything goes through the registry's own Python client (``model-registry`` on PyPI), which
speaks the registry's REST API (``/api/model_registry/v1/...``). :func:`register` records a model
that passed the quality gate: a registered model, a version named from the run (its evaluation
metrics and hyperparameters as the version's custom properties), and a model artifact with the
storage URI, format ``pytorch`` and the run's lineage as the registry models it
(``model_source_kind`` pipelines, ``model_source_class`` pipelinerun, the namespace as group, the
run id). :func:`resolve` finds a version (the newest when none is named) for ``invmon deploy
--from-registry``, with the ids the InferenceService's ``modelregistry/*`` labels carry.

The bearer token is read from a file (the pod's ServiceAccount token by default) or an
environment variable; it is handed to the client and never logged or rendered. Every failure is
a :class:`RegistryError` that names the registry; none touches the model's files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from invmon.core.settings import Settings, setting

log = logging.getLogger(__name__)

MODEL_FORMAT = "pytorch"
# Lineage of a model a Kubeflow pipeline run produced, as the registry's documentation writes it.
SOURCE_KIND, SOURCE_CLASS = "pipelines", "pipelinerun"
MODEL_ID_LABEL = "modelregistry/registered-model-id"
VERSION_ID_LABEL = "modelregistry/model-version-id"
TOKEN_ENV = "INVMON_REGISTRY_TOKEN"
SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class RegistryError(RuntimeError):
    """The model registry refused or could not be reached; the message names the registry."""


@dataclass(frozen=True)
class RegistryOptions(Settings):
    """Where the Kubeflow Model Registry is and how to authenticate to it."""

    url: str = setting(
        "",
        help="Kubeflow Model Registry REST address, http(s)://HOST[:PORT] (empty: no registry)",
        flag="--registry-url",
        metavar="URL",
    )
    token_file: str = setting(
        "",
        help=f"file holding the registry's bearer token (default: ${TOKEN_ENV}, else the pod's "
        "ServiceAccount token when present)",
        flag="--registry-token-file",
        metavar="PATH",
    )
    author: str = setting(
        "invmon", help="author recorded on new versions", flag="--registry-author"
    )

    def __post_init__(self):
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(
                f"--registry-url {self.url!r} is not a registry address (allowed: "
                "http://HOST[:PORT] or https://HOST[:PORT])"
            )
        super().__post_init__()

    @property
    def enabled(self) -> bool:
        """True when a registry is configured."""
        return bool(self.url)


def read_token(options: RegistryOptions) -> str | None:
    """The bearer token: ``token_file``, else $INVMON_REGISTRY_TOKEN, else the ServiceAccount's."""
    if options.token_file:
        path = Path(options.token_file)
        if not path.is_file():
            raise ValueError(f"--registry-token-file {options.token_file!r} is not a file")
        return path.read_text().strip() or None
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    sa_token = Path(SA_TOKEN_PATH)
    return sa_token.read_text().strip() if sa_token.is_file() else None


def _run_coroutine(coroutine):
    # The client's default runner patches asyncio process-wide (nest_asyncio); each of its calls
    # opens and closes its own HTTP session, so a fresh event loop per call is enough.
    return asyncio.run(coroutine)


def connect(options: RegistryOptions):
    """A ``model_registry.ModelRegistry`` for ``options`` (it checks the address by listing)."""
    if not options.enabled:
        raise ValueError("no model registry configured (--registry-url is empty)")
    from model_registry import ModelRegistry

    token = read_token(options)
    with warnings.catch_warnings():
        # The client warns when no token is given: a plain-HTTP registry inside the cluster
        # may need none, and the error below says so when it does.
        warnings.filterwarnings("ignore", message="User access token is missing")
        with _errors(options.url, "connect to"):
            return ModelRegistry(
                options.url,
                author=options.author,
                user_token=token,
                async_runner=_run_coroutine,
            )


class _errors:
    """Turn the client's and HTTP errors into a RegistryError that names the registry."""

    def __init__(self, url: str, doing: str):
        self.url, self.doing = url, doing

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, (RegistryError, ValueError)):
            return False
        raise RegistryError(f"could not {self.doing} model registry {self.url}: {_why(error)}")


def _why(error: BaseException) -> str:
    from mr_openapi.exceptions import ApiException

    if isinstance(error, ApiException):
        text = f"HTTP {error.status} {error.reason or ''}".strip()
        if error.status in (401, 403):
            text += " (check the token: --registry-token-file or $" + TOKEN_ENV + ")"
        message = _server_message(error.body)
        return f"{text}: {message}" if message else text
    if isinstance(error, OSError):  # aiohttp's connection errors are OSErrors
        return f"unreachable ({error})"
    return f"{type(error).__name__}: {error}"


def _server_message(body) -> str:
    """The ``message`` of the registry's Error body, when it sent one."""
    try:
        return str(json.loads(body).get("message", ""))
    except (TypeError, ValueError, AttributeError):
        return ""


# -- registering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lineage:
    """The pipeline run that produced a model."""

    namespace: str
    run_id: str
    run_name: str


@dataclass(frozen=True)
class ModelRecord:
    """What is recorded for one model version."""

    name: str
    version: str
    uri: str
    lineage: Lineage
    metrics: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class RegisteredVersion:
    """A version in the registry: the ids the InferenceService's labels carry, and its URI."""

    registry: str
    name: str
    version: str
    model_id: str
    version_id: str
    uri: str

    def labels(self) -> dict[str, str]:
        """The labels that tie an InferenceService to this version."""
        return {MODEL_ID_LABEL: self.model_id, VERSION_ID_LABEL: self.version_id}

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        from dataclasses import asdict

        return asdict(self)


def properties(record: ModelRecord) -> dict[str, bool | int | float | str]:
    """The version's custom properties: ``metrics.*`` and ``hyperparameters.*``, flattened
    (the registry stores only scalars; a list is kept as its JSON text)."""
    flat: dict[str, bool | int | float | str] = {}

    def put(prefix: str, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                put(f"{prefix}.{key}", inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        elif value is not None:
            flat[prefix] = json.dumps(value)

    put("metrics", record.metrics)
    put("hyperparameters", record.hyperparameters)
    return flat


def register(options: RegistryOptions, record: ModelRecord) -> RegisteredVersion:
    """Record ``record`` in the registry; raise RegistryError if the version exists or it fails."""
    registry = connect(options)
    with _errors(options.url, f"register {record.name}:{record.version} in"):
        existing = registry.get_registered_model(record.name)
        if existing is not None and registry.get_model_version(record.name, record.version):
            raise RegistryError(
                f"model registry {options.url} already has {record.name} version "
                f"{record.version!r}: versions are never overwritten (give another --version)"
            )
        model = registry.register_model(
            record.name,
            record.uri,
            model_format_name=MODEL_FORMAT,
            model_format_version=_torch_version(),
            version=record.version,
            version_description=record.description or None,
            metadata=properties(record),
            model_source_kind=SOURCE_KIND,
            model_source_class=SOURCE_CLASS,
            model_source_group=record.lineage.namespace,
            model_source_id=record.lineage.run_id,
            model_source_name=record.lineage.run_name,
        )
        version = registry.get_model_version(record.name, record.version)
    log.info("registered %s version %s in %s", record.name, record.version, options.url)
    return RegisteredVersion(
        options.url, record.name, record.version, model.id, version.id, record.uri
    )


def _torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


# -- looking a version up ----------------------------------------------------------------------


def parse_reference(text: str) -> tuple[str, str | None]:
    """``NAME[:VERSION]`` as (name, version or None)."""
    name, _, version = text.partition(":")
    if not name or (":" in text and not version):
        raise ValueError(f"--from-registry {text!r} is not NAME or NAME:VERSION")
    return name, version or None


def resolve(options: RegistryOptions, reference: str) -> RegisteredVersion:
    """The version ``NAME[:VERSION]`` names (the newest when no version is given), with the URI
    of its model artifact."""
    name, wanted = parse_reference(reference)
    registry = connect(options)
    with _errors(options.url, f"look up {reference} in"):
        model = registry.get_registered_model(name)
        if model is None:
            raise RegistryError(f"model registry {options.url} has no registered model {name!r}")
        version = registry.get_model_version(name, wanted) if wanted else _latest(registry, name)
        if version is None:
            which = f"version {wanted!r}" if wanted else "version"
            raise RegistryError(f"model registry {options.url} has no {which} of {name!r}")
        artifact = registry.get_model_artifact(name, version.name)
    if artifact is None or not artifact.uri:
        raise RegistryError(
            f"model registry {options.url}: {name} version {version.name!r} has no model artifact "
            "with a URI"
        )
    return RegisteredVersion(options.url, name, version.name, model.id, version.id, artifact.uri)


def _latest(registry, name: str):
    """The most recently created version of ``name`` (None when it has none)."""
    versions = registry.get_model_versions(name).order_by_creation_time().descending()
    return next(iter(versions.page_size(1)), None)
