"""An iterator whose items are produced ahead, on a thread of their own, while they are used.

Ingest's workers took the next object of the S3 listing under one lock, so that each page's round
trip stopped them all; with the listing produced ahead, a page is fetched while the last is copied.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def produced_ahead(items: Iterable[T], ahead: int) -> Iterator[T]:
    """``items``, produced on a background thread up to ``ahead`` items before they are taken.

    The producer's error is raised where the item it failed on would have been taken; closing
    the generator (the copy stopped early) stops the producer too.
    """
    queued: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                queued.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as err:  # handed to the taker: raised in the caller's thread
            put(_Failed(err))
        put(_DONE)

    threading.Thread(target=produce, name="produced-ahead", daemon=True).start()
    try:
        while (item := queued.get()) is not _DONE:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_DONE = object()  # the end of the items
