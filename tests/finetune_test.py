"""Fine-tuning (``config.init_from``): training starts from a model's generator and codebooks,
so the held-out mel distance at step 0 is the model's own; codebooks move between the "loss"
and EMA quantizer layouts; a model of another architecture is refused by name."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fast_init, tiny_train_config

import hificodec_jax
from hificodec_jax import factory
from hificodec_jax.data import input_pipeline
from hificodec_jax.data.sources import make_sources
from hificodec_jax.model_dir import save_model
from hificodec_jax.training import sharding
from hificodec_jax.training.checkpoint import EVAL_METRIC
from hificodec_jax.training.evaluate import evaluate, make_eval_step
from hificodec_jax.training.finetune import generator_variables
from hificodec_jax.training.loop import train_and_evaluate
from hificodec_jax.training.metric_writer import MetricWriter
from hificodec_jax.training.sharding import place_like


def test_step_0_eval_is_the_models_own_and_training_runs_on_the_demo_corpus(tmp_path, caplog):
    # A model with gradient-trained ("loss" mode) codebooks, fine-tuned with EMA codebooks.
    model_cfg = tiny_train_config("", 2)
    model_cfg.model.quantizer.update = "loss"
    variables = fast_init(factory.build_codec(model_cfg), model_cfg.data.segment_size, seed=3)
    model_dir = save_model(tmp_path / "model", model_cfg, variables)

    cfg = tiny_train_config("", 2)  # no data.dir: the built-in demo corpus
    cfg.init_from = model_dir
    # The decay interval train_test's runs get (1 step): the same step program, compiled once.
    cfg.optim.g.decay_steps = cfg.optim.d.decay_steps = 1
    caplog.set_level(logging.INFO, logger="absl")
    state = train_and_evaluate(cfg, str(tmp_path / "run"))
    assert int(state.step) == 2
    evals = {r.args[0]: r.args[1] for r in caplog.records if r.msg.startswith("eval at step")}
    assert set(evals) == {0, 2}

    # The model evaluated on its own, on the same held-out clips.
    codec, loaded = hificodec_jax.load(model_dir, inference=False)
    _, eval_src = make_sources(cfg, str(tmp_path / "run"))
    clips = input_pipeline.make_eval_dataset(
        eval_src, max_seconds=cfg.data.eval_seconds, hop=codec.hop
    )
    own = evaluate(
        jax.jit(make_eval_step(codec, cfg)),
        loaded["params"],
        {},
        clips,
        MetricWriter(str(tmp_path / "tb"), enabled=False),
        0,
        cfg.audio.sample_rate,
        sharding.make_mesh(jax.devices()[:1]),
        cfg.model.quantizer.num_groups,
    )
    assert own.keys() == evals[0].keys()
    for k, v in own.items():
        np.testing.assert_allclose(evals[0][k], v, rtol=1e-5, err_msg=k)
    assert evals[2][EVAL_METRIC] != evals[0][EVAL_METRIC]  # and then it trained
    assert (tmp_path / "run" / "export" / "model.json").is_file()


def _codebooks(seed=0):
    return np.random.default_rng(seed).normal(size=(2, 2, 4, 3)).astype(np.float32)


def test_codebooks_change_layout_between_quantizer_modes():
    cb = _codebooks()
    loss_model = {"params": {"encoder": {"w": np.ones(2)}, "quantizer": {"codebooks": cb}}}
    params, vq = generator_variables(loss_model, "ema")
    assert set(params) == {"encoder"}
    q = vq["quantizer"]
    np.testing.assert_array_equal(q["codebooks"], cb)
    np.testing.assert_array_equal(q["embed_sum"], cb)  # unit sizes: the mean is the codebook
    assert q["cluster_size"].shape == (2, 2, 4) and np.all(q["cluster_size"] == 1)
    assert bool(q["initialized"])  # no k-means over the trained codebooks
    ema_model = {"params": {"encoder": {"w": np.ones(2)}}, "vq": vq}
    params, vq2 = generator_variables(ema_model, "loss")
    assert vq2 == {} and params["quantizer"]["codebooks"] is q["codebooks"]
    # An EMA-trained model keeps its statistics.
    trained = dict(q, cluster_size=np.full((2, 2, 4), 7.0, np.float32))
    _, vq3 = generator_variables({"params": {}, "vq": {"quantizer": trained}}, "ema")
    assert np.all(vq3["quantizer"]["cluster_size"] == 7.0)


def test_another_architecture_is_refused_naming_the_variable():
    like = {"decoder": {"w": jnp.zeros((3, 4))}}
    with pytest.raises(ValueError, match=r"'m' params: \['decoder'\]\['w'\] has shape \(3, 5\)"):
        place_like({"decoder": {"w": np.zeros((3, 5))}}, like, "'m' params")
    with pytest.raises(ValueError, match=r"params: no \['decoder'\]\['w'\]"):
        place_like({"decoder": {}}, like, "'m' params")
    with pytest.raises(ValueError, match=r"\['x'\] is not in the train state: fix it"):
        place_like({"decoder": {"w": np.zeros((3, 4))}, "x": np.zeros(1)}, like, "m", hint="fix it")
    placed = place_like({"decoder": {"w": np.ones((3, 4))}}, like, "'m' params")
    assert placed["decoder"]["w"].dtype == jnp.float32 and float(placed["decoder"]["w"].sum()) == 12
