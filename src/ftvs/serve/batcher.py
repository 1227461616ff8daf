"""Micro-batching: the texts of concurrent requests to one model are predicted together.

A model's batcher takes the first waiting request, then gathers more for at most `max_wait_ms` until
`max_batch` texts are collected (a request is never split, so a request larger than `max_batch` runs
alone, cut by the predictor into length-sorted batches of at most `max_batch`), and runs them as one call
in the model's own worker thread, so the event loop keeps accepting requests meanwhile. Requests that
arrive while a batch is running are batched as soon as it ends.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MicroBatcher:
    def __init__(self, predict, max_batch: int, max_wait_ms: float):
        self.predict = predict  # texts -> [n, classes] probabilities
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.held: collections.deque = collections.deque()  # a request that did not fit the last batch
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftvs-model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.worker.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> tuple[np.ndarray, dict]:
        """Probabilities of `texts`, and {latency_ms (queueing + batch), batch_size (texts run together)}."""
        future = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        await self.queue.put((texts, future))
        probs, batch_size = await future
        return probs, {"latency_ms": 1000 * (time.perf_counter() - start), "batch_size": batch_size}

    async def _next(self, timeout: float | None):
        if self.held:
            return self.held.popleft()
        if timeout is None:
            return await self.queue.get()
        if timeout <= 0:
            return self.queue.get_nowait()  # QueueEmpty when nothing waits
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        items = [await self._next(None)]
        size = len(items[0][0])
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            try:
                item = await self._next(deadline - loop.time())
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if size + len(item[0]) > self.max_batch:
                self.held.append(item)
                break
            items.append(item)
            size += len(item[0])
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [(texts, f) for texts, f in await self._collect() if not f.done()]  # skip cancelled
            if not items:
                continue
            texts = [t for batch, _ in items for t in batch]
            try:
                probs = await loop.run_in_executor(self.worker, self.predict, texts)
            except Exception as e:  # a bug, not the user's input (that is checked before): fail this batch
                for _, f in items:
                    if not f.done():
                        f.set_exception(e)
                continue
            start = 0
            for batch, f in items:
                if not f.done():
                    f.set_result((probs[start : start + len(batch)], len(texts)))
                start += len(batch)
