"""A minimal ``torch.save`` writer for tests (no torch): released-format ``.pth`` files."""

from __future__ import annotations

import io
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np


def write_pth(path: Path, obj: dict) -> None:
    """A minimal ``torch.save`` (zip format) for dicts / OrderedDicts of float32 arrays and
    ints: ``<stem>/data.pkl`` is a protocol-2 pickle that rebuilds each tensor with
    ``torch._utils._rebuild_tensor_v2`` from a ``('storage', torch.FloatStorage, key, 'cpu',
    numel)`` persistent id; ``<stem>/data/<key>`` holds the raw little-endian storage bytes."""
    pkl, storages = io.BytesIO(), []
    w = pkl.write

    def string(s: str):
        b = s.encode()
        w(b"X" + struct.pack("<I", len(b)) + b)  # BINUNICODE

    def integer(n: int):
        w(b"J" + struct.pack("<i", n))  # BININT

    def int_tuple(items):
        w(b"(")  # MARK
        for n in items:
            integer(n)
        w(b"t")  # TUPLE

    def ordered_dict():
        w(b"ccollections\nOrderedDict\n)R")  # GLOBAL, EMPTY_TUPLE, REDUCE

    def emit(o):
        if isinstance(o, np.ndarray):
            a = np.ascontiguousarray(o, "<f4")
            key = str(len(storages))
            storages.append(a)
            w(b"ctorch._utils\n_rebuild_tensor_v2\n(")  # GLOBAL, MARK (args)
            w(b"(")
            string("storage")
            w(b"ctorch\nFloatStorage\n")
            string(key)
            string("cpu")
            integer(a.size)
            w(b"tQ")  # TUPLE, BINPERSID
            integer(0)  # storage offset
            int_tuple(a.shape)
            int_tuple([s // a.itemsize for s in a.strides])
            w(b"\x89")  # NEWFALSE: requires_grad
            ordered_dict()  # backward hooks
            w(b"tR")  # TUPLE, REDUCE
        elif isinstance(o, dict):
            ordered_dict() if isinstance(o, OrderedDict) else w(b"}")
            if o:
                w(b"(")
                for k, v in o.items():
                    string(k)
                    emit(v)
                w(b"u")  # SETITEMS
        elif isinstance(o, int):
            integer(o)
        else:
            raise TypeError(type(o))

    w(b"\x80\x02")  # PROTO 2
    emit(obj)
    w(b".")  # STOP
    stem = path.stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{stem}/data.pkl", pkl.getvalue())
        zf.writestr(f"{stem}/byteorder", "little")
        for key, a in enumerate(storages):
            zf.writestr(f"{stem}/data/{key}", a.tobytes())
        zf.writestr(f"{stem}/version", "3\n")
