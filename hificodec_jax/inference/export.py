"""A model's encode and decode as serialized StableHLO, for serving without this package.

``export_model(MODEL, DIR, platforms)`` writes

* ``DIR/encode.bin``: float32 ``wav [B, T]`` -> int32 ``codes [B, F, L*G]``, ``F = T // hop``;
* ``DIR/decode.bin``: int32 ``codes [B, F, L*G]`` -> float32 ``wav [B, F*hop]``;
* ``DIR/export.json``: the shapes, dtypes, sample rate, hop and platforms.

Each ``.bin`` is ``jax.export.Exported.serialize()`` output with the model's weights baked in
as constants and a symbolic batch size and length, so one file serves every batch and length
(``T >= hop``) on each of its platforms; a GPU and TPU program uses XLA's native strided and
grouped convolutions (:mod:`hificodec_jax.models.strided_conv`). Load it with plain JAX::

    exported = jax.export.deserialize(open("DIR/encode.bin", "rb").read())
    codes = exported.call(wav)

The programs are those of ``codec.apply(variables, x, method="encode" / "decode")`` at full
bitrate (all ``L`` levels); decode takes all ``L*G`` code streams.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from hificodec_jax.loading import Model, load

__all__ = [
    "PLATFORMS",
    "ServedProgram",
    "check_platforms",
    "export_codec",
    "export_model",
    "load_exported",
    "symbolic_wav_shape",
]

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
FORMAT_VERSION = 1


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    platforms = tuple(p.strip().lower() for p in platforms if p.strip())
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ValueError(f"platforms must be a non-empty subset of {PLATFORMS}, got {platforms}")
    return tuple(dict.fromkeys(platforms))


def _latent_frames(codec, variables, wav) -> object:
    """The encoder's frame count for ``wav`` (a shape struct), traced but not computed."""
    z = jax.eval_shape(lambda v, w: codec.apply(v, w, method="encode_latent"), variables, wav)
    return z.shape[1]


def symbolic_wav_shape(codec, variables):
    """Symbolic ``(b, t)`` for the encoder's input, ``t >= hop``.

    Every encoder maps ``T`` samples to ``floor(T / hop)`` frames through its chain of
    strided convs, but JAX cannot prove that the chain's nested ``floordiv`` expression equals
    ``floordiv(t, hop)``, so it is given as a constraint, after checking it on lengths around
    the first multiples of the hop.
    """
    hop = int(codec.hop)
    for n in (hop, hop + 1, 2 * hop - 1, 2 * hop, 3 * hop + hop // 2):
        frames = _latent_frames(codec, variables, jax.ShapeDtypeStruct((1, n), jnp.float32))
        if frames != n // hop:
            raise ValueError(f"the encoder maps {n} samples to {frames} frames, not {n // hop}")
    _, t = jax.export.symbolic_shape("b, t", constraints=[f"t >= {hop}"])
    frames = _latent_frames(codec, variables, jax.ShapeDtypeStruct((1, t), jnp.float32))
    constraints = [f"t >= {hop}"]
    if str(frames) != f"floordiv(t, {hop})":
        constraints.append(f"{frames - 1} == floordiv(t, {hop}) - 1")
    return jax.export.symbolic_shape("b, t", constraints=constraints)


def export_codec(
    codec, variables, platforms: Sequence[str] = ("cpu",)
) -> tuple[jax.export.Exported, jax.export.Exported]:
    """``(encode, decode)`` of ``codec`` with ``variables`` baked in, lowered for ``platforms``.

    Batch size and length are symbolic (``T >= hop`` samples, ``F >= 1`` frames).
    """
    platforms = check_platforms(platforms)
    q = codec.quantizer
    streams = q.num_levels * q.num_groups
    variables = jax.tree.map(jnp.asarray, variables)
    b, t = symbolic_wav_shape(codec, variables)
    b_dec, f = jax.export.symbolic_shape("b, f")  # symbolic dimensions are >= 1

    def encode(wav):
        return codec.apply(variables, wav, method="encode").astype(jnp.int32)

    def decode(codes):
        return codec.apply(variables, codes, method="decode").astype(jnp.float32)

    enc = jax.export.export(jax.jit(encode), platforms=platforms)(
        jax.ShapeDtypeStruct((b, t), jnp.float32)
    )
    dec = jax.export.export(jax.jit(decode), platforms=platforms)(
        jax.ShapeDtypeStruct((b_dec, f, streams), jnp.int32)
    )
    return enc, dec


def export_model(
    model: str | os.PathLike | Model, out: str | os.PathLike, platforms: Sequence[str] = ("cpu",)
) -> dict:
    """Write ``encode.bin``, ``decode.bin`` and ``export.json`` of ``model`` (anything
    :func:`hificodec_jax.load` accepts, or what it returned) into ``out``; returns the JSON's
    contents."""
    platforms = check_platforms(platforms)
    if not isinstance(model, Model):
        model = load(model)
    codec, variables, config = model.codec, model.variables, model.config
    enc, dec = export_codec(codec, variables, platforms)
    q = codec.quantizer
    streams = q.num_levels * q.num_groups
    hop = int(codec.hop)
    meta = {
        "format_version": FORMAT_VERSION,
        "jax_version": jax.__version__,
        "sample_rate": int(config.audio.sample_rate),
        "hop": hop,
        "platforms": list(platforms),
        "num_groups": int(q.num_groups),
        "num_levels": int(q.num_levels),
        "codebook_size": int(q.codebook_size),
        "encode": {
            "file": "encode.bin",
            "input": {"name": "wav", "shape": ["B", "T"], "dtype": "float32"},
            "output": {"name": "codes", "shape": ["B", "T // hop", streams], "dtype": "int32"},
        },
        "decode": {
            "file": "decode.bin",
            "input": {"name": "codes", "shape": ["B", "F", streams], "dtype": "int32"},
            "output": {"name": "wav", "shape": ["B", f"F * {hop}"], "dtype": "float32"},
        },
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode.bin").write_bytes(enc.serialize())
    (out / "decode.bin").write_bytes(dec.serialize())
    (out / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class ServedProgram:
    """An exported encode or decode whose :meth:`call` checks its input's rank and dtype first,
    with an error naming the expected shape (plain ``Exported.call`` reports only a rank
    mismatch). Other attributes are the ``jax.export.Exported``'s."""

    def __init__(self, exported: jax.export.Exported, spec: dict):
        self.exported, self.spec = exported, spec

    def __getattr__(self, name):
        return getattr(self.exported, name)

    def call(self, x):
        shape, dtype = self.spec["input"]["shape"], self.spec["input"]["dtype"]
        if jnp.ndim(x) != len(shape):
            raise ValueError(
                f"{self.spec['input']['name']} must have shape [{', '.join(map(str, shape))}] "
                f"({dtype}), got an array of shape {tuple(jnp.shape(x))}"
                + (": add a batch axis, x[None]" if jnp.ndim(x) == len(shape) - 1 else "")
            )
        if jnp.result_type(x) != jnp.dtype(dtype):
            raise ValueError(
                f"{self.spec['input']['name']} must be {dtype}, got {jnp.result_type(x)}"
            )
        return self.exported.call(x)


def load_exported(
    directory: str | os.PathLike,
) -> tuple[dict, ServedProgram, ServedProgram]:
    """``(meta, encode, decode)`` of a directory written by :func:`export_model`; the programs'
    ``call`` checks the input's rank and dtype."""
    directory = Path(directory)
    path = directory / "export.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (not a directory written by export_model)")
    meta = json.loads(path.read_text())
    programs = []
    for kind in ("encode", "decode"):
        file = directory / meta[kind]["file"]
        try:
            exported = jax.export.deserialize(bytearray(file.read_bytes()))
        except (OSError, ValueError) as e:
            raise ValueError(f"{file}: not a serialized jax.export program: {e}") from e
        programs.append(ServedProgram(exported, meta[kind]))
    return meta, programs[0], programs[1]
