"""Model runs and torch.fx tracing kept apart within one process.

While ``torch.fx.Tracer.trace`` runs, it replaces ``torch.nn.Module.__call__`` and
``__getattr__`` on the class itself, for every thread. A forward pass on another thread meanwhile
goes through the tracer: it fails ("NameError: module is not installed as a submodule") or
interleaves its modules with the trace's own module stack. Staged loading builds engines on a
background thread while requests run, and both kinds of build trace: int8's ``prepare_fx``, and
TorchInductor compiling the float graph (AOTAutograd's ``make_fx`` traces the model; the lowering
traces small helpers of its own).

So a process that serves while it builds makes every trace and every batch hold one lock,
:data:`MODEL_RUNS`: see :func:`exclude_model_runs_while_tracing`.
"""

from __future__ import annotations

import functools
import threading

import torch.fx

# Held by every batch a Counter runs, and, once exclude_model_runs_while_tracing() has run, by
# every torch.fx trace. Re-entrant: a trace may run a model (int8's calibration observers) or
# start another trace on the same thread.
MODEL_RUNS = threading.RLock()

_MARK = "_invmon_holds_model_runs"


def exclude_model_runs_while_tracing() -> None:
    """From now on, every ``torch.fx`` trace in this process holds :data:`MODEL_RUNS`.

    Wraps ``torch.fx.Tracer.trace``, which every tracer goes through (``symbolic_trace``,
    ``make_fx``'s tracers call it via ``super()``). Calling it again changes nothing. A batch
    waits while a trace runs (a few seconds at most for a ResNet50) rather than fail.
    """
    original = torch.fx.Tracer.trace
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def trace(self, *args, **kwargs):
        with MODEL_RUNS:
            return original(self, *args, **kwargs)

    setattr(trace, _MARK, True)
    torch.fx.Tracer.trace = trace
