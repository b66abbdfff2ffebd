"""The ``.hfc`` bitstream: HiFi-Codec codes on disk.

A ``.hfc`` file (format version 2) is a fixed 56-byte header, the bit-packed codes, then a
CRC32.  All integers are little-endian and unsigned; there is no padding between fields.

======  ====  ====  =====================  ===================================================
offset  size  type  field                  meaning
======  ====  ====  =====================  ===================================================
0       4     a4    magic                  ``b"HFC1"``
4       1     u8    version                format version, ``2``
5       4     u32   sample_rate            the model's rate (Hz) the codes are at, > 0
9       4     u32   hop                    samples per frame, > 0
13      1     u8    num_groups (G)         codebook groups per level, 1..255
14      1     u8    num_levels (R)         residual levels the model has, 1..255
15      1     u8    levels_used (L)        residual levels stored, 1..R
16      4     u32   codebook_size (K)      entries per codebook: a power of two, >= 2
20      16    a16   model_id               opaque id of the weights (e.g. sha256(weights)[:16])
36      8     u64   num_frames (F)         frames stored, >= 0
44      8     u64   original_length        samples of the input, at ``original_sample_rate``
52      4     u32   original_sample_rate   the input's own rate (Hz), > 0
56      P     bits  payload                ``F * L * G`` codes of ``b = log2(K)`` bits each
56+P    4     u32   crc32                  ``zlib.crc32`` of bytes ``[0, 56 + P)``
======  ====  ====  =====================  ===================================================

Version 1 (still read) is the same without ``original_sample_rate``: a 52-byte header whose
``original_length`` counts samples at ``sample_rate``; it reads as
``original_sample_rate == sample_rate``.

Payload: ``P = ceil(F * L * G * b / 8)`` bytes.  The codes array ``[F, L*G]`` (streams in
level-major order ``r0g0, r0g1, ..., r1g0, ...``) is read frame-major (C order) and each code is
written as ``b`` bits, most significant bit first, into a continuous big-endian bit string;
the last byte is padded with zero bits.  The file is exactly ``56 + P + 4`` bytes long.
Example: codes ``[1, 2]`` with ``b = 2`` pack to the single byte ``0b01100000``.

Bit rate: ``L * G * b * sample_rate / hop`` bit/s (16 kHz, hop 320, 4 streams, K = 1024:
2000 bit/s).  Every malformed input raises :class:`BitstreamError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import os
import struct
import tempfile
import zlib

import numpy as np

__all__ = [
    "BitstreamError", "CRC_SIZE", "HEADER_SIZE", "HEADER_SIZES", "HfcHeader", "MAGIC", "VERSION",
    "decode_bitstream", "encode_bitstream", "pack_codes", "read_hfc", "unpack_codes", "write_hfc",
]  # fmt: skip

MAGIC = b"HFC1"
VERSION = 2
# magic, version, then HfcHeader's fields in order; version 1 lacks original_sample_rate.
_HEADERS = {1: struct.Struct("<4sBIIBBBI16sQQ"), 2: struct.Struct("<4sBIIBBBI16sQQI")}
HEADER_SIZES = {v: h.size for v, h in _HEADERS.items()}  # {1: 52, 2: 56}
HEADER_SIZE = HEADER_SIZES[VERSION]
CRC_SIZE = 4
_CRC = struct.Struct("<I")


class BitstreamError(ValueError):
    """A ``.hfc`` stream (or the codes/header to write) is malformed."""


_U8, _U32, _U64 = 2**8 - 1, 2**32 - 1, 2**64 - 1
_LIMITS = {  # field: (min, max); levels_used is also checked against num_levels
    "sample_rate": (1, _U32), "hop": (1, _U32), "num_groups": (1, _U8), "num_levels": (1, _U8),
    "levels_used": (1, _U8), "codebook_size": (2, _U32), "num_frames": (0, _U64),
    "original_length": (0, _U64), "original_sample_rate": (1, _U32),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class HfcHeader:
    """Everything needed to decode the payload; validated on construction."""

    sample_rate: int
    hop: int
    num_groups: int
    num_levels: int  # the model's R
    levels_used: int
    codebook_size: int
    model_id: bytes  # 16 bytes
    num_frames: int
    original_length: int  # samples of the input, at original_sample_rate
    original_sample_rate: int | None = None  # the input's rate; None: sample_rate

    def __post_init__(self) -> None:
        if self.original_sample_rate is None:
            object.__setattr__(self, "original_sample_rate", self.sample_rate)
        for name, (lo, hi) in _LIMITS.items():
            try:
                value = operator.index(getattr(self, name))
            except TypeError:
                raise BitstreamError(f"header field {name} must be an integer") from None
            if not lo <= value <= hi:
                raise BitstreamError(f"header field {name}={value} is outside [{lo}, {hi}]")
            object.__setattr__(self, name, int(value))
        if self.levels_used > self.num_levels:
            raise BitstreamError(f"levels_used={self.levels_used} > num_levels={self.num_levels}")
        if self.codebook_size & (self.codebook_size - 1):
            raise BitstreamError(f"codebook_size={self.codebook_size} is not a power of two")
        if not isinstance(self.model_id, (bytes, bytearray)) or len(self.model_id) != 16:
            raise BitstreamError(f"model_id must be 16 bytes, got {self.model_id!r}")
        object.__setattr__(self, "model_id", bytes(self.model_id))

    @property
    def bits_per_code(self) -> int:
        return self.codebook_size.bit_length() - 1

    @property
    def num_streams(self) -> int:
        return self.levels_used * self.num_groups

    @property
    def payload_size(self) -> int:
        return -(-self.num_frames * self.num_streams * self.bits_per_code // 8)

    @property
    def file_size(self) -> int:
        """Bytes of the file in the current format version."""
        return HEADER_SIZE + self.payload_size + CRC_SIZE

    @property
    def bitrate(self) -> float:
        """Bits per second of audio carried by the payload."""
        return self.num_streams * self.bits_per_code * self.sample_rate / self.hop

    def to_bytes(self) -> bytes:
        """The header in the current format version."""
        return _HEADERS[VERSION].pack(MAGIC, VERSION, *dataclasses.astuple(self))


def _check_bits(bits: int) -> int:
    bits = operator.index(bits)
    if not 1 <= bits <= 31:
        raise BitstreamError(f"bits per code must be in [1, 31], got {bits}")
    return bits


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Packs integer codes (any shape, read in C order) at ``bits`` bits each, MSB first."""
    bits = _check_bits(bits)
    codes = np.asarray(codes)
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise BitstreamError(f"codes must be integers, got dtype {codes.dtype}")
    flat = codes.reshape(-1).astype(np.int64, copy=False)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << bits):
        raise BitstreamError(f"codes out of [0, {1 << bits}): min {flat.min()}, max {flat.max()}")
    # Big-endian 32-bit words -> bit matrix [N, 32]; keep the low `bits` columns.
    words = flat.astype(">u4").view(np.uint8).reshape(-1, 4)
    bit_matrix = np.unpackbits(words, axis=1)[:, 32 - bits :]
    return np.packbits(bit_matrix.reshape(-1)).tobytes()


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes` (``data`` exactly ``ceil(count * bits / 8)`` bytes,
    zero padding bits): ``count`` codes as a 1-D int32 array."""
    bits = _check_bits(bits)
    count = operator.index(count)
    if count < 0:
        raise BitstreamError(f"count must be >= 0, got {count}")
    total_bits = count * bits
    if len(data) != -(-total_bits // 8):
        raise BitstreamError(f"{count} codes of {bits} bits need {-(-total_bits // 8)} bytes")
    all_bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if all_bits[total_bits:].any():
        raise BitstreamError("nonzero padding bits after the last code")
    bit_matrix = np.zeros((count, 32), dtype=np.uint8)
    bit_matrix[:, 32 - bits :] = all_bits[:total_bits].reshape(count, bits)
    words = np.packbits(bit_matrix, axis=1).view(">u4").reshape(count)
    return words.astype(np.int32)


def encode_bitstream(codes: np.ndarray, header: HfcHeader) -> bytes:
    """Serialises ``codes`` ``[num_frames, levels_used * num_groups]`` under ``header``."""
    codes = np.asarray(codes)
    expected = (header.num_frames, header.num_streams)
    if codes.shape != expected:
        raise BitstreamError(f"codes have shape {codes.shape}, header expects {expected} (F, L*G)")
    body = header.to_bytes() + pack_codes(codes, header.bits_per_code)
    return body + _CRC.pack(zlib.crc32(body))


def _crc_ok(data: bytes, end: int) -> bool:
    """Whether bytes ``[end - 4, end)`` are the CRC32 of bytes ``[0, end - 4)``."""
    return _CRC.unpack_from(data, end - CRC_SIZE)[0] == zlib.crc32(data[: end - CRC_SIZE])


def decode_bitstream(
    data: bytes, *, expect_model_id: bytes | None = None
) -> tuple[np.ndarray, HfcHeader]:
    """Parses a ``.hfc`` stream (format version 1 or 2) into ``(codes [F, L*G] int32, header)``."""
    data = bytes(data)
    n = len(data)
    if not MAGIC.startswith(data[:4]):
        raise BitstreamError(f"not a .hfc file (magic {data[:4]!r}, expected {MAGIC!r})")
    version = data[4] if n > 4 else VERSION
    if version not in _HEADERS:
        raise BitstreamError(
            f"unsupported .hfc version {version} (this reader handles {sorted(_HEADERS)})"
        )
    layout = _HEADERS[version]
    if n < layout.size + CRC_SIZE:
        raise BitstreamError(f"truncated .hfc file ({n} bytes, less than header + checksum)")
    fields = layout.unpack_from(data)
    crc_ok = _crc_ok(data, n)
    try:
        header = HfcHeader(*fields[2:])
    except BitstreamError as e:
        if crc_ok:
            raise BitstreamError(f"invalid .hfc header: {e}") from None
        raise BitstreamError(f"damaged .hfc file (checksum mismatch; {e})") from None
    total = layout.size + header.payload_size + CRC_SIZE
    if n != total:
        if crc_ok:
            raise BitstreamError(f"inconsistent .hfc header: implies {total} bytes, file has {n}")
        if n < total:
            raise BitstreamError(f"truncated .hfc file ({n} bytes, header implies {total})")
        if _crc_ok(data, total):
            raise BitstreamError(f"trailing garbage: {n - total} bytes after the .hfc stream")
        raise BitstreamError(f"damaged .hfc file (checksum mismatch, {n} bytes, expected {total})")
    if not crc_ok:
        raise BitstreamError("damaged .hfc file (checksum mismatch)")
    if expect_model_id is not None and header.model_id != bytes(expect_model_id):
        got, want = header.model_id.hex(), bytes(expect_model_id).hex()
        raise BitstreamError(f"encoded with a different model (model_id {got}, expected {want})")
    F, S = header.num_frames, header.num_streams
    codes = unpack_codes(data[layout.size : total - CRC_SIZE], F * S, header.bits_per_code)
    return codes.reshape(F, S), header


def write_hfc(path: str | os.PathLike, codes: np.ndarray, header: HfcHeader) -> int:
    """Writes a ``.hfc`` file atomically (temp file + ``os.replace``); returns bytes written.

    Errors name ``path`` (never the temporary file); the directory must exist.
    """
    data = encode_bitstream(codes, header)
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: no such directory {directory}")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".hfc.tmp")
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp creates 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return len(data)


def read_hfc(
    path: str | os.PathLike, *, expect_model_id: bytes | None = None
) -> tuple[np.ndarray, HfcHeader]:
    """Reads and decodes a ``.hfc`` file (see :func:`decode_bitstream`); errors name ``path``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except OSError as e:
        raise OSError(e.errno, f"cannot read {path}: {e.strerror}") from None
    try:
        return decode_bitstream(data, expect_model_id=expect_model_id)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None
