"""MicroBatcher: concurrent submissions share generations, bounded wait, bounded queue, isolation.

The generate function here is a plain callable that records its calls; the batcher is the real one.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from threadsum.serve.batching import BatcherStoppedError, MicroBatcher, QueueFullError


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, texts):
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("bad input in batch")
        return [t.upper() for t in texts]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_batched_and_answered_in_order():
    gen = Recorder(delay_s=0.05)

    async def main():
        b = MicroBatcher(gen, max_batch_size=8, max_wait_ms=50, queue_size=100)
        await b.start()
        results = await asyncio.gather(*(b.submit([f"r{i}a", f"r{i}b"]) for i in range(10)))
        await b.stop()
        return b, results

    b, results = run(main())
    assert results == [[f"R{i}A", f"R{i}B"] for i in range(10)]
    assert all(len(c) <= 8 for c in gen.calls)
    assert len(gen.calls) <= 4  # 20 texts, batches of up to 8, not 10 or 20 calls
    assert b.stats.threads == 20 and b.stats.max_batch_seen == 8
    assert gen.threads == {"threadsum-generate_0"}  # never on the event loop thread


def test_a_lone_request_waits_at_most_max_wait():
    gen = Recorder()

    async def main():
        b = MicroBatcher(gen, max_batch_size=16, max_wait_ms=30, queue_size=10)
        await b.start()
        t0 = time.perf_counter()
        out = await b.submit(["only"])
        waited = time.perf_counter() - t0
        await b.stop()
        return out, waited

    out, waited = run(main())
    assert out == ["ONLY"]
    assert 0.025 <= waited < 1.0


def test_a_full_batch_does_not_wait():
    gen = Recorder()

    async def main():
        b = MicroBatcher(gen, max_batch_size=4, max_wait_ms=5000, queue_size=10)
        await b.start()
        t0 = time.perf_counter()
        out = await b.submit(["a", "b", "c", "d"])
        waited = time.perf_counter() - t0
        await b.stop()
        return out, waited

    out, waited = run(main())
    assert out == ["A", "B", "C", "D"] and waited < 2.0


def test_queue_bound_rejects_with_retry_after():
    gen = Recorder(delay_s=0.3)

    async def main():
        b = MicroBatcher(gen, max_batch_size=2, max_wait_ms=0, queue_size=3)
        await b.start()
        first = asyncio.create_task(b.submit(["a", "b", "c"]))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError) as exc:
            await b.submit(["d"])
        assert exc.value.retry_after >= 1 and "serve.queue_size=3" in str(exc.value)
        assert await first == ["A", "B", "C"]
        assert b.pending == 0
        assert await b.submit(["d"]) == ["D"]  # capacity is back once answered
        await b.stop()

    run(main())


def test_a_failing_input_does_not_fail_its_batch_neighbours():
    gen = Recorder(fail_on="boom")

    async def main():
        b = MicroBatcher(gen, max_batch_size=8, max_wait_ms=50, queue_size=100)
        await b.start()
        results = await asyncio.gather(b.submit(["ok1"]), b.submit(["boom"]), b.submit(["ok2"]), return_exceptions=True)
        await b.stop()
        return b, results

    b, results = run(main())
    assert results[0] == ["OK1"] and results[2] == ["OK2"]
    assert isinstance(results[1], RuntimeError)
    assert b.stats.failed_batches >= 1 and b.pending == 0


def test_cancelled_requests_are_skipped_and_release_capacity():
    gen = Recorder(delay_s=0.2)

    async def main():
        b = MicroBatcher(gen, max_batch_size=1, max_wait_ms=0, queue_size=2)
        await b.start()
        running = asyncio.create_task(b.submit(["first"]))
        await asyncio.sleep(0.05)
        doomed = asyncio.create_task(b.submit(["second"]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        assert await running == ["FIRST"]
        await asyncio.sleep(0.05)
        assert b.pending == 0
        await b.stop()

    run(main())
    assert ["second"] not in gen.calls


def test_submit_before_start_is_refused():
    async def main():
        b = MicroBatcher(Recorder(), max_batch_size=2, max_wait_ms=0, queue_size=2)
        with pytest.raises(BatcherStoppedError):
            await b.submit(["x"])

    run(main())


def test_groups_of_closed_loop_clients_merge_into_full_batches():
    """16 clients in two groups of 8, each client back 40 ms after its answer (longer than max_wait):
    the worker waits for the clients it just answered, so the groups merge into batches of 16."""
    gen = Recorder(delay_s=0.2)

    async def client(b, name: str, start_delay: float, rounds: int):
        await asyncio.sleep(start_delay)
        for r in range(rounds):
            await b.submit([f"{name}-{r}"])
            await asyncio.sleep(0.04)  # round trip + cleaning before the next request

    async def main():
        b = MicroBatcher(gen, max_batch_size=16, max_wait_ms=20, queue_size=100)
        await b.start()
        await asyncio.gather(*(client(b, f"a{i}", 0.0, 6) for i in range(8)),
                             *(client(b, f"b{i}", 0.1, 6) for i in range(8)))
        await b.stop()

    run(main())
    sizes = [len(c) for c in gen.calls]
    assert sum(sizes) == 96
    assert max(sizes[2:]) == 16 and len(sizes) <= 9, sizes  # two groups of 8 alone would take 12 batches


def test_cancelled_submissions_leave_the_queue_and_are_never_generated():
    gen = Recorder(delay_s=0.3)

    async def main():
        b = MicroBatcher(gen, max_batch_size=1, max_wait_ms=0, queue_size=100)
        await b.start()
        first = asyncio.create_task(b.submit(["first"]))
        await asyncio.sleep(0.05)  # "first" is generating
        left = asyncio.create_task(b.submit(["gone-1", "gone-2"]))
        await asyncio.sleep(0.02)
        assert b.pending == 3
        left.cancel()
        await asyncio.sleep(0.01)  # "first" is still generating (0.3 s)
        pending_after_cancel = b.pending
        assert await first == ["FIRST"]
        await asyncio.sleep(0.1)
        await b.stop()
        return pending_after_cancel, b.pending

    after_cancel, at_end = run(main())
    assert after_cancel == 1 and at_end == 0
    assert gen.calls == [["first"]]
