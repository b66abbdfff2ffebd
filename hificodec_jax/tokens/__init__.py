"""Tokenizing a speech corpus into codec codes for a codec language model.

:func:`tokenize` (the job: exact, resumable, sharded over processes), :class:`TokenSource` (the
store read back as a grain random-access data source), :func:`verify`, and :func:`export_npy`
/ :func:`export_hf` (the store as one ``.npy`` per record or a Hugging Face dataset). User
guide: ``docs/tokenize.md``. Needs the ``[train]`` extra (``array_record``, ``grain``).
"""

_LAZY = {
    "tokenize": "hificodec_jax.tokens.job",
    "TokenizeError": "hificodec_jax.tokens.job",
    "TokenSource": "hificodec_jax.tokens.store",
    "verify": "hificodec_jax.tokens.verification",
    "export_npy": "hificodec_jax.tokens.export",
    "export_hf": "hificodec_jax.tokens.export",
    "read_records": "hificodec_jax.tokens.inputs",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hificodec_jax.tokens' has no attribute {name!r}")
