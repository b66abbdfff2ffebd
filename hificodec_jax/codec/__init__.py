"""Deprecated: the 0.2 home of the codec tools, kept for one release.

``hificodec_jax.codec.batching``, ``.inference`` and ``.convert`` (the paths the 0.2 README
documented) still import, with a ``DeprecationWarning``; use ``hificodec_jax.encode_batch`` /
``decode_batch`` / ``chunked_encode`` / ``chunked_decode`` and
``hificodec_jax.reference.convert`` instead.
"""

import warnings


def moved(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path goes away in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
