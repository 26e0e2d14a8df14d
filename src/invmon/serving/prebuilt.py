"""The serving engine built ahead of time: an AOTInductor package stored with the model.

Compiling the float model with TorchInductor takes minutes of both cores at start-up; a replica
that starts under a traffic spike serves at eager speed meanwhile. :func:`build` runs once, when
the model is trained or deployed (``invmon serve --model DIR --prebuild``): it exports the float
model with ``torch.export`` (batch size dynamic, 1 to the largest batch), compiles it with
AOTInductor and writes ``engine/`` into the model folder:

- ``engine/model.pt2``: the package (generated C++ compiled to a shared object, weights inside);
- ``engine/manifest.json``: what it was built for: the SHA-256 of the model's ``weights.pt`` and
  ``config.json``, the torch version, the CPU capability PyTorch dispatches to, the precision,
  the largest batch, and the SHA-256 of the package itself.

:func:`load` uses the package only when every one of those fits the predictor now: the model
folder's own files, this torch, this CPU, the precision it would serve and every batch the
batcher can form; it says why not otherwise, and the predictor then builds its engine in the
background as without a package.

A package is code: loading it runs the shared object it holds. So it is only ever produced by
:func:`build` (our own export of weights loaded with ``weights_only=True``) and loaded only when
its manifest is signed: :func:`build` signs it with an HMAC-SHA256 keyed by the secret in
``INVMON_ENGINE_KEY`` (:data:`KEY_ENV`), and the predictor opens the package only if the signature
checks with its own copy of that key, the manifest names the weights the predictor loaded, and the
package's bytes hash to what the manifest says. Without the key, the predictor never opens a
package: write access to model storage alone does not become code execution in the predictor;
whoever holds the key can make it run code. ``--prebuilt off`` never opens a package either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from invmon.serving.options import ENGINE_KEY_ENV
from invmon.training.model import CONFIG_FILE, WEIGHTS_FILE, load_model

log = logging.getLogger(__name__)

ENGINE_DIR = "engine"
PACKAGE_FILE = "model.pt2"
MANIFEST_FILE = "manifest.json"
PRECISIONS = ("fp32", "bf16")  # what a package can be built in (bf16: autocast inside it)
KEY_ENV = ENGINE_KEY_ENV  # the secret that signs and verifies manifests (never logged)


@dataclass(frozen=True)
class Manifest:
    """What a prebuilt engine was built for (``engine/manifest.json``)."""

    model_sha256: str
    torch: str
    cpu: str
    machine: str
    precision: str
    image_size: int
    largest_batch: int
    package_sha256: str = ""
    signature: str = ""  # HMAC-SHA256 of the fields above, keyed by KEY_ENV

    def signed(self, key: bytes) -> Manifest:
        """This manifest with its signature under ``key``."""
        return Manifest(**{**asdict(self), "signature": self._mac(key)})

    def verifies(self, key: bytes) -> bool:
        """Whether the signature is this manifest's under ``key``."""
        return hmac.compare_digest(self.signature, self._mac(key))

    def _mac(self, key: bytes) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "signature"}
        text = json.dumps(fields, sort_keys=True).encode()
        return hmac.new(key, text, hashlib.sha256).hexdigest()


def signing_key() -> bytes | None:
    """The key in :data:`KEY_ENV`, or None when it is not set."""
    value = os.environ.get(KEY_ENV, "")
    return value.encode() if value else None


def required_key() -> bytes:
    """The key in :data:`KEY_ENV`; ValueError saying what to set when it is not set."""
    key = signing_key()
    if key is None:
        raise ValueError(f"set {KEY_ENV} to the secret predictors verify prebuilt engines with")
    return key


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _copy_hashed(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` and return the SHA-256 of what was written, in one pass:
    the bytes hashed are the bytes loaded afterwards, read once."""
    digest = hashlib.sha256()
    with open(source, "rb") as reading, open(target, "wb") as writing:
        for block in iter(lambda: reading.read(1 << 20), b""):
            digest.update(block)
            writing.write(block)
    return digest.hexdigest()


def model_sha256(model_dir: str | Path) -> str:
    """The SHA-256 of a model folder's weights and config, in that order."""
    return _sha256(Path(model_dir) / WEIGHTS_FILE, Path(model_dir) / CONFIG_FILE)


def here(model_dir, precision: str, image_size: int, largest_batch: int) -> Manifest:
    """The manifest an engine built now, on this machine, for ``model_dir`` would have."""
    return Manifest(
        model_sha256=model_sha256(model_dir),
        torch=torch.__version__,
        cpu=torch.backends.cpu.get_cpu_capability(),
        machine=platform.machine(),
        precision=precision,
        image_size=image_size,
        largest_batch=largest_batch,
    )


class _Autocast(torch.nn.Module):
    """``model`` run under CPU autocast to ``dtype``, logits returned in float32: the predictor's
    own bf16 path (:func:`invmon.training.device.autocast`), as one module that
    ``torch.export`` captures, autocast region included."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype):
            return self.model(inputs).float()


def in_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``model`` as a package of ``precision`` runs it: itself for fp32, under autocast for bf16."""
    return _Autocast(model, torch.bfloat16) if precision == "bf16" else model


def float_precision(precision: str) -> str:
    """The precision a package is built in for ``precision``: ``auto`` is what a predictor with
    ``--precision auto`` runs its float model in on this CPU (bf16 where it is native, else
    fp32); fp32 and bf16 are themselves; anything else is a ValueError naming what is allowed."""
    if precision == "auto":
        from invmon.training.device import resolve_precision

        return "bf16" if resolve_precision("auto", torch.device("cpu")) else "fp32"
    if precision not in PRECISIONS:
        allowed = ", ".join(("auto", *PRECISIONS))
        raise ValueError(f"a prebuilt engine is built in {allowed}, not {precision!r}")
    return precision


def build(model_dir: str | Path, largest_batch: int = 64, precision: str = "auto") -> Path:
    """Export, compile and write ``model_dir``/engine/ (see the module docstring); return it.

    ``precision`` is fp32, bf16 or auto (:func:`float_precision`). Written to a temporary folder
    beside it and renamed into place, so a reader never sees a half-written engine.
    """
    precision = float_precision(precision)
    if largest_batch < 1:
        raise ValueError(f"largest_batch must be >= 1, got {largest_batch}")
    key = required_key()
    model_dir = Path(model_dir)
    model, config = load_model(model_dir, "cpu")
    model.requires_grad_(False)
    size = config.preprocessing.image_size
    manifest = here(model_dir, precision, size, largest_batch)
    start = time.perf_counter()
    example = torch.zeros(min(2, largest_batch), 3, size, size)
    example = example.contiguous(memory_format=torch.channels_last)
    batch = torch.export.Dim("batch", min=1, max=largest_batch)
    with torch.no_grad():
        program = torch.export.export(
            in_precision(model, precision), (example,), dynamic_shapes=({0: batch},)
        )
    work = Path(tempfile.mkdtemp(prefix=".engine-", dir=model_dir))
    try:
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=str(work / PACKAGE_FILE), inductor_configs={"freezing": True}
        )
        manifest = Manifest(**{**asdict(manifest), "package_sha256": _sha256(Path(package))})
        manifest = manifest.signed(key)
        (work / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        target = model_dir / ENGINE_DIR
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("prebuilt engine written to %s in %.1fs", target, time.perf_counter() - start)
    return target


def _load_package(path: Path):
    """A callable running the AOTInductor package at ``path`` on one input tensor.

    PyTorch's C++ package loader, called directly: ``torch._inductor.aoti_load_package`` wraps the
    same loader in Python that unpacks the archive's index first (0.6 s against 0.2 s for the
    98 MB package of a 224 px model on 2 cores, each batch then as fast). Where this PyTorch has
    no such loader, its public function loads the package instead.
    """
    loader_class = _cpp_package_loader()
    if loader_class is None:
        return torch._inductor.aoti_load_package(str(path))
    # (path, model name, run single-threaded, runners, device index: -1 for the CPU)
    loader = loader_class(str(path), "model", False, 1, -1)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        # The package was exported with one tensor in and one out (see build).
        return loader.boxed_run([inputs])[0]

    return run


def _cpp_package_loader():
    """PyTorch's C++ AOTInductor package loader class, or None where this PyTorch has none."""
    return getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)


class PrebuiltGraph(torch.nn.Module):
    """A loaded package, with the eager model for a batch larger than it was built for.

    ``eager`` makes that model when first needed: a predictor whose batches all fit the package
    (:func:`load` checks that they do) never builds it, nor imports torchvision to.
    """

    def __init__(self, runner, eager: Callable[[], torch.nn.Module], largest_batch: int):
        super().__init__()
        self.runner, self.eager, self.largest_batch = runner, eager, largest_batch

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of ``inputs`` (float32, channels_last)."""
        if len(inputs) > self.largest_batch:
            return self.eager()(inputs)
        return self.runner(inputs)


def misfit(model_dir, wanted: Manifest) -> str | None:
    """Why the prebuilt engine in ``model_dir`` cannot serve as ``wanted``; None when it can."""
    checked = _checked(model_dir, wanted)
    return checked if isinstance(checked, str) else None


def unusable(model_dir) -> str | None:
    """Why no prebuilt engine of ``model_dir`` can be used before any file is read or hashed
    (none there, no key to verify it with); None when it is worth checking."""
    folder = Path(model_dir) / ENGINE_DIR
    if not (folder / MANIFEST_FILE).is_file() or not (folder / PACKAGE_FILE).is_file():
        return f"no prebuilt engine in {folder}"
    if signing_key() is None:
        return f"{KEY_ENV} is not set, so the package in {folder} cannot be verified"
    return None


def _checked(model_dir, wanted: Manifest) -> Manifest | str:
    """The manifest in ``model_dir``, signed and fitting ``wanted``; else why not."""
    folder = Path(model_dir) / ENGINE_DIR
    if why := unusable(model_dir):
        return why
    key = signing_key()
    try:
        built = Manifest(**json.loads((folder / MANIFEST_FILE).read_text()))
    except (ValueError, TypeError) as err:
        return f"unreadable {MANIFEST_FILE}: {err}"
    if not built.verifies(key):
        return f"{MANIFEST_FILE} is not signed with this predictor's {KEY_ENV}"
    checks = [
        ("model", built.model_sha256, wanted.model_sha256),
        ("torch version", built.torch, wanted.torch),
        ("CPU capability", built.cpu, wanted.cpu),
        ("machine", built.machine, wanted.machine),
        ("precision", built.precision, wanted.precision),
        ("image size", built.image_size, wanted.image_size),
    ]
    for what, was, now in checks:
        if was != now:
            return f"built for {what} {was}, serving {now}"
    if built.largest_batch < wanted.largest_batch:
        most, wanted_most = built.largest_batch, wanted.largest_batch
        return f"built for batches up to {most}, serving up to {wanted_most}"
    return built


def load(model_dir, eager: Callable[[], torch.nn.Module], wanted: Manifest) -> PrebuiltGraph | None:
    """The prebuilt engine of ``model_dir`` if it fits ``wanted`` (:func:`misfit`), else None
    with the reason logged. ``eager`` makes the eager model, for a batch larger than the package
    was built for (:class:`PrebuiltGraph`)."""
    built = _checked(model_dir, wanted)  # read once: what was verified is what is used
    if isinstance(built, str):
        level = logging.INFO if built.startswith("no prebuilt engine") else logging.WARNING
        log.log(level, "prebuilt engine not used: %s", built)
        return None
    start = time.perf_counter()
    folder = Path(model_dir) / ENGINE_DIR
    # Hash a private copy and load that very copy: the file in model storage could change
    # between a check of it and the load.
    private = Path(tempfile.mkdtemp(prefix="invmon-engine-")) / PACKAGE_FILE
    if not hmac.compare_digest(_copy_hashed(folder / PACKAGE_FILE, private), built.package_sha256):
        shutil.rmtree(private.parent, ignore_errors=True)
        log.warning(
            "prebuilt engine not used: %s does not hash to its manifest's package_sha256",
            folder / PACKAGE_FILE,
        )
        return None
    try:
        runner = _load_package(private)
    except Exception as err:  # a package this process cannot run: build as without one
        log.warning("prebuilt engine not used: loading %s failed: %s", folder, err)
        return None
    finally:  # the package is unpacked and its library loaded; the copy is not needed
        shutil.rmtree(private.parent, ignore_errors=True)
    log.info("prebuilt engine %s loaded in %.1fs", folder, time.perf_counter() - start)
    return PrebuiltGraph(runner, eager, built.largest_batch)
