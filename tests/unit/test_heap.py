"""threadsum.heap: glibc's heap settings for CPU training are made, respected and undone."""
import ctypes

import pytest

from threadsum import heap


def test_reuse_freed_memory_sets_and_restores_glibc_parameters(monkeypatch):
    if heap.active_allocator() != "glibc":
        assert heap.reuse_freed_memory() != "on"  # no-op off glibc or with a preloaded allocator
        return
    calls = []
    real = heap._libc("mallopt", (ctypes.c_int, ctypes.c_int))
    assert real is not None

    def mallopt(param, value):
        calls.append((param, value))
        return real(param, value)

    monkeypatch.setattr(heap, "_libc", lambda name, argtypes, restype=ctypes.c_int:
                        mallopt if name == "mallopt" else None)
    for name in heap.MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    assert heap.reuse_freed_memory() == "on"
    assert calls == [(heap.M_MMAP_MAX, 0), (heap.M_TRIM_THRESHOLD, heap.KEEP_BYTES)]
    calls.clear()
    heap.stop_reusing_freed_memory()
    assert calls == [(heap.M_MMAP_MAX, heap.DEFAULT_MMAP_MAX), (heap.M_TRIM_THRESHOLD, heap.DEFAULT_TRIM_THRESHOLD)]
    calls.clear()
    heap.stop_reusing_freed_memory()  # nothing left to undo: no call
    assert calls == []


@pytest.mark.parametrize("name", heap.MALLOC_ENV)
def test_the_users_malloc_environment_stands(monkeypatch, name):
    if heap.active_allocator() != "glibc":
        pytest.skip("glibc only: elsewhere reuse_freed_memory is a no-op (checked above)")
    monkeypatch.setattr(heap, "_libc", lambda *a, **k: pytest.fail("mallopt called despite the user's setting"))
    monkeypatch.setenv(name, "0")
    assert heap.reuse_freed_memory() == f"set by {name}"
