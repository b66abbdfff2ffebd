"""Deterministic, numpy-only synthetic discriminator weights for the training-parity fixtures.

make_disc_state_dict() -> {"mpd": {key: array}, "msd": {...}, "mstftd": {...}}
in the layout of the reference's `do_` training checkpoints (keys/shapes/order from
disc_shapes.json beside this file; torch channel-first layouts; old-style weight_norm keys
weight_g / weight_v; torch spectral_norm keys weight_orig / weight_u / weight_v). All float32.
The families are the reference's MultiPeriodDiscriminator(), MultiScaleDiscriminator() and
EnCodec's MultiScaleSTFTDiscriminator(filters=32).

Every tensor gets its own generator, seeded from its full name only:
    rng = np.random.default_rng(zlib.crc32(f"{family}.{key}".encode()))
and is drawn according to its kind (first matching rule):
    weight_norm          *.weight_v        N(0, 1)          (direction; its scale cancels)
                         *.weight_g        U(0.4, 0.7)      (per-slice norm of W; torch's default
                                                             init gives about 0.58)
    spectral_norm        *.weight_orig     N(0, 1/fan_in)   (std 1/sqrt(fan_in), fan_in = prod(shape[1:]))
                         *.weight_u, *.weight_v             the converged power iteration on
                                                             W = weight_orig.reshape(out, -1):
                                                             u0 = N(0,1) from the rng above, normalised,
                                                             then 200 x { v = normalize(W^T u);
                                                             u = normalize(W v) } in float64, eps 1e-12
    conv bias            *.bias            U(-0.05, 0.05)
    plain conv weight    *.weight          U(-1/sqrt(fan_in), 1/sqrt(fan_in))  (torch's default bound)
    STFT window buffer   *.spec_transform.window   the periodic Hann window (no parameter; a
                                                   converter may check and drop it)
With converged u, v one more power iteration (the reference runs one per forward call in
training mode) changes sigma by far less than float32 rounding, so a port that runs its power
iteration a different number of times still matches.
"""

import json
import os
import zlib

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


def load_disc_shapes():
    with open(os.path.join(_HERE, "disc_shapes.json")) as f:
        return json.load(f)["families"]


def _normalize(x, eps=1e-12):
    return x / max(np.linalg.norm(x), eps)


def _draw(family, key, shape):
    rng = np.random.default_rng(zlib.crc32(f"{family}.{key}".encode()))
    shape = tuple(shape)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if key.endswith("spec_transform.window"):  # buffer: torch.hann_window(win_length), periodic
        n = shape[0]
        return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    if key.endswith(".weight_g"):
        x = rng.uniform(0.4, 0.7, shape)
    elif key.endswith(".weight_orig"):
        x = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
    elif key.endswith(".bias"):
        x = rng.uniform(-0.05, 0.05, shape)
    elif key.endswith(".weight_v") or key.endswith(".weight_u"):
        x = rng.normal(0.0, 1.0, shape)  # replaced below for spectral norm
    elif key.endswith(".weight"):
        b = 1.0 / np.sqrt(fan_in)
        x = rng.uniform(-b, b, shape)
    else:
        raise ValueError(f"no rule for {family}.{key}")
    return x.astype(np.float32)


def _power_iteration(w, key, n=200):
    mat = w.reshape(w.shape[0], -1).astype(np.float64)
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    u = _normalize(rng.normal(0.0, 1.0, mat.shape[0]))
    v = None
    for _ in range(n):
        v = _normalize(mat.T @ u)
        u = _normalize(mat @ v)
    return u.astype(np.float32), v.astype(np.float32)


def make_disc_state_dict():
    out = {}
    for family, rows in load_disc_shapes().items():
        sd = {}
        for key, shape in rows:
            sd[key] = _draw(family, key, shape)
        for key in list(sd):
            if key.endswith(".weight_orig"):
                base = key[: -len(".weight_orig")]
                u, v = _power_iteration(sd[key], f"{family}.{base}.power_iteration")
                assert (
                    sd[base + ".weight_u"].shape == u.shape
                    and sd[base + ".weight_v"].shape == v.shape
                )
                sd[base + ".weight_u"], sd[base + ".weight_v"] = u, v
        out[family] = sd
    return out
