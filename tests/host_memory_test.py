"""``host_memory``: freed heap memory goes back to the OS (glibc), RSS readings are sane."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import numpy as np
import pytest

from hificodec_jax.training import host_memory

GLIBC = sys.platform.startswith("linux") and host_memory._libc() is not None


def test_rss_readings():
    now, peak = host_memory.rss_mib(), host_memory.peak_rss_mib()
    assert 10 < now <= peak + 1
    # Fresh pages from mmap: a malloc'ed block may reuse pages a busy worker's heap holds already.
    block = mmap.mmap(-1, 64 * 2**20)
    np.frombuffer(block, np.uint8)[:] = 1  # touch every page
    assert host_memory.rss_mib() >= now + 50
    assert host_memory.peak_rss_mib() >= now + 50
    block.close()


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_release_returns_freed_heap_pages():
    """Many small blocks freed below a live one stay resident until released (as the XLA
    compiler's do); releasing gives them back."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size, count = 4096, 40_000  # 160 MiB in small (non-mmap) blocks
    blocks = []
    for _ in range(count):
        p = libc.malloc(size)
        libc.memset(p, 1, size)
        blocks.append(p)
    guard = libc.malloc(64)  # keeps the heap from shrinking by itself when the rest is freed
    before = host_memory.rss_mib()
    for p in blocks:
        libc.free(p)
    after_free = host_memory.rss_mib()
    assert host_memory.release_freed_memory()
    after_release = host_memory.rss_mib()
    libc.free(guard)
    assert after_free > before - 40  # freeing alone returned (almost) nothing
    assert after_release < after_free - 100  # releasing returned most of the 160 MiB
