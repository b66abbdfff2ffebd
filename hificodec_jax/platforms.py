"""Keep JAX on the CPU, quietly, on a host with no accelerator but with accelerator plugins.

The ``[aot]`` extra installs libtpu and the CUDA plugin so that programs can be compiled for
TPUs and GPUs anywhere. JAX then probes both at its first call on every host: without a chip
that prints a CUDA traceback and libtpu warnings and takes libtpu's process lock.
:func:`default_to_cpu_without_accelerator` makes such a host use its CPU, as it would without
the plugins; a host with a chip, or a user who chose ``JAX_PLATFORMS``, is left alone.
"""

from __future__ import annotations

import glob
import importlib.util
import os

# Device files of the chips JAX's plugins drive: NVIDIA GPUs, TPU v2-v4 (accel) and v5e+ (vfio),
# AMD GPUs, and GPUs under WSL.
_ACCELERATOR_DEVICES = (
    "/dev/nvidia[0-9]*",
    "/dev/accel*",
    "/dev/vfio/[0-9]*",
    "/dev/kfd",
    "/dev/dxg",
)


def accelerator_present() -> bool:
    """Whether this host has a device file of a GPU or TPU."""
    return any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICES)


def accelerator_plugins_installed() -> bool:
    """Whether libtpu or JAX's CUDA plugin is installed (both probe at JAX's first call)."""
    if importlib.util.find_spec("libtpu") is not None:
        return True
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except (ImportError, ValueError):
        return False


def default_to_cpu_without_accelerator() -> bool:
    """Run JAX on the CPU, without loading its accelerator plugins, when plugins are installed
    but no chip is present and no platform was chosen; returns whether it did.

    Call it from an entry point before JAX's first computation (it imports JAX).
    :func:`restore_plugins` brings the plugins back for a compile-only GPU target.
    """
    if os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME"):
        return False
    if accelerator_present() or not accelerator_plugins_installed():
        return False
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized() or jax.config.jax_platforms:
        return False
    jax.config.update("jax_platforms", "cpu")
    # JAX imports every installed plugin even for the CPU alone, and the CUDA plugin then logs
    # that no driver was found; marking the plugins as registered skips that import.
    with xla_bridge._plugin_lock:
        if not xla_bridge._plugins_registered:
            xla_bridge._plugins_registered = True
            _SKIPPED_PLUGINS.append(True)
    return True


_SKIPPED_PLUGINS: list = []


def restore_plugins() -> None:
    """Load the accelerator plugins that :func:`default_to_cpu_without_accelerator` skipped
    (the CUDA plugin provides the GPU compiler's topologies)."""
    if not _SKIPPED_PLUGINS:
        return
    from jax._src import xla_bridge

    with xla_bridge._plugin_lock:
        xla_bridge.discover_pjrt_plugins()
    _SKIPPED_PLUGINS.clear()
