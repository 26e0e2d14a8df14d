"""Thin KFP components, one folder per pipeline stage.

Each ``<stage>/component.py`` holds a lightweight ``@dsl.component`` whose base image is that
stage's image (see :mod:`invmon.cluster.container_images`) and whose body only adapts KFP artifacts
to the stage's
plain function in :mod:`invmon`. KFP ships just the function body, so every import is inside it.
"""

from invmon.components.arrange.component import arrange
from invmon.components.audit.component import audit, merge_audit, plan_audit
from invmon.components.deploy.component import deploy
from invmon.components.evaluate.component import evaluate
from invmon.components.ingest.component import ingest, merge_ingest, plan_ingest
from invmon.components.prebuild.component import prebuild
from invmon.components.preprocess.component import preprocess
from invmon.components.register.component import register
from invmon.components.train.component import train
from invmon.components.tune.component import tune

__all__ = [
    "arrange",
    "audit",
    "deploy",
    "evaluate",
    "ingest",
    "merge_audit",
    "merge_ingest",
    "plan_audit",
    "plan_ingest",
    "prebuild",
    "preprocess",
    "register",
    "train",
    "tune",
]
