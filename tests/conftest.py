"""Test session setup: 8 simulated CPU devices (for the sharding tests) before JAX starts."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py

# One XLA compile per distinct program for the whole session (tests build the same tiny train
# step several times); a fresh directory per session keeps runs hermetic.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402

_CACHE = tempfile.mkdtemp(prefix="hificodec_xla_")
atexit.register(shutil.rmtree, _CACHE, True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_modifyitems(config, items):
    """Run the multi-process test last: its single-process reference then reuses the programs
    the training tests put into the session's compilation cache."""
    del config
    items.sort(key=lambda item: item.path.name == "multiprocess_test.py")
