"""Streaming decode (models/streaming.py): streamed == whole decode for any split, chunk size,
batch of streams ending at different times, both weight forms; the scan form; one compile per
chunk size; causality; approximate lookahead; bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, config

import hificodec_jax
from hificodec_jax.models import decode_stream, streaming
from hificodec_jax.models.decode_stream import DecodeStream
from hificodec_jax.models.layers import polyphase_kernel
from hificodec_jax.models.streaming_graph import polyphase_groups, polyphase_pieces

TOL = 1e-5


@functools.cache
def tiny(weight_norm: bool = True):
    """Tiny codec with random weights; codebooks N(0, 1) so the audio depends on the codes."""
    codec = hificodec_jax.build_codec(config("tiny"), weight_norm=weight_norm)
    key = hificodec_jax.param_init_key(jax.random.key(0))
    variables = codec.init(key, jnp.zeros((1, codec.hop * 4)))
    q = dict(variables["vq"]["quantizer"])
    q["codebooks"] = jax.random.normal(jax.random.key(1), q["codebooks"].shape)
    return codec, {**variables, "vq": {"quantizer": q}}


def random_codes(codec, batch, frames, seed=0, streams=None):
    streams = streams or codec.quantizer.num_levels * codec.quantizer.num_groups
    k = codec.quantizer.codebook_size
    return np.random.default_rng(seed).integers(0, k, (batch, frames, streams), dtype=np.int32)


def decode(codec, variables, codes, frame_lengths=None):
    fl = None if frame_lengths is None else jnp.asarray(frame_lengths)
    return np.asarray(codec.apply(variables, jnp.asarray(codes), fl, method="decode"))


def stream_all(stream, codes, seed, max_push=7, ends=None):
    """Push ``codes`` in random splits (0..max_push frames), ending stream b after ``ends[b]``
    frames; -> the concatenated output including the flush."""
    rng = np.random.default_rng(seed)
    frames = codes.shape[1]
    ends = np.full(codes.shape[0], frames) if ends is None else np.asarray(ends)
    outs, i = [], 0
    while i < frames:
        next_end = min([e for e in ends if e > i], default=frames)
        m = min(int(rng.integers(0, max_push + 1)), next_end - i)
        for b in np.flatnonzero(ends == i):
            stream.end([b])
        chunk = codes[:, i : i + m].copy()
        chunk[ends <= i] = 999_999  # ended streams' codes are ignored (any value)
        outs.append(stream.push(chunk))
        assert outs[-1].shape[0] == codes.shape[0] and outs[-1].dtype == np.float32
        i += m
    outs.append(stream.flush())
    return np.concatenate(outs, axis=1)


def test_polyphase_pieces_drop_exactly_the_zero_taps():
    # y[S t + r] = sum_j x[t - j] W[S j + r + p], tap m reading j = j_max - m. grvq4's ups_0
    # (K 16, S 8, p 4, j in -1..1): phases 0-3 read j 1, 0 (taps 0-1), phases 4-7 j 0, -1.
    assert polyphase_groups(16, 8) == ((0, 2, 0, 4), (1, 3, 4, 8))
    # K 11, S 5, p 3: phases 0-1 read j 1, 0; phase 2 j 1, 0, -1; phases 3-4 j 0, -1.
    assert polyphase_groups(11, 5) == ((0, 2, 0, 2), (0, 3, 2, 3), (1, 3, 3, 5))
    for k, s in ((16, 8), (11, 5), (8, 4), (4, 2), (7, 3)):
        kernel = jax.random.normal(jax.random.key(k), (k, 3, 2)) + 10.0  # no zero weights
        poly = np.asarray(polyphase_kernel(kernel, s))
        kept = np.zeros(poly.shape, bool)
        pieces = polyphase_pieces(kernel, k, s)
        for (lo, hi, r_lo, r_hi), piece in zip(polyphase_groups(k, s), pieces, strict=True):
            np.testing.assert_array_equal(piece, poly[lo:hi, :, r_lo * 2 : r_hi * 2])
            kept[lo:hi, :, r_lo * 2 : r_hi * 2] = True
        assert kept.sum() == k * 3 * 2 and np.all(poly[~kept] == 0), (k, s)


@pytest.mark.parametrize("weight_norm", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_random_splits_equal_whole_decode(chunk, weight_norm):
    codec, variables = tiny(True)
    if not weight_norm:  # the inference form: what hificodec_jax.load returns
        codec = hificodec_jax.build_codec(config("tiny"), weight_norm=False)
        variables = {**variables, "params": hificodec_jax.fold_weight_norm(variables["params"])}
    codes = random_codes(codec, 2, 150, seed=chunk)
    want = decode(codec, variables, codes)
    assert want.std() > 3e-3  # the audio depends on the codes: a misaligned stream would show
    got = stream_all(DecodeStream(codec, variables, batch=2, chunk_frames=chunk), codes, chunk)
    assert got.shape == want.shape == (2, 150 * codec.hop)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_batch_of_streams_ending_at_different_times(chunk):
    codec, variables = tiny()
    ends = [90, 61, 7]
    codes = random_codes(codec, 3, 90, seed=10 + chunk)
    padded = codes.copy()
    for b, e in enumerate(ends):
        padded[b, e:] = 0
    want = decode(codec, variables, padded, ends)
    assert np.all(want[1, 61 * codec.hop :] == 0) and np.abs(want[1, : 61 * codec.hop]).max() > 0
    alone = decode(codec, variables, codes[2:, :7])  # each stream decodes as it would alone
    np.testing.assert_allclose(want[2, : 7 * codec.hop], alone[0], atol=TOL, rtol=0)
    stream = DecodeStream(codec, variables, batch=3, chunk_frames=chunk)
    got = stream_all(stream, codes, seed=chunk, ends=ends)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_lower_bitrate_streams():
    codec, variables = tiny()
    codes = random_codes(codec, 1, 40, seed=3, streams=codec.quantizer.num_groups)
    stream = DecodeStream(codec, variables, chunk_frames=4, num_levels=1)
    got = stream_all(stream, codes, seed=3)
    np.testing.assert_allclose(got, decode(codec, variables, codes), atol=TOL, rtol=0)


def test_scan_form_equals_object_form_and_whole_decode():
    codec, variables = tiny()
    n, chunks = 4, 20
    codes = random_codes(codec, 2, n * chunks, seed=5)
    state = streaming.init(codec, variables, 2)
    look = state.lookahead_frames
    assert look == streaming.exact_lookahead_frames(codec)

    @jax.jit
    def run(variables, state, codes):
        xs = codes.reshape(2, chunks, n, -1).transpose(1, 0, 2, 3)

        def body(state, chunk):
            pcm, state = streaming.step(codec, variables, state, chunk)
            return state, pcm

        state, pcms = jax.lax.scan(body, state, xs)
        return pcms.transpose(1, 0, 2).reshape(2, -1), state

    pcm, state = run(variables, state, jnp.asarray(codes))
    tail, state = streaming.flush(codec, variables, state, n)
    scanned = np.concatenate([np.asarray(pcm), np.asarray(tail)], axis=1)
    assert np.all(scanned[:, : look * codec.hop] == 0)  # samples at negative times
    scanned = scanned[:, look * codec.hop :]
    obj = stream_all(DecodeStream(codec, variables, batch=2, chunk_frames=n), codes, seed=5)
    np.testing.assert_allclose(scanned, obj, atol=1e-6, rtol=0)
    np.testing.assert_allclose(scanned, decode(codec, variables, codes), atol=TOL, rtol=0)


def test_one_compilation_per_chunk_size(monkeypatch):
    codec, variables = tiny()
    traces = []
    real_step = streaming.step

    def counting_step(*args):
        traces.append(args[-1].shape)
        return real_step(*args)

    monkeypatch.setattr(decode_stream, "step", counting_step)
    decode_stream._jitted_step.cache_clear()
    try:
        codes = random_codes(codec, 2, 60, seed=7)
        for chunk in (2, 5):
            stream_all(DecodeStream(codec, variables, batch=2, chunk_frames=chunk), codes, chunk)
        stream_all(DecodeStream(codec, variables, batch=2, chunk_frames=2), codes, 9)
    finally:
        decode_stream._jitted_step.cache_clear()
    assert traces == [(2, 2, 4), (2, 5, 4)]


@pytest.mark.parametrize("lookahead", [None, 2])
def test_causal_changing_codes_beyond_the_lookahead_changes_nothing_emitted(lookahead):
    codec, variables = tiny()
    frames, known = 60, 30
    a = random_codes(codec, 1, frames, seed=8)
    b = a.copy()
    b[:, known:] = random_codes(codec, 1, frames - known, seed=9)
    stream = DecodeStream(codec, variables, batch=2, chunk_frames=1, lookahead_frames=lookahead)
    look = stream.lookahead_frames
    both = np.concatenate([a, b])
    before = stream.push(both[:, :known])
    after = np.concatenate([stream.push(both[:, known:]), stream.flush()], axis=1)
    assert before.shape[1] == (known - look) * codec.hop
    np.testing.assert_array_equal(before[0], before[1])  # only codes < known were used
    assert np.abs(after[0] - after[1]).max() > 1e-3  # and the later codes do matter
    if lookahead is None:  # the emitted part is final: whole decoding of a gives it
        np.testing.assert_allclose(before[0], decode(codec, variables, a)[0, : before.shape[1]],
                                   atol=TOL, rtol=0)  # fmt: skip


def test_exact_lookahead_is_the_layers_sum_and_smaller_is_approximate():
    codec, variables = tiny()
    delays = streaming.layer_delays(codec)
    # Parallel ResBlocks of a stage cost the largest; chains add (tiny: k3 and k7, d 1 and 3).
    hop = codec.hop
    expected = 3 * hop + 1 * hop  # conv_pre (k7), ups_0 (k11, x5: one input frame)
    expected += (3 * 1 + 3 + 3 * 3 + 3) * hop // 5  # k7 ResBlock at x5: 18 samples of hop/5
    expected += 1 * hop // 5 + 18 * hop // 20  # ups_1 (1 input sample), k7 ResBlock at x20
    expected += 1 * hop // 20 + 18 * hop // 40 + 3  # ups_2, k7 ResBlock at x40, conv_post
    assert streaming.exact_delay_samples(codec) == expected
    assert streaming.exact_lookahead_frames(codec) == -(-expected // hop)
    assert delays[0].name == "conv_pre" and delays[0].right == 3
    assert streaming.algorithmic_latency(codec, 16000, chunk_frames=2) == pytest.approx(
        (streaming.exact_lookahead_frames(codec) + 2) * hop / 16000
    )
    codes = random_codes(codec, 1, 50, seed=11)
    want = decode(codec, variables, codes)
    errors = []
    for look in (0, 2, streaming.exact_lookahead_frames(codec) - 1):
        stream = DecodeStream(codec, variables, chunk_frames=1, lookahead_frames=look)
        assert not stream.exact
        got = stream_all(stream, codes, seed=1)
        assert got.shape == want.shape
        errors.append(np.abs(got - want).max())
    assert errors[0] > errors[2] > TOL  # below the sum of the layers' contexts: approximate
    more = DecodeStream(
        codec, variables, lookahead_frames=streaming.exact_lookahead_frames(codec) + 2
    )
    assert more.exact
    np.testing.assert_allclose(stream_all(more, codes, seed=2), want, atol=TOL, rtol=0)


def test_bad_input_raises_and_keeps_the_state():
    codec, variables = tiny()
    codes = random_codes(codec, 2, 30, seed=12)
    stream = DecodeStream(codec, variables, batch=2, chunk_frames=3)
    out = [stream.push(codes[:, :10])]
    k = codec.quantizer.codebook_size
    bad = [
        (np.full((2, 2, 4), k), r"codes must be in \[0, 64\)"),
        (np.full((2, 2, 4), -1), r"codes must be in \[0, 64\)"),
        (codes[:, :2, :3], r"codes must have shape \[2, n, 4\]"),
        (codes[:1, :2], r"codes must have shape \[2, n, 4\]"),
        (codes[0, :2], r"rank 3"),
        (codes[:, :2].astype(np.float32), "must be integers"),
    ]
    for chunk, match in bad:
        with pytest.raises(ValueError, match=match):
            stream.push(chunk)
    with pytest.raises(ValueError, match=r"stream indices must be in \[0, 2\)"):
        stream.end([2])
    out += [stream.push(codes[:, 10:]), stream.flush()]
    np.testing.assert_allclose(
        np.concatenate(out, axis=1), decode(codec, variables, codes), atol=TOL, rtol=0
    )
    for call in (lambda: stream.push(codes[:, :1]), stream.flush, lambda: stream.end([0])):
        with pytest.raises(ValueError, match="was flushed"):
            call()
    with pytest.raises(ValueError, match="chunk_frames must be a positive int"):
        DecodeStream(codec, variables, chunk_frames=0)
    with pytest.raises(ValueError, match="lookahead_frames must be an int >= 0"):
        DecodeStream(codec, variables, lookahead_frames=-1)
    with pytest.raises(ValueError, match="num_levels must be in"):
        DecodeStream(codec, variables, num_levels=3)


def test_seanet_family_is_refused():
    cfg = config("grvq4_seanet")
    codec = hificodec_jax.build_codec(cfg)
    with pytest.raises(ValueError, match="HiFi-GAN decoder family only"):
        DecodeStream(codec, {"params": {}})
    with pytest.raises(ValueError, match="HiFi-GAN decoder family only"):
        streaming.exact_lookahead_frames(codec)


def test_grvq4_short_batch_equals_whole_decode():
    """The released architecture (inference form, random weights), two streams ending apart."""
    cfg = hificodec_jax.load_config(str(REPO / "configs" / "grvq4.py"))
    codec = hificodec_jax.build_codec(cfg, weight_norm=False)
    variables = codec.init(
        hificodec_jax.param_init_key(jax.random.key(0)), jnp.zeros((1, codec.hop * 2))
    )
    assert streaming.exact_lookahead_frames(codec) == 14  # 4393 samples, module docstring
    assert streaming.exact_delay_samples(codec) == 4393
    ends = [24, 17]
    codes = random_codes(codec, 2, 24, seed=13)
    padded = codes.copy()
    padded[1, 17:] = 0
    want = decode(codec, variables, padded, ends)
    got = stream_all(DecodeStream(codec, variables, batch=2, chunk_frames=3), codes, 13, ends=ends)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_functional_step_refuses_bad_chunks_before_tracing():
    codec, variables = tiny()
    state = streaming.init(codec, variables, 2)
    for codes, match in [
        (jnp.zeros((2, 3), jnp.int32), "rank 3"),
        (jnp.zeros((2, 0, 4), jnp.int32), "at least one frame"),
        (jnp.zeros((1, 3, 4), jnp.int32), r"shape \[2, n, 4\]"),
        (jnp.full((2, 3, 4), 64, jnp.int32), r"codes must be in \[0, 64\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            streaming.step(codec, variables, state, codes)
    with pytest.raises(ValueError, match="which must have shape"):
        streaming.end_streams(state, jnp.ones(3, bool))
    with pytest.raises(ValueError, match="batch must be a positive int"):
        streaming.init(codec, variables, 0)
