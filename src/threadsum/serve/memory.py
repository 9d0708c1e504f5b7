"""Service memory: give freed heap back to the OS after batches, and say which malloc is running.

Why this exists: every generation batch allocates tensors whose sizes change with the batch
(threads x beams x padded source tokens, a key/value cache growing by one step per new token).
glibc's malloc serves such blocks from its arenas once its dynamic mmap threshold has risen past
them, and keeps what is freed there, split into pieces the next, differently shaped batch cannot
reuse; the process's resident memory creeps up with no Python object left alive (measured: the
packaged tiny recipe's model, 24 clients, varied mail, 517 -> 1,050 MiB over 3,600 requests; see
BENCHMARKS.md). Two things stop the creep without changing what the model computes:

- :class:`HeapTrimmer`: glibc's ``malloc_trim(0)`` after a batch, at most once every
  ``serve.malloc_trim_interval_s`` seconds and only once resident memory has grown by
  ``serve.malloc_trim_growth_mb`` since the last trim. It returns the free pages of every arena to the OS
  (``madvise(MADV_DONTNEED)`` on whole free pages), so fragmentation can no longer hold memory.
  It is a no-op off glibc (musl, macOS) and when another allocator was preloaded.
- jemalloc or tcmalloc preloaded (``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2``), which
  return freed memory by themselves; :func:`active_allocator` reports which one runs
  (``/v1/status``, the startup log, the ``threadsum_allocator_info`` metric).

The libc calls themselves live in :mod:`threadsum.heap` (shared with training).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional

from threadsum.heap import (  # noqa: F401 - re-exported: the service's view of the heap
    ALLOCATOR_LIBRARIES,
    active_allocator,
    glibc_version,
    malloc_trim,
    trim_supported,
)

log = logging.getLogger("threadsum.serve")


def resident_bytes() -> Optional[int]:
    """This process's resident set size in bytes (``/proc/self/statm``), or None where it cannot be read."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """``malloc_trim(0)`` after batches, when resident memory has grown since the last trim.

    A trim is due when at least ``interval_s`` seconds have passed since the last one (0: never trim)
    and the resident set has grown by more than ``growth_mib`` since just after it (0: every
    interval). Why the growth gate: a trim hands back pages the very next batch touches again, and
    the page faults that follow cost far more than the call (measured: the packaged tiny recipe's
    model on 2 CPUs, batches of 8 threads took 0.24 s with a trim every second against 0.18 s without,
    and up to 5x longer under load; BENCHMARKS.md). Fragmentation shows as growth; a heap whose
    freed blocks the next batches reuse does not grow, so it is left alone. The first trim sets the
    baseline. ``trims``, ``trim_seconds`` and ``checks`` count trims made, their wall-clock seconds
    and the due-time checks made.
    """

    def __init__(self, interval_s: float, growth_mib: float = 0.0):
        self.interval_s = interval_s
        self.growth_bytes = int(growth_mib * 2**20)
        self.enabled = interval_s > 0 and trim_supported()
        self.trims = 0
        self.trim_seconds = 0.0
        self.checks = 0
        self._last = float("-inf")  # the first check is due whatever the clock reads (monotonic: since boot)
        self._baseline: Optional[int] = None
        self._lock = threading.Lock()

    def maybe_trim(self) -> Optional[float]:
        """Trim if enabled and due (see the class docstring); the seconds the trim took, or None."""
        if not self.enabled:
            return None
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval_s:
                return None
            self._last = now
            self.checks += 1
            rss = resident_bytes() if self.growth_bytes else None
            if rss is not None and self._baseline is not None and rss - self._baseline <= self.growth_bytes:
                return None
        t0 = time.perf_counter()
        malloc_trim()
        spent = time.perf_counter() - t0
        self._baseline = resident_bytes()
        self.trims += 1
        self.trim_seconds += spent
        return spent

    def describe(self) -> dict:
        """allocator, whether trimming is on, its interval (s), trims made and seconds spent, for ``/v1/status``."""
        return {"allocator": active_allocator(), "malloc_trim": self.enabled, "malloc_trim_interval_s": self.interval_s,
                "malloc_trim_growth_mib": self.growth_bytes / 2**20, "trims": self.trims, "checks": self.checks,
                "trim_seconds": round(self.trim_seconds, 3)}
