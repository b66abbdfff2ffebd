"""stream_decode_to_pcm: int16 little-endian bytes of whole decoding, written chunk by chunk."""

import io

import jax.numpy as jnp
import numpy as np
import pytest
from streaming_test import decode, random_codes, tiny

from hificodec_jax.audio.audio_io import float_to_int16
from hificodec_jax.inference.streaming_pcm import stream_decode_to_pcm


def test_pcm_bytes_equal_whole_decode_quantised():
    codec, variables = tiny()
    codes = random_codes(codec, 1, 40, seed=20)[0]  # [F, L*G], as read from an .hfc file
    want = float_to_int16(decode(codec, variables, codes[None])[0])
    writes = []
    n = stream_decode_to_pcm(codec, variables, codes, 4, writes.append)
    assert n == 40 * codec.hop == want.size
    # Written as it is decoded: the first chunk once the lookahead is filled, then every chunk.
    assert len(writes) > 1 and all(isinstance(w, bytes) for w in writes)
    got = np.frombuffer(b"".join(writes), dtype="<i2")
    # Rounding at a quantisation step may flip one LSB where streamed and whole differ by 1e-7.
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.mean(got == want) > 0.999


def test_pcm_from_an_iterable_of_pieces_at_lower_bitrate():
    codec, variables = tiny()
    codes = random_codes(codec, 1, 23, seed=21, streams=codec.quantizer.num_groups)[0]
    pieces = (codes[i : i + 5] for i in range(0, 23, 5))  # frames as a codec LM emits them
    out = io.BytesIO()
    assert stream_decode_to_pcm(codec, variables, pieces, 2, out.write) == 23 * codec.hop
    got = np.frombuffer(out.getvalue(), dtype="<i2")
    want = float_to_int16(decode(codec, variables, codes[None])[0])
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert stream_decode_to_pcm(codec, variables, iter([]), 2, out.write) == 0


def test_pcm_bad_codes_raise():
    codec, variables = tiny()
    with pytest.raises(ValueError, match=r"codes must be in \[0, 64\)"):
        stream_decode_to_pcm(codec, variables, np.full((5, 4), 64), 2, lambda b: None)
    with pytest.raises(ValueError, match="expected levels x groups"):
        stream_decode_to_pcm(codec, variables, np.zeros((5, 3), np.int32), 2, lambda b: None)
    with pytest.raises(ValueError, match=r"codes must be \[frames, streams\]"):
        stream_decode_to_pcm(codec, variables, jnp.zeros((2, 5, 4), jnp.int32), 2, lambda b: None)
