"""Deterministic, numpy-only synthetic weights for the HiFi-Codec parity fixtures.

make_state_dict(config) -> {"encoder": {key: array}, "quantizer": {...}, "generator": {...}}
in the released checkpoint format (keys/shapes/order from shapes.json beside this file;
old-style weight_norm keys weight_g / weight_v; torch channel-first layouts). All float32.

Every tensor gets its own generator, seeded from its full name only (so a tensor with the
same name and shape has the same values in every config):
    rng = np.random.default_rng(zlib.crc32(f"{module}.{key}".encode()))
and is drawn according to its kind (first matching rule):
    quantizer codebooks  quantizer_modules.{g}.embedding.weight   N(0, 0.12^2)  (level 0)
                         quantizer_modules2.{g}.embedding.weight  N(0, 0.08^2)  (level 1)
    encoder GroupNorm    normalize.{n}.weight                     U(0.8, 1.2)
                         normalize.{n}.bias                       U(-0.1, 0.1)
    weight_norm          *.weight_v (direction; its scale cancels) N(0, 1)
                         *.weight_g (per-slice norm of W)          U(0.8, 1.6)
    conv bias            *.bias                                    U(-0.05, 0.05)
    plain conv weight    encoder conv_post.weight (512, 512, 3)    N(0, std 1/sqrt(fan_in)), fan_in = 512*3
The codebook scales are fixed constants chosen from a sweep so that all 4 codebooks use many
codes on the fixture inputs (README.md gives the counts).
"""

import json
import os
import zlib

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
CODEBOOK_STD = {"quantizer_modules": 0.12, "quantizer_modules2": 0.08}


def load_shapes():
    with open(os.path.join(_HERE, "shapes.json")) as f:
        doc = json.load(f)
    return doc["configs"], doc["aliases"]


def _draw(module, key, shape):
    rng = np.random.default_rng(zlib.crc32(f"{module}.{key}".encode()))
    shape = tuple(shape)
    if module == "quantizer":
        std = CODEBOOK_STD[key.split(".")[0]]
        x = rng.normal(0.0, std, shape)
    elif module == "encoder" and key.startswith("normalize."):
        x = (
            rng.uniform(0.8, 1.2, shape)
            if key.endswith(".weight")
            else rng.uniform(-0.1, 0.1, shape)
        )
    elif key.endswith(".weight_v"):
        x = rng.normal(0.0, 1.0, shape)
    elif key.endswith(".weight_g"):
        x = rng.uniform(0.8, 1.6, shape)
    elif key.endswith(".bias"):
        x = rng.uniform(-0.05, 0.05, shape)
    elif key.endswith(".weight"):
        x = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
    else:
        raise ValueError(f"no rule for {module}.{key}")
    return x.astype(np.float32)


def make_state_dict(config):
    configs, aliases = load_shapes()
    rows = configs[aliases.get(config, config)]
    out = {"encoder": {}, "quantizer": {}, "generator": {}}
    for module, key, shape in rows:
        out[module][key] = _draw(module, key, shape)
    return out
