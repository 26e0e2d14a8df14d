"""Serve: a model folder behind KServe's ModelServer, answering V1 and V2 REST until stopped.

The options are :class:`invmon.serving.options.ServeSettings`, which the serving image's entry
point (``python -m invmon.serving``) derives its own from too, on top of KServe's flags.
"""

from __future__ import annotations

from invmon.core.command import Command
from invmon.serving.options import ServeSettings


def run(settings: ServeSettings) -> None:
    """Serve ``settings.model`` on ``settings.port`` until interrupted (gRPC off, one worker)."""
    from invmon.serving.server import serve

    serve(settings)


SERVE = Command(
    ServeSettings,
    run,
    description="Serve a model folder with KServe's ModelServer (V1 and V2 REST) until "
    "interrupted.",
)
