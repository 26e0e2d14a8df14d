"""Large data between pipeline steps: pointers into a shared workspace instead of copies.

On a cluster, every KFP artifact is uploaded to object storage by the task that writes it and
downloaded again by each task that reads it. For ABID's million small files that is the slowest
part of a run. When the pipeline is compiled with a workspace (``dsl.WorkspaceConfig``: one
PersistentVolumeClaim per run, mounted at ``/kfp-workspace`` in the tasks that ask for it; locally
a folder), the data stages write their bulk data into the workspace and their output artifact only
holds a small pointer file (plus the stage's report). The stage that reads the artifact follows
the pointer. See ``docs/data.md`` for which data goes where and why.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

POINTER_FILE = "workspace-pointer.json"


def write_pointer(artifact: str | Path, target: str | Path) -> None:
    """Make the artifact folder ``artifact`` point at the data folder ``target``."""
    artifact = Path(artifact)
    artifact.mkdir(parents=True, exist_ok=True)
    (artifact / POINTER_FILE).write_text(json.dumps({"path": str(target)}, indent=2) + "\n")


def is_pointer(artifact: str | Path) -> bool:
    """True when the artifact folder holds a pointer rather than the data itself."""
    return (Path(artifact) / POINTER_FILE).is_file()


def resolve(artifact: str | Path) -> Path:
    """The folder holding an artifact's data: the pointer's target, or the artifact itself.

    Raises ValueError when a pointer names a folder that does not exist (for example a workspace
    that was not mounted in this task, or that was deleted after its run).
    """
    artifact = Path(artifact)
    if not is_pointer(artifact):
        return artifact
    target = Path(json.loads((artifact / POINTER_FILE).read_text())["path"])
    if not target.is_dir():
        raise ValueError(
            f"{str(artifact)!r} points at {str(target)!r}, which does not exist here: the "
            "pipeline workspace is not mounted in this task or is gone"
        )
    return target


def data_folder(workspace: str, name: str, artifact: str | Path) -> Path:
    """Where a stage writes its bulk data: ``<workspace>/<name>``, or the artifact without one."""
    return Path(workspace) / name if workspace else Path(artifact)


@contextlib.contextmanager
def output_folder(workspace: str, name: str, artifact: str | Path) -> Iterator[Path]:
    """Yield where a task writes its bulk data (:func:`data_folder`); once it is written, make
    the artifact point at it when it is in the workspace. No pointer is left after a failure, so
    a downstream task never follows one to a half-written folder."""
    folder = data_folder(workspace, name, artifact)
    yield folder
    if workspace:
        write_pointer(artifact, folder)
