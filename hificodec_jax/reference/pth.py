"""Torch-free, safe reader for PyTorch checkpoint (``.pth``) files.

Reads both the zip format written by ``torch.save`` (the default since PyTorch 1.6) and the
legacy pickle-stream format (``_use_new_zipfile_serialization=False``) into plain Python
containers holding numpy arrays, without importing torch. Unpickling goes through a restricted
:class:`pickle.Unpickler` whose ``find_class`` resolves only a fixed allow-list of globals, each
mapped to a local stand-in, so nothing named by the file is ever imported or called.

    ckpt = load_pth("g_00100000.pth")
    w = ckpt["generator"]["conv_pre.weight_v"]  # C-contiguous np.ndarray
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["CheckpointFormatError", "UnsafeCheckpointError", "load_pth"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# Storage type -> numpy code of its raw elements (bf16 and bool are converted afterwards).
_STORAGE_CODES = {
    f"{kind}Storage": code
    for kind, code in zip(
        ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"),
        ("f4", "f8", "f2", "u2", "i8", "i4", "i2", "i1", "u1", "u1"),
        strict=True,
    )
}
_SCALARS = (type(None), bool, int, float, complex, str, bytes)


class CheckpointFormatError(ValueError):
    """The file is not a well-formed PyTorch checkpoint (truncated, corrupt, inconsistent)."""


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """The checkpoint's pickle asks for a global or persistent id outside the allow-list."""


class _Frozen:
    """Base of the stand-ins: a pickle ``BUILD`` opcode must not mutate them."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise ValueError(f"pickle tried to set the state of a {type(self).__name__}")


class _StorageType(_Frozen):
    """Stand-in for a ``torch.<Type>Storage`` class: only names the element type."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> None:
        raise ValueError(f"pickle tried to call storage type {self.name}")

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


class _StorageRef(_Frozen):
    """A storage named by a persistent id: key, element type, numel, optional (offset, size) view."""

    __slots__ = ("key", "name", "numel", "view")

    def __init__(self, key: str, name: str, numel: int, view: tuple[int, int] | None) -> None:
        self.key, self.name, self.numel, self.view = key, name, numel, view


class _TensorRef(_Frozen):
    """A tensor to materialise later: a view (offset, size, stride; in elements) of a storage."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _StorageRef, offset: Any, size: Any, stride: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Rebuild(_Frozen):
    """Stand-in for ``torch._utils._rebuild_tensor[_v2]``; records its arguments only."""

    __slots__ = ("name", "nargs")

    def __init__(self, name: str, nargs: tuple[int, ...]) -> None:
        self.name, self.nargs = name, nargs

    def __call__(self, *args: Any) -> _TensorRef:
        if len(args) not in self.nargs or not isinstance(args[0], _StorageRef):
            raise ValueError(f"bad arguments to {self.name}: {args!r:.200}")
        return _TensorRef(*args[:4])


class _OrderedDict(collections.OrderedDict):
    """Stand-in for ``collections.OrderedDict`` that ignores pickled attributes (``_metadata``)."""

    def __setstate__(self, state: Any) -> None:
        pass


_ALLOWED: dict[str, Any] = {
    "collections.OrderedDict": _OrderedDict,
    "torch._utils._rebuild_tensor_v2": _Rebuild("_rebuild_tensor_v2", (6, 7)),
    "torch._utils._rebuild_tensor": _Rebuild("_rebuild_tensor", (4,)),
}
for _name in _STORAGE_CODES:
    _ALLOWED[f"torch.{_name}"] = _ALLOWED[f"torch.cuda.{_name}"] = _StorageType(_name)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and ``('storage', ...)`` persistent ids."""

    def __init__(self, file: IO[bytes], path: str, refs: dict[str, _StorageRef]) -> None:
        super().__init__(file, encoding="utf-8")
        self._path, self._refs = path, refs

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get(f"{module}.{name}")
        if obj is None:
            raise UnsafeCheckpointError(
                f"refusing to load global '{module}.{name}' from checkpoint {self._path} "
                "(only OrderedDict, tensor-rebuild functions and torch storage types are allowed)"
            )
        return obj

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsafeCheckpointError(
                f"refusing persistent id {pid!r:.100} in checkpoint {self._path}: "
                "only ('storage', ...) ids are allowed"
            )
        stype, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not (isinstance(stype, _StorageType) and isinstance(key, str | int)):
            raise ValueError(f"malformed storage id {pid!r:.100}")
        _check_int(numel, "storage numel")
        if view is not None:  # very old legacy files: (view_key, offset, size) into the root
            if not (isinstance(view, tuple) and len(view) == 3):
                raise ValueError(f"bad storage view metadata {view!r:.100}")
            view = (_check_int(view[1], "view offset"), _check_int(view[2], "view size"))
        ref = _StorageRef(str(key), stype.name, numel, view)
        self._refs.setdefault(ref.key, ref)
        return ref


def _check_int(x: Any, what: str) -> int:
    """Returns ``x`` if it is a non-negative int, else raises ValueError."""
    if type(x) is not int or x < 0:
        raise ValueError(f"{what} must be a non-negative int, got {x!r:.50}")
    return x


def _unpickle(f: IO[bytes], path: str, refs: dict[str, _StorageRef] | None = None) -> Any:
    """Runs the restricted unpickler on one pickle of ``f``; storage refs go into ``refs``."""
    return _RestrictedUnpickler(f, path, {} if refs is None else refs).load()


def _load_zip(path: str) -> tuple[Any, dict[str, bytes], str]:
    """Reads a zip checkpoint: (unpickled tree, storage key -> bytes, byte-order char)."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise CheckpointFormatError(f"{path}: expected one '<folder>/data.pkl', found {pkls}")
        prefix = pkls[0][: -len("data.pkl")]
        has_order = prefix + "byteorder" in names
        byteorder = zf.read(prefix + "byteorder").strip() if has_order else b"little"
        if byteorder not in (b"little", b"big"):
            raise CheckpointFormatError(f"{path}: unknown byteorder {byteorder!r:.50}")
        refs: dict[str, _StorageRef] = {}
        obj = _unpickle(io.BytesIO(zf.read(pkls[0])), path, refs)
        storages = {}
        for key in refs:
            name = f"{prefix}data/{key}"
            if name not in names:
                raise CheckpointFormatError(f"{path}: missing storage entry {name!r}")
            storages[key] = zf.read(name)
    return obj, storages, "<" if byteorder == b"little" else ">"


def _load_legacy(path: str) -> tuple[Any, dict[str, Any], str]:
    """Reads a legacy pickle-stream checkpoint: (tree, storage key -> bytes, byte-order char)."""
    raw = Path(path).read_bytes()
    f = io.BytesIO(raw)
    if _unpickle(f, path) != _LEGACY_MAGIC:
        raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    if (protocol := _unpickle(f, path)) != _LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"{path}: unsupported legacy protocol {protocol!r:.50}")
    sys_info = _unpickle(f, path)
    if not isinstance(sys_info, dict):
        raise CheckpointFormatError(f"{path}: bad sys-info header")
    order = "<" if sys_info.get("little_endian", True) else ">"
    refs: dict[str, _StorageRef] = {}
    obj = _unpickle(f, path, refs)
    keys = _unpickle(f, path)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise CheckpointFormatError(f"{path}: bad storage key list")
    storages, pos, view = {}, f.tell(), memoryview(raw)
    for key in keys:
        if key not in refs:
            raise CheckpointFormatError(f"{path}: storage {key!r} is not used by any tensor")
        if pos + 8 > len(raw):
            raise CheckpointFormatError(f"{path}: truncated before storage {key!r}")
        (count,) = struct.unpack(order + "q", raw[pos : pos + 8])
        if count != refs[key].numel:
            raise CheckpointFormatError(
                f"{path}: storage {key!r} size {count} != {refs[key].numel}"
            )
        nbytes = count * int(_STORAGE_CODES[refs[key].name][1])
        if pos + 8 + nbytes > len(raw):
            raise CheckpointFormatError(f"{path}: truncated inside storage {key!r}")
        storages[key], pos = view[pos + 8 : pos + 8 + nbytes], pos + 8 + nbytes
    return obj, storages, order


class _Builder:
    """Turns the unpickled tree of stand-ins into plain containers and numpy arrays."""

    def __init__(self, path: str, storages: dict[str, Any], order: str, bf16: str) -> None:
        self.path, self.storages, self.order, self.bf16 = path, storages, order, bf16
        self.cache: dict[int, np.ndarray] = {}
        self.active: set[int] = set()

    def build(self, obj: Any) -> Any:
        if type(obj) in _SCALARS:
            return obj
        if isinstance(obj, _StorageRef):  # a bare storage: return all of it, 1-D
            return self.tensor(_TensorRef(obj, 0, (obj.numel,), (1,)))
        if isinstance(obj, _TensorRef):  # the tree keeps it alive, so its id is stable
            if id(obj) not in self.cache:
                self.cache[id(obj)] = self.tensor(obj)
            return self.cache[id(obj)]
        if type(obj) not in (dict, _OrderedDict, list, tuple, set, frozenset):
            raise CheckpointFormatError(f"{self.path}: unexpected object {obj!r:.80} in checkpoint")
        if id(obj) in self.active:
            raise CheckpointFormatError(f"{self.path}: self-referencing container in checkpoint")
        self.active.add(id(obj))
        if type(obj) is _OrderedDict:
            out: Any = collections.OrderedDict(
                (self.build(k), self.build(v)) for k, v in collections.OrderedDict.items(obj)
            )
        elif type(obj) is dict:
            out = {self.build(k): self.build(v) for k, v in dict.items(obj)}
        else:
            out = type(obj)(self.build(v) for v in obj)
        self.active.discard(id(obj))
        return out

    def tensor(self, t: _TensorRef) -> np.ndarray:
        ref, where = t.storage, f"{self.path}: tensor on storage {t.storage.key!r}"
        if ref.key not in self.storages:
            raise CheckpointFormatError(f"{where}: storage data is missing")
        dtype = np.dtype(self.order + _STORAGE_CODES[ref.name])
        buf = self.storages[ref.key]
        if len(buf) % dtype.itemsize:
            raise CheckpointFormatError(f"{where}: storage size is not a multiple of its type")
        base = np.frombuffer(buf, dtype=dtype)
        if ref.view is not None:
            if ref.view[0] + ref.view[1] > base.size:
                raise CheckpointFormatError(f"{where}: storage view exceeds its root storage")
            base = base[ref.view[0] : ref.view[0] + ref.view[1]]
        if not (isinstance(t.size, tuple) and isinstance(t.stride, tuple)):
            raise CheckpointFormatError(f"{where}: size and stride must be tuples")
        offset = _check_int(t.offset, "storage offset")
        size = tuple(_check_int(n, "size") for n in t.size)
        stride = tuple(_check_int(s, "stride") for s in t.stride)
        if len(size) != len(stride):
            raise CheckpointFormatError(f"{where}: size {size} and stride {stride} differ in rank")
        if math.prod(size) == 0:
            arr = np.zeros(size, dtype)
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            if last >= base.size:
                raise CheckpointFormatError(
                    f"{where}: view (offset {offset}, size {size}, stride {stride}) reads element "
                    f"{last}, outside the storage of {base.size} elements"
                )
            strides = tuple(s * dtype.itemsize for s in stride)
            arr = as_strided(base[offset:], shape=size, strides=strides, writeable=False)
        arr = arr.astype(dtype.newbyteorder("="), order="C", copy=True)
        if ref.name == "BoolStorage":
            return arr != 0
        if ref.name == "BFloat16Storage":
            if self.bf16 == "ml_dtypes":
                import ml_dtypes

                return arr.view(ml_dtypes.bfloat16)
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def load_pth(
    path: str | os.PathLike[str], *, bfloat16_as: Literal["float32", "ml_dtypes"] = "float32"
) -> dict[Any, Any]:
    """Loads a ``torch.save`` checkpoint (zip or legacy format) without torch.

    Returns the saved dict with (Ordered)dicts, lists, tuples and Python scalars as themselves
    and every tensor as a fresh C-contiguous numpy array of its dtype. bfloat16 tensors come back
    as float32 holding the exact values, or as ``ml_dtypes.bfloat16`` if ``bfloat16_as`` says so.
    Raises UnsafeCheckpointError for disallowed pickle globals, CheckpointFormatError otherwise.
    """
    if bfloat16_as not in ("float32", "ml_dtypes"):
        raise ValueError(f"bfloat16_as must be 'float32' or 'ml_dtypes', got {bfloat16_as!r}")
    path = os.fspath(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    try:
        if head == b"PK\x03\x04":
            obj, storages, order = _load_zip(path)
        elif head[:1] == b"\x80":
            obj, storages, order = _load_legacy(path)
        else:
            raise CheckpointFormatError(f"{path}: neither a zip nor a legacy PyTorch checkpoint")
        result = _Builder(path, storages, order, bfloat16_as).build(obj)
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, OverflowError, RecursionError, struct.error, zipfile.BadZipFile,
            zlib.error, NotImplementedError) as e:  # fmt: skip
        raise CheckpointFormatError(
            f"{path}: truncated or malformed file ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(result, dict):
        raise CheckpointFormatError(f"{path}: top-level object is {type(result).__name__}")
    return result
