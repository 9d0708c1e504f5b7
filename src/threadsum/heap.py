"""glibc's heap, controlled from Python: the one owner of the libc malloc calls threadsum makes.

Two users, two opposite needs:

- the service (:mod:`threadsum.serve.memory`) hands freed memory back after batches
  (:func:`malloc_trim`), because its tensors change shape with every batch and fragment the heap;
- CPU training keeps freed memory for the next micro-batch (:func:`reuse_freed_memory`), because
  its largest blocks have the same size every time (a ``[vocab, d_model]`` gradient per embedding
  backward and per LM-head pass: 154 MB each at BART's 50,265 x 768) and glibc would otherwise
  ``mmap`` each one fresh and unmap it on free, so every micro-batch page-faults those megabytes
  in again. Measured at the BART-base shape in bf16 on a 2-vCPU CPU with avx512_bf16: a zero-fill
  of such a buffer took 70-110 ms (1.4-2.2 GB/s, page faults) and 20% of the step went to it and
  its copies; with the blocks kept, 15-20% more tokens/s for the same steps, peak RSS +5%
  (BENCHMARKS.md, "CPU training").

No library exposes ``mallopt`` or ``malloc_trim``; each is a single libc call, made through ctypes,
and each is a no-op off glibc (musl, macOS, Windows) or when jemalloc/tcmalloc was preloaded.
"""
from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

ALLOCATOR_LIBRARIES = {"jemalloc": "libjemalloc", "tcmalloc": "libtcmalloc"}
"""Allocators that replace glibc's malloc when preloaded, by the file name their library starts with."""

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
"""``mallopt`` parameter numbers, from glibc's ``malloc.h``."""

DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024
"""glibc's defaults of the two (``mallopt(3)``)."""

KEEP_BYTES = 2**31 - 1
"""Free memory at the top of the heap that glibc keeps before trimming it (``M_TRIM_THRESHOLD``,
an ``int``: its largest value, 2 GiB)."""

_reusing = False  # whether reuse_freed_memory() changed glibc's settings and nothing undid them yet

MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
"""glibc's own environment settings of the same parameters: when the user set any, theirs stand."""


@lru_cache(maxsize=1)
def glibc_version() -> Optional[str]:
    """glibc's version ('2.36') when this process runs on glibc, else None (musl, macOS, Windows)."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # 'glibc 2.36'
    except (AttributeError, ValueError, OSError):
        return None
    if not text or not text.startswith("glibc "):
        return None
    return text.split(" ", 1)[1]


@lru_cache(maxsize=None)
def _libc(name: str, argtypes: tuple, restype=ctypes.c_int):
    """The glibc function ``name`` with its signature, or None where there is none."""
    if glibc_version() is None:
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = restype
    return fn


@lru_cache(maxsize=1)
def active_allocator() -> str:
    """The malloc this process runs: 'jemalloc' or 'tcmalloc' when preloaded (read from
    /proc/self/maps), else 'glibc' on glibc, else 'system'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name, prefix in ALLOCATOR_LIBRARIES.items():
        if f"/{prefix}" in maps:
            return name
    return "glibc" if glibc_version() is not None else "system"


def trim_supported() -> bool:
    """True when :func:`malloc_trim` can return memory: glibc's malloc is the one in use."""
    return active_allocator() == "glibc" and _libc("malloc_trim", (ctypes.c_size_t,)) is not None


def malloc_trim() -> bool:
    """Return the free pages of every glibc arena to the OS (``malloc_trim(0)``).

    Returns True when memory was released, False when none was (or off glibc). Takes milliseconds
    (16 ms on average measured on a loaded 2-core CPU, heap ~450 MiB); other threads' mallocs wait
    on the arena locks meanwhile.
    """
    fn = _libc("malloc_trim", (ctypes.c_size_t,)) if active_allocator() == "glibc" else None
    return bool(fn(0)) if fn is not None else False


def reuse_freed_memory() -> str:
    """Keep freed blocks in glibc's heap for reuse instead of unmapping them (CPU training).

    Sets ``M_MMAP_MAX`` to 0 (blocks of the main arena come from the heap, not from one ``mmap``
    each) and ``M_TRIM_THRESHOLD`` to :data:`KEEP_BYTES`, for the rest of the process. Large blocks
    that other threads allocate still use ``mmap`` (glibc falls back to it outside the main arena).
    Returns what happened, for the run's log: 'on', or why not ('allocator jemalloc', 'not glibc',
    'set by MALLOC_MMAP_MAX_', 'mallopt failed').
    """
    allocator = active_allocator()
    if allocator != "glibc":
        return "not glibc" if allocator == "system" else f"allocator {allocator}"
    for name in MALLOC_ENV:
        if name in os.environ:
            return f"set by {name}"
    global _reusing
    fn = _libc("mallopt", (ctypes.c_int, ctypes.c_int))
    if fn is None or not fn(M_MMAP_MAX, 0) or not fn(M_TRIM_THRESHOLD, KEEP_BYTES):
        return "mallopt failed"
    _reusing = True
    return "on"


def stop_reusing_freed_memory() -> None:
    """Undo :func:`reuse_freed_memory` if it changed anything: glibc's default ``M_MMAP_MAX``
    (65,536) and ``M_TRIM_THRESHOLD`` (128 KiB), then hand the kept free memory back
    (``malloc_trim(0)``). A no-op otherwise, so callers need not remember what happened."""
    global _reusing
    fn = _libc("mallopt", (ctypes.c_int, ctypes.c_int))
    if not _reusing or fn is None:
        return
    _reusing = False
    fn(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    fn(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    malloc_trim()
