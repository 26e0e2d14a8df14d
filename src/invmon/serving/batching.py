"""Group concurrent inference requests into model batches, without adding latency.

A CNN on a CPU or GPU runs a batch of eight images in far less than eight times the time of one,
so a predictor that answers concurrent clients one at a time wastes most of its hardware.
:class:`ContinuousBatcher` runs one batch at a time on a dedicated thread. Requests that arrive
while a batch is running wait for it and then run together as the next batch, so under load
batches grow by themselves to what the arrival rate and the model's speed call for, up to
``max_batch_images``.

When the model is idle, a request starts at once unless other requests are already on their way
(announced with :meth:`ContinuousBatcher.expect`, for example while their images are decoded):
then the batcher waits for them, at most ``max_wait`` seconds. Without that, clients that all got
their answers from one batch come back together, the first one to finish decoding runs alone, and
batches alternate between one image and all the others. A lone request never waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class BatchStats:
    """How many batches ran and how many requests and images they held."""

    batches: int = 0
    requests: int = 0
    images: int = 0
    largest: int = 0

    def record(self, requests: int, images: int) -> None:
        """Count one batch of ``requests`` requests holding ``images`` images."""
        self.batches += 1
        self.requests += requests
        self.images += images
        self.largest = max(self.largest, images)


class ContinuousBatcher(Generic[Item, Result]):
    """Run ``run_batch`` over the items of concurrent requests, one batch at a time.

    ``run_batch(items)`` gets the items of several requests and returns one result per item, in
    order; it runs on the batcher's own thread, so the event loop keeps answering health checks
    and reading new requests meanwhile. ``size(item)`` is how many images an item holds.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], Sequence[Result]],
        size: Callable[[Item], int],
        max_batch_images: int = 32,
        max_wait: float = 0.02,
    ):
        if max_batch_images < 1:
            raise ValueError(f"max_batch_images must be >= 1, got {max_batch_images}")
        self._run_batch, self._size = run_batch, size
        self.max_batch_images, self.max_wait = max_batch_images, max_wait
        self._pending: deque[tuple[Item, asyncio.Future]] = deque()
        self._expected = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.stats = BatchStats()

    def expect(self) -> None:
        """Announce a request that will be submitted (or :meth:`cancel_expected`) soon."""
        self._expected += 1

    def cancel_expected(self) -> None:
        """Withdraw an announcement: that request will not come (it was refused)."""
        self._expected = max(0, self._expected - 1)
        if self._arrived:
            self._arrived.set()

    async def submit(self, item: Item, expected: bool = False) -> Result:
        """Queue ``item`` and return its result once the batch holding it has run.

        ``expected`` says that :meth:`expect` announced this request.
        """
        if expected:
            self._expected = max(0, self._expected - 1)
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._arrived:
            self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    def _queued_images(self) -> int:
        return sum(self._size(item) for item, future in self._pending if not future.done())

    async def _gather_expected(self) -> None:
        """While requests are on their way and the batch is not full, wait a little for them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while self._expected and self._queued_images() < self.max_batch_images:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived = asyncio.Event()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return
            finally:
                self._arrived = None

    def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        batch, images = [], 0
        while self._pending:
            item, future = self._pending[0]
            if future.done():  # the client went away before its turn
                self._pending.popleft()
                continue
            if batch and images + self._size(item) > self.max_batch_images:
                break
            batch.append(self._pending.popleft())
            images += self._size(item)
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._gather_expected()
            batch = self._next_batch()
            if not batch:
                return
            items = [item for item, _ in batch]
            self.stats.record(len(items), sum(self._size(i) for i in items))
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, items)
            except Exception as err:  # every request of the batch gets the error, none hangs
                log.exception("inference batch of %d requests failed", len(items))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def close(self) -> None:
        """Stop the inference thread once the running batch is done."""
        self._executor.shutdown(wait=True, cancel_futures=True)
