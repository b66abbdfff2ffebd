"""A persistent cache of compiled programs for the command line and other short-lived tools.

Each ``hificodec-jax`` call is a new process; without a cache it compiles the codec's programs
again every time. :func:`enable_compilation_cache` points JAX's persistent compilation cache at
``$HIFICODEC_JAX_CACHE``, else ``$XDG_CACHE_HOME/hificodec_jax/xla``, else
``~/.cache/hificodec_jax/xla`` (``off`` disables it), and caches every program, however quick
its compile: the many small ones of a short clip add up. Training caches under its workdir.
"""

from __future__ import annotations

import os

ENV = "HIFICODEC_JAX_CACHE"
_OFF = ("off", "0", "none", "false")


def default_cache_dir() -> str | None:
    """Where the cache goes without an explicit directory (None: disabled by ``ENV=off``)."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF or not value.strip() else value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hificodec_jax", "xla")


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str | None:
    """Use a persistent compilation cache at ``directory`` (default :func:`default_cache_dir`;
    ``"off"`` disables). A cache the process already uses is kept. Returns the directory used."""
    import jax

    if directory is not None and os.fspath(directory).strip().lower() in _OFF:
        return None
    current = jax.config.jax_compilation_cache_dir
    if directory is None and current:
        return current
    directory = os.fspath(directory) if directory is not None else default_cache_dir()
    if directory is None:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None  # a read-only home: run uncached rather than fail
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
