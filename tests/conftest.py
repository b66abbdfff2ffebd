"""Test session setup, before JAX starts: 8 simulated CPU devices (for the sharding tests) and
cheaper XLA CPU code generation.

Compiling dominates this suite (the tiny models run in milliseconds). Without the fusion
emitters and at backend optimisation level 0 (no LLVM optimisation of XLA's own kernels;
convolutions and matmuls still run in their libraries), XLA CPU compiles small programs
several times faster (figures in docs/performance-notes.md). The programs
compute the same functions; only the generated code and its float rounding differ, which every
test tolerates. The library, ``main`` and the benchmarks use XLA's defaults, as do the tests'
subprocesses that drop ``XLA_FLAGS`` (checkpoint crash, inference memory). To test with
other flags, set ``XLA_FLAGS`` yourself.
"""

import os
import sys

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8"
    " --xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py

# One XLA compile per distinct program for the whole session (tests build the same tiny train
# step several times); a fresh directory per session keeps runs hermetic. The session's
# pytest-xdist workers (pyproject.toml) share it through the environment; the process that
# made it removes it at exit.
import atexit
import shutil
import tempfile

import jax

_CACHE = os.environ.get("HIFICODEC_TEST_XLA_CACHE")
if not _CACHE:  # the session's first process (pytest-xdist workers inherit the directory)
    _CACHE = os.environ["HIFICODEC_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="hificodec_xla_")
    atexit.register(shutil.rmtree, _CACHE, True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_modifyitems(config, items):
    """Run the multi-process test last: its single-process reference then reuses the programs
    the training tests put into the session's compilation cache."""
    del config
    items.sort(key=lambda item: item.path.name == "multiprocess_test.py")
