"""Micro-batching of concurrent requests into one generation call.

Beam search on a GPU (and even on a CPU for small models) costs almost the same for 16 threads as
for one, so requests that arrive within ``max_wait_ms`` of each other are generated together, up
to ``max_batch_size`` threads. Generation runs in one dedicated worker thread: the event loop keeps
accepting, validating and answering requests (health checks included) while the model works, and
only one generation uses the device at a time. Admission is bounded: when more than
``queue_size`` threads are accepted but not yet answered, new work is refused with ``QueueFullError``
(the service answers 503 with Retry-After) instead of growing latency without limit. A ``submit``
that is cancelled (its client disconnected) withdraws its threads from the queue at once: they
are never started and no longer count as pending; threads already in a running batch finish with
it and their results are dropped.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

log = logging.getLogger("threadsum.serve")

GenerateFn = Callable[[Sequence[str]], list[str]]
BatchObserver = Callable[[int, float, bool, Sequence[float]], None]
"""``(threads, seconds, failed, queue waits in seconds per thread)`` of one generate call."""

MERGE_WAIT_FRACTION = 0.25
"""After a batch, how long the worker may wait for the clients it just answered, as a share of the
recent batch time (when longer than max_wait_ms). Their next requests need a round trip plus
cleaning and rendering (tens of ms on a loaded CPU), longer than max_wait_ms: without this wait,
closed-loop clients split into groups that alternate forever (measured: 16 clients as two groups
of 8, 1.8x instead of >= 3x). A full batch costs little more than a half one, so waiting up to a
quarter of a batch's time to fill it pays for itself."""


class QueueFullError(RuntimeError):
    """Too many threads are waiting; retry after ``retry_after`` seconds."""

    def __init__(self, pending: int, limit: int, retry_after: int):
        super().__init__(
            f"the service is at capacity ({pending} threads pending, serve.queue_size={limit}); "
            f"retry after {retry_after} s"
        )
        self.retry_after = retry_after


class BatcherStoppedError(RuntimeError):
    """The batcher is not running (starting up or shutting down)."""


@dataclass
class _Item:
    text: str
    future: asyncio.Future
    arrived: float


@dataclass
class BatcherStats:
    """Running counts of the batch worker: batches and threads generated, failed batches, the largest
    batch, busy time in seconds and a moving average of the seconds per batch (for Retry-After).
    """
    batches: int = 0
    threads: int = 0
    failed_batches: int = 0
    max_batch_seen: int = 0
    ewma_batch_s: float = 0.0
    busy_s: float = 0.0

    def record(self, size: int, seconds: float) -> None:
        """Count one generated batch of ``size`` threads that took ``seconds`` (wall-clock) and update the
        exponential moving average of batch time (weight 0.3 on the newest batch).
        """
        self.batches += 1
        self.threads += size
        self.busy_s += seconds
        self.max_batch_seen = max(self.max_batch_seen, size)
        # a short memory (alpha 0.3) so Retry-After follows load changes within a few batches
        self.ewma_batch_s = seconds if self.batches == 1 else 0.7 * self.ewma_batch_s + 0.3 * seconds

    def to_dict(self) -> dict[str, Any]:
        """The counts ``/v1/status`` reports: batches, threads, failed batches, mean and largest
        batch size, mean seconds per batch (means are 0.0 before the first batch).
        """
        return {
            "batches": self.batches,
            "threads": self.threads,
            "failed_batches": self.failed_batches,
            "mean_batch_size": round(self.threads / self.batches, 2) if self.batches else 0.0,
            "max_batch_size_seen": self.max_batch_seen,
            "mean_batch_seconds": round(self.busy_s / self.batches, 4) if self.batches else 0.0,
        }


class MicroBatcher:
    """Collects texts from concurrent ``submit`` calls into batches for ``generate``."""

    def __init__(self, generate: GenerateFn, max_batch_size: int, max_wait_ms: float, queue_size: int,
                 after_batch: Optional[Callable[[], Any]] = None, on_batch: Optional[BatchObserver] = None):
        """``after_batch`` runs on the generation thread after every batch (e.g. returning freed
        memory, :class:`threadsum.serve.memory.HeapTrimmer`), outside the batch's measured time; its
        result goes to ``on_after_batch`` when set. ``on_batch(size, seconds, failed, waits_s)`` is
        called on the event loop after every generate call (metrics)."""
        self.generate = generate
        self.after_batch = after_batch
        self.on_after_batch: Optional[Callable[[Any], None]] = None
        self.on_batch = on_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.stats = BatcherStats()
        self._items: deque[_Item] = deque()
        self._pending = 0  # accepted and not yet answered (queued + generating)
        self._last_done = 0.0  # loop time at which the previous batch was answered
        self._answered = 0  # threads answered by the previous batch: the clients expected back
        self._arrived_since_done = 0
        self._arrival: Optional[asyncio.Event] = None
        self._has_items: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        # one thread: generations never overlap, so device memory holds one batch at a time
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="threadsum-generate")

    # ---- lifecycle
    @property
    def running(self) -> bool:
        """True while the worker task has been started and has not finished."""
        return self._task is not None and not self._task.done()

    @property
    def pending(self) -> int:
        """Texts accepted and not yet answered (queued plus being generated)."""
        return self._pending

    @property
    def queued(self) -> int:
        """Texts waiting for a batch (accepted, not yet being generated)."""
        return len(self._items)

    async def start(self) -> None:
        """Start the worker task on the running event loop; ``submit`` refuses texts until then."""
        self._has_items = asyncio.Event()
        self._arrival = asyncio.Event()
        self._task = asyncio.create_task(self._worker(), name="threadsum-batcher")

    async def stop(self) -> None:
        """Cancel the worker, fail every queued text with BatcherStoppedError and shut down the
        generation thread without waiting for a batch in progress.
        """
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherStoppedError("the service is shutting down; retry shortly"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run_in_worker(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the generation thread (e.g. a warm-up), serialized with batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # ---- admission
    def retry_after(self) -> int:
        """Seconds a refused client should wait (the Retry-After header), in [1, 60].

        Estimated as the moving-average batch time (1 s before the first batch) times the number of
        batches needed to clear the pending texts plus one.
        """
        batches_ahead = math.ceil((self._pending + 1) / self.max_batch_size)
        estimate = (self.stats.ewma_batch_s or 1.0) * batches_ahead
        return int(min(60, max(1, math.ceil(estimate))))

    async def submit(self, texts: Sequence[str], return_exceptions: bool = False) -> list[Any]:
        """Summaries of ``texts`` in order; raises QueueFullError when over capacity.

        With ``return_exceptions`` a text whose generation failed gets its exception in its place
        (the others keep their summaries); otherwise the first failure is raised. Cancelling the
        call withdraws its queued texts (see the module docstring).
        """
        if not self.running:
            raise BatcherStoppedError("the model worker is not running yet; retry shortly")
        n = len(texts)
        if n == 0:
            return []
        if self._pending + n > self.queue_size:
            raise QueueFullError(self._pending, self.queue_size, self.retry_after())
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(t, loop.create_future(), now) for t in texts]
        self._pending += n
        self._items.extend(items)
        self._arrived_since_done += n
        self._arrival.set()
        self._has_items.set()
        try:
            return list(await asyncio.gather(*(i.future for i in items), return_exceptions=return_exceptions))
        except asyncio.CancelledError:
            self._withdraw(items)
            raise

    def _withdraw(self, items: list[_Item]) -> None:
        """Take ``items`` out of the queue (not the running batch) and cancel their futures."""
        for item in items:
            if not item.future.done():
                item.future.cancel()
        gone = {id(i) for i in items}
        kept = deque(i for i in self._items if id(i) not in gone)
        self._pending -= len(self._items) - len(kept)
        self._items = kept
        if not self._items:
            self._has_items.clear()

    # ---- the worker
    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_items.wait()
            if not self._items:
                self._has_items.clear()
                continue
            await self._wait_for_company(loop)
            batch = [self._items.popleft() for _ in range(min(self.max_batch_size, len(self._items)))]
            if not self._items:
                self._has_items.clear()
            live = [i for i in batch if not i.future.done()]
            try:
                if live:
                    now = loop.time()
                    await self._run_batch(live, [now - i.arrived for i in live])
                    await self._after_batch(loop)
            finally:
                self._pending -= len(batch)
                self._last_done = loop.time()
                self._answered = len(live)
                self._arrived_since_done = 0

    async def _wait_for_company(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the batch is full or, when the queue head arrived while a batch was running,
        until the clients that batch answered are back (``MERGE_WAIT_FRACTION``); else at most
        max_wait_ms from the head's arrival."""
        after_batch = self._items[0].arrived <= self._last_done
        if after_batch:
            wait = max(self.max_wait_s, MERGE_WAIT_FRACTION * self.stats.ewma_batch_s)
            deadline = self._last_done + wait
        else:
            deadline = self._items[0].arrived + self.max_wait_s
        while len(self._items) < self.max_batch_size:
            if after_batch and self._arrived_since_done >= self._answered:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _after_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.after_batch is None:
            return
        try:
            result = await loop.run_in_executor(self._executor, self.after_batch)
        except Exception as exc:  # noqa: BLE001 - housekeeping must never stop the worker
            log.warning("after-batch step failed: %s: %s", type(exc).__name__, exc)
            return
        if self.on_after_batch is not None:
            self.on_after_batch(result)

    def _observe(self, size: int, seconds: float, failed: bool, waits: Sequence[float]) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(size, seconds, failed, waits)
            except Exception as exc:  # noqa: BLE001 - metrics must never fail a batch
                log.warning("batch observer failed: %s: %s", type(exc).__name__, exc)

    async def _run_batch(self, batch: list[_Item], waits: Sequence[float] = ()) -> None:
        loop = asyncio.get_running_loop()
        texts = [i.text for i in batch]
        t0 = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self.generate, texts)
            if len(outputs) != len(batch):
                raise RuntimeError(f"generate returned {len(outputs)} summaries for {len(batch)} texts")
        except Exception as exc:  # noqa: BLE001 - isolate the failing input below
            self.stats.failed_batches += 1
            self._observe(len(batch), time.perf_counter() - t0, True, waits)
            log.error("generation of a batch of %d failed: %s: %s", len(batch), type(exc).__name__, exc)
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # one bad input must not fail its neighbours: retry one at a time
            for item in batch:
                await self._run_batch([item])
            return
        seconds = time.perf_counter() - t0
        self.stats.record(len(batch), seconds)
        self._observe(len(batch), seconds, False, waits)
        for item, out in zip(batch, outputs):
            if not item.future.done():
                item.future.set_result(out)
