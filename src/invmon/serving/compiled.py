"""TorchInductor graphs that compile while they are warmed up, and never while they serve.

A graph compiled with a dynamic batch dimension is not one graph for every batch size: Dynamo
guards it on the sizes it was traced for. With torch 2.14 on a CPU, a ResNet50 gets one graph for
a batch of one image (sizes 0 and 1 are always specialised), one for 2 to 15 images and one for 16
or more: oneDNN picks a convolution's memory format by batch size, and Dynamo's fake tensors ask
it while tracing. A predictor warmed up on batches of 1, 2 and 8 therefore compiled again at the
first batch of 16 or more, in the request path: a burst of 64 clients waited 7.5-35.8 s each.

:class:`CompiledGraph` makes every batch size the predictor can form ready before it serves,
and then stops compiling: see its docstring.
"""

from __future__ import annotations

import logging

import torch
from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

log = logging.getLogger(__name__)


class CompiledGraph(torch.nn.Module):
    """``model`` compiled by TorchInductor (weights frozen and prepacked), ready for every batch
    size from 1 to ``largest`` once warmed up, and never compiling after :meth:`seal`.

    Warming up: the first batch (any size) also makes every size from 1 to ``largest`` ready. For
    each size it asks Dynamo whether a compiled graph's guards accept a batch of that size made
    like the caller's (same dtype, layout, device, grad and autocast state: the check runs in the
    caller's context), and compiles one for the first size none accepts, until every size is
    accepted: three compiles for a ResNet50 (1, 2-15, 16 and more), and a zero batch per size
    checked, not a forward pass. ``largest=None`` makes only the sizes it is called with ready.

    Serving (after :meth:`seal`): Dynamo's run-only mode, which runs a batch on the compiled graph
    whose guards accept it and runs the eager model where none does. Such a batch (one larger than
    ``largest``, say) is counted in :attr:`eager_batches` and logged: slower, never a compile.
    """

    def __init__(self, model: torch.nn.Module, largest: int | None = None):
        super().__init__()
        import torch._inductor.config as inductor

        inductor.freezing = True
        self.eager = model
        self.compiling = torch.compile(model, dynamic=True)
        self.running = torch._dynamo.run(model)
        self.largest = largest
        self.sealed = False
        self.covered = largest is None
        self.ready_upto = 0  # every batch size up to this has a compiled graph (_make_ready)
        self.eager_batches = 0  # batches run eagerly after seal(): no compiled graph fitted them
        self.graphs = 0  # graphs compiled while making every batch size ready

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of ``inputs``: compiled while warming up; after :meth:`seal`, never compiled."""
        if self.sealed:
            # Sizes were checked against the guards once, in _make_ready; checking them again
            # here would evaluate every guard twice per batch (running checks them too).
            if len(inputs) > self.ready_upto:
                self.eager_batches += 1
                log.warning(
                    "a batch of %d images fits no compiled graph (ready for 1 to %s): ran eagerly",
                    len(inputs),
                    self.ready_upto,
                )
            return self.running(inputs)
        outputs = self.compiling(inputs)
        if not self.covered:
            self.covered = True
            self._make_ready(inputs)
        return outputs

    def seal(self) -> None:
        """Stop compiling: from now on a batch no compiled graph fits runs eagerly."""
        self.sealed = True

    def fits(self, inputs: torch.Tensor) -> bool:
        """Whether a compiled graph's guards accept ``inputs`` in the current context."""
        code = type(self.eager).forward.__code__
        model_name, input_name = code.co_varnames[:2]
        frame = {model_name: self.eager, input_name: inputs}
        return any(entry.guard_manager.check(frame) for entry in _debug_get_cache_entry_list(code))

    def _make_ready(self, like: torch.Tensor) -> None:
        """Compile a graph for each batch size up to ``largest`` that no graph fits yet."""
        layout = (
            torch.channels_last
            if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        for size in range(1, self.largest + 1):
            batch = like.new_zeros((size, *like.shape[1:])).contiguous(memory_format=layout)
            if self.fits(batch):
                continue
            self.compiling(batch)
            self.graphs += 1
            if not self.fits(batch):  # the guards check something this batch cannot copy
                log.warning(
                    "cannot check which compiled graph fits a batch of %d images: batch sizes "
                    "not seen in warm-up will run eagerly",
                    size,
                )
                self.ready_upto = size - 1
                return
        self.ready_upto = self.largest
        log.info(
            "compiled graphs ready for every batch of 1 to %d images (%d compiled for it)",
            self.largest,
            self.graphs,
        )


def seal_compiled_graphs(model: torch.nn.Module) -> None:
    """Seal every :class:`CompiledGraph` in ``model`` that was made ready for a largest batch."""
    for module in model.modules():
        if isinstance(module, CompiledGraph) and module.largest is not None:
            module.seal()


def eager_batches(model: torch.nn.Module) -> int:
    """Batches that ran eagerly after sealing, over every :class:`CompiledGraph` in ``model``."""
    return sum(m.eager_batches for m in model.modules() if isinstance(m, CompiledGraph))
