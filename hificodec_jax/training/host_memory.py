"""Host memory housekeeping for long-running JAX processes on CPU hosts.

XLA's compiler allocates gigabytes of small objects while it compiles the train step and frees
them afterwards, but glibc keeps the freed pages inside its heap arenas, where the runtime's
large (mmap-backed) buffers cannot reuse them: the process's resident size then carries the
compiler's peak for the rest of the run. ``malloc_trim(0)`` hands those pages back to the OS,
so the train state created after the compile reuses them (figures in
docs/performance-notes.md).

On accelerators the device memory is unaffected; this only concerns the host process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource

__all__ = ["peak_rss_mib", "release_freed_memory", "rss_mib"]


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if lib is None or not hasattr(lib, "malloc_trim"):  # not glibc (musl, macOS)
        return None
    lib.malloc_trim.argtypes = [ctypes.c_size_t]
    lib.malloc_trim.restype = ctypes.c_int
    return lib


def release_freed_memory() -> bool:
    """Return memory freed by earlier work (e.g. XLA compilations) to the OS.

    A no-op returning False where the C library has no ``malloc_trim`` (only glibc has it).
    """
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024  # KiB on Linux


def rss_mib() -> float:
    """This process's current resident set size in MiB (Linux ``/proc``; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return peak_rss_mib()
    return pages * resource.getpagesize() / 2**20
