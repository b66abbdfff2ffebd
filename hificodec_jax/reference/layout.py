"""The one mapping between PyTorch state-dict keys / tensor layouts and our Flax variables.

Keys: a torch module path ``resblocks.3.convs1.2`` is the Flax path ``resblocks_3/convs1_2``
(an index joins the name before it). Layouts: a torch conv weight ``(C_out, C_in, *spatial)``
is ``[*spatial, C_in, C_out]`` here; a transposed conv's ``(C_in, C_out, *spatial)`` is
``[*spatial, C_in, C_out]`` too. The generator (:mod:`~hificodec_jax.reference.convert`) and the
discriminators (:mod:`~hificodec_jax.reference.training_import`) add only their own leaf names.
"""

from __future__ import annotations

import re

import numpy as np

_INDEXED = re.compile(r"_(\d+)$")


def flax_modules(parts: list[str], root: tuple[str, ...] = ()) -> tuple[str, ...]:
    """torch module names (``["resblocks", "3", "convs1", "2"]``) -> Flax module path under
    ``root`` (``(*root, "resblocks_3", "convs1_2")``)."""
    path = list(root)
    for p in parts:
        if p.isdigit() and path:
            path[-1] = f"{path[-1]}_{p}"
        else:
            path.append(p)
    return tuple(path)


def torch_modules(path: tuple[str, ...] | list[str]) -> list[str]:
    """Inverse of :func:`flax_modules` (without the root): ``["resblocks.3", "convs1.2"]``."""
    return [_INDEXED.sub(r".\1", p) for p in path]


def to_flax(x: np.ndarray, *, transposed: bool = False) -> np.ndarray:
    """A torch tensor in our layout (vectors unchanged)."""
    x = np.asarray(x)
    if x.ndim < 2:
        return x
    spatial = tuple(range(2, x.ndim))
    return np.transpose(x, (*spatial, 0, 1) if transposed else (*spatial, 1, 0))


def to_torch(x: np.ndarray, *, transposed: bool = False) -> np.ndarray:
    """Inverse of :func:`to_flax`."""
    x = np.asarray(x)
    if x.ndim < 2:
        return x
    n = x.ndim
    spatial = tuple(range(n - 2))
    return np.transpose(x, (n - 2, n - 1, *spatial) if transposed else (n - 1, n - 2, *spatial))


def torch_shape(shape: tuple[int, ...], *, transposed: bool = False) -> tuple[int, ...]:
    """The torch shape of a tensor that has ``shape`` in our layout."""
    return to_torch(np.empty(shape, np.uint8), transposed=transposed).shape
