"""Numerical parity with the PyTorch reference (AcademiCodec) on the fixtures in data/academicodec.

Weights come from the fixtures' numpy recipe in the released checkpoint layout and go through
the same converter a real checkpoint uses; outputs are compared with the reference's outputs
at the tolerances the fixture README derives from a float64 re-run.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from helpers import DATA, config, make_weights_module

import hificodec_jax
from hificodec_jax.reference.convert import flax_to_torch, torch_to_flax

pytestmark = pytest.mark.full_size  # the released architectures (conftest.py)

CASES = {"16k_320d": "grvq4", "24k_240d": "grvq4_24k_240d"}


@functools.cache
def fixtures():
    return dict(np.load(DATA / "academicodec" / "cases.npz"))


@functools.lru_cache(maxsize=2)  # full size: two models at a time bound this file's memory
def model(case: str, update: str = "ema"):
    cfg = config(CASES[case])
    cfg.model.quantizer.update = update
    codec = hificodec_jax.build_codec(cfg)
    state = make_weights_module().make_state_dict(case)
    return codec, torch_to_flax(state, codec), state


def _channels_last(x):
    return np.transpose(x, (0, 2, 1))  # reference (B, D, F) -> ours [B, F, D]


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_latent_matches_reference(case):
    codec, variables, _ = model(case)
    f = fixtures()
    z = jax.jit(functools.partial(codec.apply, method="encode_latent"))(variables, f[f"wav_{case}"])
    np.testing.assert_allclose(z, _channels_last(f[f"latent_{case}"]), atol=5e-5, rtol=1e-4)


def _code_mask(case):
    """Decisions that must match: all but near-ties (codegap < 1e-3) and, when a level-0 code
    may flip, the level-1 codes of that frame (fixture README)."""
    f = fixtures()
    tie = f[f"codegap_{case}"] < 1e-3
    ok = ~tie
    level0_tie = tie[..., :2].any(-1)
    ok[..., 2:] &= ~level0_tie[..., None]
    return ok


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("update", ["ema", "loss"])
def test_quantizer_matches_reference(case, update):
    codec, variables, _ = model(case, update)
    f = fixtures()
    z = _channels_last(f[f"latent_{case}"])
    q = jax.jit(functools.partial(codec.apply, method="quantize"))(variables, z)
    ok = _code_mask(case)
    assert ok.mean() > 0.98  # the near-tie exemption stays small
    np.testing.assert_array_equal(np.asarray(q.codes)[ok], f[f"codes_{case}"][ok])
    frames_ok = ok.all(-1)  # frames whose every code matches: the quantized latent must too
    np.testing.assert_allclose(
        np.asarray(q.z_q)[frames_ok], _channels_last(f[f"quantized_{case}"])[frames_ok], atol=1e-5
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_decoder_matches_reference(case):
    codec, variables, _ = model(case)
    f = fixtures()
    decode_latent = jax.jit(functools.partial(codec.apply, method="decode_latent"))
    y = decode_latent(variables, _channels_last(f[f"quantized_{case}"]))
    np.testing.assert_allclose(y, f[f"recon_{case}"], atol=1e-5)
    y_codes = jax.jit(functools.partial(codec.apply, method="decode"))(
        variables, f[f"codes_{case}"]
    )
    np.testing.assert_allclose(y_codes, f[f"decoded_{case}"], atol=1e-5)


def test_full_round_trip_and_folded_weights_match_reference():
    """wav -> codes -> wav end to end (16k), with the WN and the folded (inference) form."""
    case = "16k_320d"
    codec, variables, _ = model(case)
    f = fixtures()
    wav, ok = f[f"wav_{case}"], _code_mask(case)
    out = jax.jit(codec.apply)(variables, wav)
    np.testing.assert_array_equal(np.asarray(out.codes)[ok], f[f"codes_{case}"][ok])
    assert out.wav_hat.shape == f[f"decoded_{case}"].shape
    folded = hificodec_jax.build_codec(config(CASES[case]), weight_norm=False)
    fvars = {**variables, "params": hificodec_jax.fold_weight_norm(variables["params"])}
    out_f = jax.jit(folded.apply)(fvars, wav)
    np.testing.assert_array_equal(out_f.codes, out.codes)
    np.testing.assert_allclose(out_f.wav_hat, out.wav_hat, atol=1e-5)
    if ok.all(-1).all():  # every code equal: the end-to-end audio must match the reference
        np.testing.assert_allclose(out.wav_hat, f[f"decoded_{case}"], atol=1e-5)


def test_parameter_counts_match_reference():
    codec = hificodec_jax.build_codec(config("grvq4"))
    shapes = jax.eval_shape(codec.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 320), "f4"))

    def count(tree):
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))

    assert count(shapes["params"]["encoder"]) == 47_228_960
    assert count(shapes["params"]["decoder"]) == 15_353_346
    assert count(shapes["vq"]["quantizer"]["codebooks"]) == 1_048_576


@pytest.mark.parametrize("case", sorted(CASES))
def test_converter_round_trip_is_exact(case):
    codec, variables, state = model(case)
    back = flax_to_torch(variables, codec)
    for module, sd in state.items():
        assert set(back[module]) == set(sd)
        for key, value in sd.items():
            assert back[module][key].shape == value.shape, key
            np.testing.assert_array_equal(back[module][key], value, err_msg=key)


def test_converter_names_first_mismatching_key():
    codec, _, _ = model("16k_320d")
    state = make_weights_module().make_state_dict("24k_240d")  # ups.1 kernel 7, not 8
    with pytest.raises(
        ValueError, match=r"encoder\.ups\.1\.weight_v.*\(128, 64, 7\).*\(128, 64, 8\)"
    ):
        torch_to_flax(state, codec)
    state = make_weights_module().make_state_dict("16k_320d")
    del state["generator"]["conv_post.bias"]
    with pytest.raises(ValueError, match=r"generator\.conv_post\.bias: missing"):
        torch_to_flax(state, codec)
