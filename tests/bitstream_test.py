"""Tests for ``hificodec_jax.inference.bitstream`` (the ``.hfc`` file format)."""

from __future__ import annotations

import dataclasses
import os
import struct
import time
import zlib

import numpy as np
import pytest

from hificodec_jax.inference.bitstream import (
    CRC_SIZE,
    HEADER_SIZE,
    HEADER_SIZES,
    BitstreamError,
    HfcHeader,
    decode_bitstream,
    encode_bitstream,
    pack_codes,
    read_hfc,
    unpack_codes,
    write_hfc,
)

MODEL_ID = bytes(range(16))


def _header(**overrides) -> HfcHeader:
    fields = dict(
        sample_rate=16000, hop=320, num_groups=2, num_levels=4, levels_used=1,
        codebook_size=1024, model_id=MODEL_ID, num_frames=3, original_length=450,
        original_sample_rate=8000,
    )  # fmt: skip
    fields.update(overrides)
    return HfcHeader(**fields)


# Hand-computed example: 3 frames x 2 streams (L=1, G=2) at 10 bits.
GOLDEN_CODES = np.array([[1023, 0], [512, 1], [5, 6]])
# 1111111111 0000000000 1000000000 0000000001 0000000101 0000000110 + 4 zero padding bits
GOLDEN_PAYLOAD = bytes([0xFF, 0xC0, 0x08, 0x00, 0x01, 0x01, 0x40, 0x60])
GOLDEN_HEADER = (
    b"HFC1"
    + bytes([2])  # version
    + (16000).to_bytes(4, "little")  # sample_rate
    + (320).to_bytes(4, "little")  # hop
    + bytes([2, 4, 1])  # num_groups, num_levels, levels_used
    + (1024).to_bytes(4, "little")  # codebook_size
    + MODEL_ID
    + (3).to_bytes(8, "little")  # num_frames
    + (450).to_bytes(8, "little")  # original_length (at original_sample_rate)
    + (8000).to_bytes(4, "little")  # original_sample_rate
)
GOLDEN_FILE = (
    GOLDEN_HEADER
    + GOLDEN_PAYLOAD
    + zlib.crc32(GOLDEN_HEADER + GOLDEN_PAYLOAD).to_bytes(4, "little")
)
# The same codes in format version 1 (no original_sample_rate; original_length at 16 kHz), as
# written before version 2: still read.
GOLDEN_HEADER_V1 = (
    GOLDEN_HEADER[:4] + bytes([1]) + GOLDEN_HEADER[5:44] + (900).to_bytes(8, "little")
)
GOLDEN_FILE_V1 = (
    GOLDEN_HEADER_V1
    + GOLDEN_PAYLOAD
    + zlib.crc32(GOLDEN_HEADER_V1 + GOLDEN_PAYLOAD).to_bytes(4, "little")
)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


# ---------------------------------------------------------------------------- packing


@pytest.mark.parametrize(
    "codes, bits, expected",
    [
        ([1, 2], 2, bytes([0b01100000])),
        ([1023, 0, 512], 10, bytes([0xFF, 0xC0, 0x08, 0x00])),
        ([1] * 8, 1, b"\xff"),
        ([0x12, 0x34], 8, b"\x12\x34"),
        ([63], 6, bytes([0b11111100])),
        ([], 10, b""),
    ],
)
def test_pack_codes_known_bytes(codes, bits, expected):
    codes = np.array(codes, dtype=np.int64)
    assert pack_codes(codes, bits) == expected
    np.testing.assert_array_equal(unpack_codes(expected, len(codes), bits), codes)


def test_pack_codes_is_frame_major():
    codes = np.array([[1, 2], [3, 0]])
    assert pack_codes(codes, 2) == bytes([0b01101100])


def test_pack_codes_rejects_out_of_range():
    with pytest.raises(BitstreamError, match="out of"):
        pack_codes(np.array([4]), 2)
    with pytest.raises(BitstreamError, match="out of"):
        pack_codes(np.array([-1]), 2)
    with pytest.raises(BitstreamError, match="integers"):
        pack_codes(np.array([1.0]), 2)
    with pytest.raises(BitstreamError, match="bits"):
        pack_codes(np.array([1]), 0)


def test_unpack_codes_rejects_bad_length_and_padding():
    with pytest.raises(BitstreamError, match="need 2 bytes"):
        unpack_codes(b"\x00", 2, 5)
    with pytest.raises(BitstreamError, match="need 1 bytes"):
        unpack_codes(b"\x00\x00", 2, 2)
    with pytest.raises(BitstreamError, match="padding"):
        unpack_codes(bytes([0b01100001]), 2, 2)


# ---------------------------------------------------------------------------- file layout


def test_golden_file_bytes():
    header = _header()
    assert header.bits_per_code == 10 and header.num_streams == 2
    assert header.payload_size == 8  # ceil(3 * 2 * 10 / 8)
    assert header.file_size == len(GOLDEN_FILE) == 56 + 8 + 4 == 68
    assert HEADER_SIZE == 56 and CRC_SIZE == 4 and HEADER_SIZES == {1: 52, 2: 56}
    assert encode_bitstream(GOLDEN_CODES, header) == GOLDEN_FILE
    codes, decoded = decode_bitstream(GOLDEN_FILE)
    assert decoded == header
    assert codes.dtype == np.int32 and codes.shape == (3, 2)
    np.testing.assert_array_equal(codes, GOLDEN_CODES)


def test_version_1_file_still_decodes(tmp_path):
    assert len(GOLDEN_FILE_V1) == 52 + 8 + 4
    codes, header = decode_bitstream(GOLDEN_FILE_V1, expect_model_id=MODEL_ID)
    # Version 1 had no original_sample_rate: its original_length is at the model's rate.
    assert header == _header(original_length=900, original_sample_rate=16000)
    assert header.original_sample_rate == header.sample_rate == 16000
    np.testing.assert_array_equal(codes, GOLDEN_CODES)
    (tmp_path / "old.hfc").write_bytes(GOLDEN_FILE_V1)
    np.testing.assert_array_equal(read_hfc(tmp_path / "old.hfc")[0], GOLDEN_CODES)
    # Re-encoding writes the current version, with the original rate made explicit.
    assert encode_bitstream(codes, header)[4] == 2
    assert decode_bitstream(encode_bitstream(codes, header))[1] == header


def test_original_sample_rate_defaults_to_the_model_rate():
    header = HfcHeader(16000, 320, 2, 4, 1, 1024, MODEL_ID, 3, 960)
    assert header.original_sample_rate == 16000
    with pytest.raises(BitstreamError, match="original_sample_rate"):
        _header(original_sample_rate=0)


@pytest.mark.parametrize("codebook_size", [1024, 64, 2, 1 << 16])
@pytest.mark.parametrize(
    "frames, levels, num_levels, groups",
    [(0, 1, 1, 1), (1, 1, 1, 1), (7, 2, 4, 4), (50, 4, 4, 2), (13, 3, 8, 3)],
)
def test_round_trip_random(codebook_size, frames, levels, num_levels, groups):
    rng = np.random.default_rng(frames * 1000 + codebook_size)
    codes = rng.integers(0, codebook_size, size=(frames, levels * groups))
    codes[:1] = codebook_size - 1  # extreme values
    header = _header(
        num_groups=groups, num_levels=num_levels, levels_used=levels,
        codebook_size=codebook_size, num_frames=frames, original_length=frames * 320,
    )  # fmt: skip
    data = encode_bitstream(codes.astype(np.int32), header)
    bits = codebook_size.bit_length() - 1
    payload = -(-frames * levels * groups * bits // 8)
    assert header.payload_size == payload
    assert len(data) == HEADER_SIZE + payload + CRC_SIZE
    decoded, decoded_header = decode_bitstream(data, expect_model_id=MODEL_ID)
    assert decoded_header == header
    assert decoded.shape == (frames, levels * groups)
    np.testing.assert_array_equal(decoded, codes)


def test_ten_minutes_at_2kbps():
    frames = 50 * 600  # 16 kHz / hop 320 = 50 frames/s
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1024, size=(frames, 4), dtype=np.int32)
    header = _header(num_groups=2, num_levels=2, levels_used=2, num_frames=frames)
    assert header.bitrate == 2000.0
    start = time.perf_counter()
    data = encode_bitstream(codes, header)
    decoded, _ = decode_bitstream(data)
    elapsed = time.perf_counter() - start
    assert len(data) == 2000 * 600 // 8 + HEADER_SIZE + CRC_SIZE == 150_060
    np.testing.assert_array_equal(decoded, codes)
    assert elapsed < 1.0, f"encode + decode took {elapsed:.3f} s"


# ---------------------------------------------------------------------------- damaged input


@pytest.mark.parametrize("golden", [GOLDEN_FILE, GOLDEN_FILE_V1], ids=["v2", "v1"])
def test_every_single_byte_corruption_is_detected(golden):
    for i in range(len(golden)):
        for mask in (0xFF, *(1 << b for b in range(8))):
            damaged = bytearray(golden)
            damaged[i] ^= mask
            with pytest.raises(BitstreamError):
                decode_bitstream(bytes(damaged))


def test_payload_corruption_reports_damage():
    damaged = bytearray(GOLDEN_FILE)
    damaged[HEADER_SIZE + 2] ^= 0x10
    with pytest.raises(BitstreamError, match="damaged"):
        decode_bitstream(bytes(damaged))


@pytest.mark.parametrize("golden", [GOLDEN_FILE, GOLDEN_FILE_V1], ids=["v2", "v1"])
def test_truncation_at_every_length_is_detected(golden):
    for n in range(len(golden)):
        with pytest.raises(BitstreamError, match="truncated"):
            decode_bitstream(golden[:n])


@pytest.mark.parametrize("extra", [b"\x00", b"junk", GOLDEN_FILE])
def test_trailing_garbage_is_refused(extra):
    with pytest.raises(BitstreamError, match="trailing garbage"):
        decode_bitstream(GOLDEN_FILE + extra)


def test_foreign_file_is_refused():
    wav = b"RIFF" + struct.pack("<I4s4sIHHIIHH4sI", 36, b"WAVE", b"fmt ", 16, 1, 1, 16000,
                                32000, 2, 16, b"data", 0)  # fmt: skip
    assert len(wav) == 44
    for data in (wav, wav[:2], b"HFC0" + GOLDEN_FILE[4:], b"\x00" * 100):
        with pytest.raises(BitstreamError, match=r"not a \.hfc file"):
            decode_bitstream(data)


def test_unsupported_version_is_refused():
    body = bytearray(GOLDEN_FILE[:-4])
    body[4] = 3
    with pytest.raises(BitstreamError, match="unsupported .hfc version 3"):
        decode_bitstream(_with_crc(bytes(body)))


def test_model_id_mismatch_is_refused(tmp_path):
    with pytest.raises(BitstreamError, match="encoded with a different model"):
        decode_bitstream(GOLDEN_FILE, expect_model_id=b"\xaa" * 16)
    path = tmp_path / "x.hfc"
    write_hfc(path, GOLDEN_CODES, _header())
    with pytest.raises(BitstreamError, match="encoded with a different model"):
        read_hfc(path, expect_model_id=bytes(16))
    codes, _ = read_hfc(path, expect_model_id=MODEL_ID)
    np.testing.assert_array_equal(codes, GOLDEN_CODES)


def test_inconsistent_header_with_valid_checksum_is_refused():
    body = bytearray(GOLDEN_FILE[:-4])
    body[15] = 5  # levels_used 5 > num_levels 4
    with pytest.raises(BitstreamError, match="invalid .hfc header.*levels_used"):
        decode_bitstream(_with_crc(bytes(body)))
    body = bytearray(GOLDEN_FILE[:-4])
    body[36] = 4  # num_frames 4: payload would be 10 bytes
    with pytest.raises(BitstreamError, match="inconsistent .hfc header"):
        decode_bitstream(_with_crc(bytes(body)))


# ---------------------------------------------------------------------------- encode-side checks


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(levels_used=5), "levels_used"),
        (dict(levels_used=0), "levels_used"),
        (dict(hop=0), "hop"),
        (dict(sample_rate=0), "sample_rate"),
        (dict(num_groups=256), "num_groups"),
        (dict(codebook_size=1000), "power of two"),
        (dict(codebook_size=1), "codebook_size"),
        (dict(num_frames=-1), "num_frames"),
        (dict(original_length=-5), "original_length"),
        (dict(hop=320.0), "integer"),
        (dict(model_id=b"short"), "model_id"),
        (dict(model_id="0123456789abcdef"), "model_id"),
    ],
)
def test_invalid_header_is_refused(overrides, message):
    with pytest.raises(BitstreamError, match=message):
        _header(**overrides)


def test_header_accepts_numpy_ints():
    header = _header(num_frames=np.int64(3), hop=np.int32(320))
    assert type(header.num_frames) is int and type(header.hop) is int
    assert header == _header()


def test_encode_rejects_bad_codes():
    header = _header()
    with pytest.raises(BitstreamError, match="shape"):
        encode_bitstream(GOLDEN_CODES[:2], header)
    with pytest.raises(BitstreamError, match="shape"):
        encode_bitstream(GOLDEN_CODES.reshape(-1), header)
    with pytest.raises(BitstreamError, match="out of"):
        encode_bitstream(np.where(GOLDEN_CODES == 0, 1024, GOLDEN_CODES), header)
    with pytest.raises(BitstreamError, match="out of"):
        encode_bitstream(-GOLDEN_CODES, header)


def test_write_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "out.hfc"
    path.write_bytes(b"old contents")
    assert write_hfc(path, GOLDEN_CODES, _header()) == 68
    assert path.read_bytes() == GOLDEN_FILE
    assert os.listdir(tmp_path) == ["out.hfc"]  # no temp file left behind
    with pytest.raises(BitstreamError):
        write_hfc(path, GOLDEN_CODES + 2000, _header())
    assert path.read_bytes() == GOLDEN_FILE  # a failed write leaves the old file
    assert os.listdir(tmp_path) == ["out.hfc"]
    codes, header = read_hfc(str(path))
    assert header == _header()
    np.testing.assert_array_equal(codes, GOLDEN_CODES)
    assert dataclasses.replace(header, num_frames=0).file_size == 60


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "short.hfc"
    path.write_bytes(GOLDEN_FILE[:40])
    with pytest.raises(BitstreamError, match=r"short\.hfc: truncated \.hfc file \(40 bytes"):
        read_hfc(path)
    (tmp_path / "a.wav").write_bytes(b"RIFF" + bytes(60))
    with pytest.raises(BitstreamError, match=r"a\.wav: not a \.hfc file"):
        read_hfc(tmp_path / "a.wav")
    with pytest.raises(FileNotFoundError, match=r"no such file: .*missing\.hfc"):
        read_hfc(tmp_path / "missing.hfc")
    with pytest.raises(FileNotFoundError, match=r"cannot write .*nodir.x\.hfc: no such directory"):
        write_hfc(tmp_path / "nodir" / "x.hfc", GOLDEN_CODES, _header())
    assert sorted(os.listdir(tmp_path)) == ["a.wav", "short.hfc"]
