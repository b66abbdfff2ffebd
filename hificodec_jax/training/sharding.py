"""Meshes and shardings for training (``jax.jit`` + ``NamedSharding``).

The mesh has two axes, ``data`` and ``fsdp``, over every device of every process. Batches are
split along their first axis over both. With ``fsdp == 1`` (the default) this is plain data
parallelism: the train state is replicated. With ``fsdp > 1`` each parameter (and its optimizer
moments) is split along its largest dimension divisible by ``fsdp`` (FSDP/ZeRO-3 style; XLA
inserts the all-gathers), which divides state memory by ``fsdp``; small or indivisible leaves stay
replicated. Nothing model-specific lives here.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
MIN_SHARDED_SIZE = 2**14  # leaves with fewer elements are replicated even under FSDP


def make_mesh(devices=None, fsdp: int = 1) -> Mesh:
    """``(data, fsdp)`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the number of devices ({len(devices)})")
    return jax.make_mesh(
        (len(devices) // fsdp, fsdp),
        BATCH_AXES,
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices,
    )


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Batch axis split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same value on every device."""
    return NamedSharding(mesh, P())


def param_sharding(shape, mesh: Mesh, min_size: int = MIN_SHARDED_SIZE) -> NamedSharding:
    """FSDP sharding of one leaf: its largest dimension divisible by the ``fsdp`` axis size."""
    n = mesh.shape["fsdp"]
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return replicated(mesh)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % n == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return NamedSharding(mesh, P(*spec))
    return replicated(mesh)


def on_own_rows(fn, mesh: Mesh | None, *, whole_args: int = 0, whole_output: bool = False):
    """``fn(*args, **kwargs)`` run by each device on its own rows of the batch.

    The first ``whole_args`` positional arguments (e.g. parameters) are whole on every device,
    the others are split along their first axis over the batch axes, and so is the output; with
    ``whole_output`` the output is a pair ``(per_row, whole)`` whose second part is whole (it
    must be computed from the whole arguments alone). Keyword arguments are static. Why not
    leave it to the partitioner: XLA's GPU partitioner does not split an FFT or a grouped
    convolution along a sharded batch, it gathers the whole batch onto every GPU first and runs
    the layer on all of it. Gradients of whole arguments are summed over devices, as without
    the map. With no mesh, or one device, ``fn`` itself.
    """
    if mesh is None or mesh.size == 1:
        return fn
    rows, whole = P(BATCH_AXES), P()

    def run(*args, **kwargs):
        in_specs = (whole,) * whole_args + (rows,) * (len(args) - whole_args)
        mapped = jax.shard_map(
            functools.partial(fn, **kwargs),
            mesh=mesh,
            in_specs=in_specs,
            out_specs=(rows, whole) if whole_output else rows,
            # The varying-axes check would make layers know the mesh: the CPU grouped conv
            # (grouped_conv) loops from a replicated carry, and its custom VJP returns each
            # device's kernel gradient, which the map's boundary sums.
            check_vma=False,
        )
        return mapped(*args)

    return run


class OwnRows:
    """``unit`` whose ``apply(params, state, x, **kw) -> (per_row, state)`` runs on each
    device's own rows of ``x`` (:func:`on_own_rows`); every other attribute is ``unit``'s."""

    def __init__(self, unit, mesh: Mesh | None):
        self._unit = unit
        self.apply = on_own_rows(unit.apply, mesh, whole_args=2, whole_output=True)

    def __getattr__(self, name):
        return getattr(self._unit, name)


def state_shardings(abstract_state, mesh: Mesh, min_size: int = MIN_SHARDED_SIZE):
    """Shardings for a train state (or any pytree of arrays / shape structs)."""
    return jax.tree.map(lambda x: param_sharding(x.shape, mesh, min_size), abstract_state)


def _global_arrays(batch: dict, sharding: NamedSharding) -> dict:
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local batch (this process's rows) -> global arrays sharded over the batch axes."""
    return _global_arrays(batch, data_sharding(mesh))


def replicate_batch(batch: dict, mesh: Mesh) -> dict:
    """A batch every process holds in full -> global arrays replicated on every device."""
    return _global_arrays(batch, replicated(mesh))


def to_host(tree):
    """Numpy copy of a pytree of (possibly sharded, multi-process) arrays, on every process."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def place_like(tree, like, what: str, *, hint: str = ""):
    """``tree`` (host arrays) as global arrays with ``like``'s structure, dtypes and shardings.

    ``ValueError`` naming ``what`` and the first leaf that is missing, extra or of another
    shape (``hint`` is appended: what the user should do about it).
    """
    hint = f": {hint}" if hint else ""
    got = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    want = jax.tree_util.tree_flatten_with_path(like)[0]
    for path, leaf in want:
        key = jax.tree_util.keystr(path)
        if key not in got:
            raise ValueError(f"{what}: no {key}, which the train state has{hint}")
        if tuple(np.shape(got[key])) != tuple(leaf.shape):
            raise ValueError(
                f"{what}: {key} has shape {np.shape(got[key])}, the train state's "
                f"{tuple(leaf.shape)}{hint}"
            )
    extra = sorted(set(got) - {jax.tree_util.keystr(p) for p, _ in want})
    if extra:
        raise ValueError(f"{what}: {extra[0]} is not in the train state{hint}")

    def put(path, leaf):
        x = np.asarray(got[jax.tree_util.keystr(path)], leaf.dtype)
        return jax.make_array_from_callback(x.shape, leaf.sharding, lambda index: x[index])

    return jax.tree_util.tree_map_with_path(put, like)
