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


# The files that take longest (mostly compiling), longest first, as measured
# (docs/development.md): the two workers take files in this order (pyproject.toml:
# --no-loadscope-reorder), so the long ones start early and short ones even out the end.
_LONGEST_FIRST = (
    "aot_test.py",
    "training_parity_test.py",
    "train_step_test.py",
    "reference_resume_test.py",
    "tokenize_test.py",
    "train_test.py",
    "streaming_test.py",
    "export_test.py",
    "train_step_parity_test.py",
)


def pytest_collection_modifyitems(config, items):
    """Longest files first (above); the multi-process test last: its single-process reference
    then reuses the programs the training tests put into the session's compilation cache."""
    del config

    def rank(item):
        name = item.path.name
        if name == "multiprocess_test.py":
            return len(_LONGEST_FIRST) + 1
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order


# ------------------------------------------------------------------------------------- memory
# The suite must fit a shared 2-core, 24 GiB machine with two workers (docs/development.md).
# A worker runs file after file: after each file its compiled programs and freed memory are
# handed back, so a worker's peak is its largest file's, not their sum. The terminal summary
# reports each worker's peak resident memory. With HIFICODEC_TEST_MEMORY_LOG=FILE every test
# appends "node id, peak RSS in MiB, seconds" (its setup, including module fixtures it builds
# first, call and teardown) to FILE.
import gc  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from hificodec_jax.training.host_memory import peak_rss_mib, release_freed_memory  # noqa: E402

_MEMORY_LOG = os.environ.get("HIFICODEC_TEST_MEMORY_LOG")
_LOGGED_PEAK = [0.0]  # resetting VmHWM also resets what getrusage reports: keep the maximum


def _peak_rss_mib() -> float:
    return max(peak_rss_mib(), _LOGGED_PEAK[0])


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "full_size: a file of full-size models; such files run one at a time"
    )


@pytest.fixture(scope="module", autouse=True)
def _one_full_size_file_at_a_time(request):
    """Files marked ``full_size`` (module ``pytestmark``) take a lock shared by the session's
    workers, so two of them never hold their GiBs at once."""
    if request.node.get_closest_marker("full_size") is None:
        yield
        return
    import fcntl

    with open(os.path.join(_CACHE, "full_size.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # the module's fixtures are finalised here when the next test is in another file
    if nextitem is None or nextitem.path != item.path:
        gc.collect()
        jax.clear_caches()  # the next file recompiles what it shares from the disk cache
        release_freed_memory()


def _hwm_mib() -> float | None:
    """The resident high-water mark since the last :func:`_reset_hwm` (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _MEMORY_LOG:
        yield
        return
    _reset_hwm()
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    peak = _hwm_mib()
    _LOGGED_PEAK[0] = max(_LOGGED_PEAK[0], peak or 0.0)
    with open(_MEMORY_LOG, "a") as f:
        f.write(f"{item.nodeid}\t{peak if peak is not None else float('nan'):.0f}\t{seconds:.1f}\n")


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: report to the controller
        workeroutput["peak_rss_mib"] = _peak_rss_mib()


_WORKER_PEAKS: dict[str, float] = {}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    del error
    peak = getattr(node, "workeroutput", {}).get("peak_rss_mib")
    if peak is not None:
        _WORKER_PEAKS[node.gateway.id] = peak


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    del exitstatus, config
    peaks = _WORKER_PEAKS or {"this process": _peak_rss_mib()}
    text = ", ".join(f"{k} {v / 1024:.1f} GiB" for k, v in sorted(peaks.items()))
    terminalreporter.write_line(f"peak resident memory per worker: {text}")
