"""The train step users run (``compilation.build``'s jitted ``make_train_step``) computes the
same step as the training-parity probe (``parity.make_reference_probe``), which
``training_parity_test`` proves equal to the PyTorch reference's: one step of the tiny config's
``academicodec`` recipe (all three discriminator families) from one state and batch, every loss
term and gradient norm the step reports, its updated parameters and MSD's spectral-norm vectors
(after torch's four power iterations) against the probe's ``step/`` terms and D step.
"""

from __future__ import annotations

import jax
import numpy as np
from helpers import REPO, TRAIN_TEST_OVERRIDES, noise
from reference_resume_test import _filled

import hificodec_jax
from hificodec_jax import factory
from hificodec_jax.reference import parity
from hificodec_jax.training import optim, sharding
from hificodec_jax.training.compilation import build
from hificodec_jax.training.step import TrainState

# Both programs run the same phase functions in the same order on the same inputs, so they
# agree to float rounding (bit for bit with today's XLA); a real difference (a term, an order,
# the learning rate, a skipped update) is orders of magnitude larger.
RTOL = 1e-5

# The step's metric -> the probe's term (``step/`` prefix); the mel entries are added below.
METRIC_TO_TERM = {
    "loss/d_mpd": "d_mpd",
    "loss/d_msd": "d_msd",
    "loss/d_stft": "d_stft",
    "loss/d_total": "d_total",
    "grad_norm/d": "gnorm_d",
    "loss/mel": "mel",
    "loss/mel512_hop120": "mel_512",
    "loss/mel256_hop60": "mel_256",
    **{f"loss/{k}_{f}": f"{k}_{f}" for k in ("fm", "adv") for f in ("mpd", "msd", "stft")},
    "loss/quantizer": "quantizer",
    "loss/g_total": "g_total",
    "grad_norm/g": "gnorm_g",
}


def _config():
    """``configs/tiny.py:academicodec`` with one resblock per stage and two MPD periods (a
    shorter compile); the three discriminator families the probe reads stay."""
    cfg = hificodec_jax.load_config(f"{REPO / 'configs' / 'tiny.py'}:academicodec")
    cfg.update_from_flattened_dict(
        {k: v for k, v in TRAIN_TEST_OVERRIDES.items() if k.startswith("model.")}
    )
    cfg.disc.periods = (2, 3)
    cfg.data.segment_size = 2000  # >= MS-STFT's largest n_fft (512)
    assert cfg.model.quantizer["update"] == "loss"  # codebooks trained by the loss
    assert tuple(cfg.disc.families) == ("mpd", "msd", "stft")
    assert cfg.disc.spectral_norm_iterations == "per_call"  # torch's four power iterations
    return cfg


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_train_step_is_the_probe_step():
    cfg = _config()
    mesh = sharding.make_mesh(jax.devices()[:1])
    codec, _, abstract, step = build(cfg, mesh)
    discs = factory.build_discriminators(cfg)
    tx_g, _ = optim.make_optimizer(cfg.optim.g)
    tx_d, _ = optim.make_optimizer(cfg.optim.d)
    g_params = _filled({"params": abstract.g_params}, 1)["params"]
    d_vars = _filled({"params": abstract.d_params, "spectral": abstract.spectral}, 2)
    state = TrainState(
        step=np.zeros((), np.int32),
        g_params=g_params,
        d_params=d_vars["params"],
        g_opt_state=tx_g.init(g_params),
        d_opt_state=tx_d.init(d_vars["params"]),
        vq={},
        spectral=d_vars["spectral"],
        rng=np.asarray(jax.random.key_data(jax.random.key(cfg.seed))),
        skipped=np.zeros((2,), np.int32),
    )
    state = jax.tree.map(np.asarray, state)  # host copy: the step donates its input
    wav = noise((2, cfg.data.segment_size), seed=3)

    probe = jax.jit(parity.make_reference_probe(codec, discs, tx_d, cfg))
    terms = jax.tree.map(np.asarray, probe(state, wav))
    batch = {"wav": wav, "lengths": np.full((2,), wav.shape[1], np.int32)}
    shardings = jax.tree.map(lambda s: s.sharding, abstract)
    new, metrics = step(jax.device_put(state, shardings), sharding.shard_batch(batch, mesh))
    new, metrics = jax.tree.map(np.asarray, (new, metrics))

    assert int(metrics["train/skipped_g"]) == int(metrics["train/skipped_d"]) == 0
    mel_main = [k for k in metrics if k.startswith("loss/mel1024_hop")]
    assert len(mel_main) == 1, sorted(metrics)
    pairs = {**METRIC_TO_TERM, mel_main[0]: "mel_main"}
    reported = {k for k in metrics if k.startswith(("loss/", "grad_norm/"))}
    assert reported == set(pairs), reported ^ set(pairs)  # every term the step reports
    for metric, term in pairs.items():
        want = terms[f"step/{term}"]
        assert np.isfinite(want) and want != 0, term
        assert _rel(metrics[metric], want) <= RTOL, (metric, float(metrics[metric]), float(want))

    # D's Adam step and spectral-norm vectors: the probe's, which step/'s G phase ran against.
    for got, want in (
        (new.d_params, terms["step_d_params"]),
        (new.spectral, terms["step_spectral"]),
    ):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * np.max(np.abs(b)))
    # G's Adam step on the probe's G gradients (fresh moments: what tx_g does with them alone).
    for name in ("grad_encoder", "grad_generator"):
        g = terms[f"step/{name}"]
        updates, _ = tx_g.update({"x": g}, tx_g.init({"x": g}))
        want = parity._probe(g_params, name) + updates["x"]
        got = parity._probe(new.g_params, name)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * cfg.optim.g.learning_rate)
    assert int(new.step) == 1
