"""Run model loading in a thread that exits when done, so only the batcher's thread keeps an OpenMP pool.

Why not `asyncio.to_thread`: torch's CPU kernels run on libgomp, which gives every thread that starts a parallel
region its own pool of worker threads, and that pool lives as long as the thread. The executor behind
`asyncio.to_thread` keeps its threads, so loading and warming the model there leaves a second pool behind. Once
libgomp manages more threads than there are cores it stops spinning between parallel regions and parks its
workers on a futex instead, and every region then pays a wake-up: measured here (2 cores), an elementwise op
went from 16 to 92 us and one Whisper-tiny forward in the batcher thread from 23 to 40 ms. A thread that exits
takes its pool with it, so the batcher's forwards run at full speed again as soon as the load is done.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

JOIN_TIMEOUT_S = 1.0


async def run_in_new_thread(fn: Callable[[], T], name: str) -> T:
    """Await `fn()` run in a fresh thread that ends with it; its exception is raised here."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle_result(value: T) -> None:
        if not future.done():  # the awaiting task may have been cancelled meanwhile
            future.set_result(value)

    def settle_error(err: BaseException) -> None:
        if not future.done():
            future.set_exception(err)

    def target() -> None:
        try:
            value = fn()
        except BaseException as err:  # noqa: BLE001 -- handed to the awaiting task, which decides
            settle, outcome = settle_error, err
        else:
            settle, outcome = settle_result, value
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop closed while we worked (shutdown): nobody is waiting any more
            pass

    # Not a daemon thread: when the awaiting task is cancelled (SIGTERM while a reload loads its model), the
    # interpreter waits for the load at exit instead of killing the thread inside torch, which aborts the
    # process ("terminate called without an active exception").
    thread = threading.Thread(target=target, name=name, daemon=False)
    thread.start()
    try:
        return await future
    finally:
        if future.done() and not future.cancelled():
            # The thread has only its return left to do; joining makes "its pool is gone" true on return.
            thread.join(JOIN_TIMEOUT_S)
