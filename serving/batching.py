"""Adaptive batching inside a service process: concurrent requests' inputs are merged into one model call.

BentoML batches an API only when it takes a single batchable argument; an API that first decodes uploads (images of
any size, files and base64 in one request) cannot be one. Requests submit their decoded rows here instead: the
batch takes every request that queued while the previous batch ran, and, when the previous batch merged several
(requests are arriving together), waits up to `max_wait_ms` for more: a lone client pays no delay. A batch holds
at most `max_batch` rows (a larger request runs on its own), and each request gets its own rows back. The model
runs in a worker thread, so the event loop keeps accepting requests meanwhile: under load the batches grow by
themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BatchStats:
    calls: int = 0
    rows: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)  # the most recent batch sizes (for tests and metrics)

    def record(self, size: int) -> None:
        self.calls, self.rows, self.largest = self.calls + 1, self.rows + size, max(self.largest, size)
        self.sizes = [*self.sizes[-999:], size]


class MicroBatcher:
    def __init__(self, model: Callable[[np.ndarray], np.ndarray], max_batch: int = 64,
                 max_wait_ms: float = 5.0) -> None:
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._together = False  # the last batch merged several requests
        self._worker: asyncio.Task | None = None

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The model's output for `rows` (a request's inputs stacked on axis 0), computed with other requests'."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((rows, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carried = None  # a request that did not fit the previous batch opens the next one
        while True:
            pending = [carried or await self._queue.get()]
            carried, size = None, len(pending[0][0])
            # Wait for company only when requests have been arriving together: a lone client pays no delay.
            deadline = loop.time() + (self.max_wait if self._together else 0.0)
            while size < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    # max_wait 0: take what queued while the model ran, without waiting for more
                    item = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(),
                                                                                                timeout)
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if size + len(item[0]) > self.max_batch:
                    carried = item
                    break
                pending.append(item)
                size += len(item[0])
            self._together = len(pending) > 1
            batch = np.concatenate([rows for rows, _ in pending])
            try:
                output = await loop.run_in_executor(None, self.model, batch)
            except Exception as exc:  # noqa: BLE001 - handed to every request of the batch
                for _, future in pending:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.record(len(batch))
            start = 0
            for rows, future in pending:
                if not future.done():  # a request that went away no longer waits
                    future.set_result(output[start:start + len(rows)])
                start += len(rows)
