"""Tests for hificodec_jax.reference.pth: the torch-free, safe PyTorch checkpoint reader.

Fixtures in tests/data/torch_pth/ were written by torch.save (see the README that came with
them): the same object in zip and legacy format, its expected contents (expected.npz), and a
zip checkpoint whose pickle would call os.system. Smaller hand-made pickles cover the rest.
"""

import collections
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from hificodec_jax.reference.pth import CheckpointFormatError, UnsafeCheckpointError, load_pth

DATA = Path(__file__).parent / "data" / "torch_pth"
GOOD = ["small_zip.pth", "small_legacy.pth"]
PWNED = Path("/tmp/hfc_pwned")
KEY_ORDER = {
    "generator": [
        "conv_pre.bias",
        "conv_pre.weight_g",
        "conv_pre.weight_v",
        "ups.0.bias",
        "ups.0.weight_g",
        "ups.0.weight_v",
    ],
    "encoder": [
        "conv_post.weight",
        "conv_post.bias",
        "transposed",
        "view_a",
        "view_b",
        "scalar",
        "normalize.0.weight",
    ],
    "quantizer": ["quantizer_modules.0.embedding.weight", "codes"],
}


def _bits(a: np.ndarray) -> np.ndarray:
    """The raw bytes of an array (works for 0-d arrays too)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _flatten(ckpt: dict) -> dict:
    out = {}
    for k, v in ckpt.items():
        if isinstance(v, dict):
            out.update({f"{k}/{k2}": v2 for k2, v2 in v.items()})
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- good files


@pytest.mark.parametrize("name", GOOD)
def test_matches_expected_bitwise(name):
    ckpt = load_pth(DATA / name)
    expected = np.load(DATA / "expected.npz")
    assert type(ckpt) is dict
    assert list(ckpt) == ["generator", "encoder", "quantizer", "steps"]
    for group, keys in KEY_ORDER.items():
        assert type(ckpt[group]) is collections.OrderedDict
        assert list(ckpt[group]) == keys
    assert type(ckpt["steps"]) is int and ckpt["steps"] == 1234
    flat = _flatten(ckpt)
    assert list(flat) == list(expected.files)
    for key in expected.files:
        got, want = np.asarray(flat[key]), expected[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert np.array_equal(_bits(got), _bits(want)), key
    for key, arr in flat.items():
        if key != "steps":
            assert isinstance(arr, np.ndarray) and arr.flags.c_contiguous and arr.flags.writeable


@pytest.mark.parametrize("name", GOOD)
def test_views_values_and_copies(name):
    enc = load_pth(str(DATA / name))["encoder"]
    assert enc["conv_post.weight"].dtype == np.float16
    assert enc["conv_post.bias"].dtype == np.float32
    np.testing.assert_array_equal(
        enc["conv_post.bias"],
        np.array([1.5, -2.25, 0.10009765625, 3.00405527e38, -9.9945068e-4, 7.0], np.float32),
    )
    assert enc["scalar"].shape == () and enc["scalar"] == 0.125
    # view_a = storage[3:23] as (4, 5); view_b[i, j] = storage[5 + 2 i + 7 j]: they overlap.
    storage = np.zeros(40, np.float32)
    storage[3:23] = enc["view_a"].reshape(-1)
    for i in range(3):
        for j in range(4):
            if 3 <= 5 + 2 * i + 7 * j < 23:
                assert enc["view_b"][i, j] == storage[5 + 2 * i + 7 * j]
    assert not np.shares_memory(enc["view_a"], enc["view_b"])
    codes = load_pth(DATA / name)["quantizer"]["codes"]
    assert codes.dtype == np.int64 and -7 in codes and 2**40 in codes


@pytest.mark.parametrize("name", GOOD)
def test_bfloat16_as_ml_dtypes(name):
    default = load_pth(DATA / name)["encoder"]["conv_post.bias"]
    bf16 = load_pth(DATA / name, bfloat16_as="ml_dtypes")["encoder"]["conv_post.bias"]
    want = np.load(DATA / "expected.npz")["encoder/conv_post.bias"]
    assert bf16.dtype == ml_dtypes.bfloat16 and bf16.shape == (6,)
    np.testing.assert_array_equal(
        bf16.view(np.uint16), (want.view(np.uint32) >> 16).astype(np.uint16)
    )
    assert np.array_equal(bf16.astype(np.float32).view(np.uint32), want.view(np.uint32))
    assert not np.any(default.view(np.uint32) & 0xFFFF)  # float32 holding exact bf16 values
    with pytest.raises(ValueError, match="bfloat16_as"):
        load_pth(DATA / name, bfloat16_as="float16")


# ---------------------------------------------------------------- unsafe / malformed files


def test_malicious_is_refused_before_anything_runs():
    PWNED.unlink(missing_ok=True)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system") as info:
        load_pth(DATA / "malicious.pth")
    assert isinstance(info.value, pickle.UnpicklingError)
    assert "malicious.pth" in str(info.value)
    assert not PWNED.exists()


@pytest.mark.parametrize("name", GOOD)
@pytest.mark.parametrize("fraction", [0.0005, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path, name, fraction):
    raw = (DATA / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(CheckpointFormatError, match=name):
        load_pth(cut)


@pytest.mark.parametrize("name", GOOD)
def test_every_truncation_fails_cleanly(tmp_path, name):
    raw = (DATA / name).read_bytes()
    cut = tmp_path / name
    for n in [*range(0, len(raw), 11), len(raw) - 1]:
        cut.write_bytes(raw[:n])
        with pytest.raises(CheckpointFormatError):
            load_pth(cut)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world, not a checkpoint" * 10, bytes(range(256)) * 4, pickle.dumps({"a": 1})],
    ids=["empty", "text", "binary", "plain_pickle"],
)
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match="garbage.pth"):
        load_pth(path)


def _rewrite_zip(src: Path, dst: Path, edit) -> None:
    """Copies a zip checkpoint, passing each (name, bytes) through edit (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


def test_missing_storage_entry(tmp_path):
    dst = tmp_path / "missing.pth"
    _rewrite_zip(DATA / "small_zip.pth", dst, lambda n, d: None if n.endswith("data/9") else d)
    with pytest.raises(CheckpointFormatError, match=r"missing storage entry 'small_zip/data/9'"):
        load_pth(dst)


def test_storage_too_short_for_view(tmp_path):
    # data/9 is the 40-element storage shared by view_a (needs 23) and view_b (needs 31).
    dst = tmp_path / "short.pth"
    _rewrite_zip(DATA / "small_zip.pth", dst, lambda n, d: d[:100] if n.endswith("data/9") else d)
    with pytest.raises(CheckpointFormatError, match="outside the storage of 25 elements"):
        load_pth(dst)


# ---------------------------------------------------------------- hand-made pickles


def _u(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(n: int) -> bytes:
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)  # BININT
    return b"\x8a\x09" + n.to_bytes(9, "little", signed=True)  # LONG1


def _ints(xs) -> bytes:
    return b"(" + b"".join(_i(x) for x in xs) + b"t"


def _tensor_pickle(
    storage="FloatStorage", numel=4, offset=0, size=(4,), stride=(1,), rebuild="_rebuild_tensor_v2"
) -> bytes:
    """Protocol-2 pickle of {'w': tensor} as torch.save writes it (zip-format persistent id)."""
    pid = b"(" + _u("storage") + f"ctorch\n{storage}\n".encode() + _u("0") + _u("cpu")
    args = pid + _i(numel) + b"tQ" + _i(offset) + _ints(size) + _ints(stride)
    if rebuild == "_rebuild_tensor_v2":
        args += b"\x89ccollections\nOrderedDict\n)R"  # requires_grad, backward_hooks
    return b"\x80\x02}(" + _u("w") + f"ctorch._utils\n{rebuild}\n(".encode() + args + b"tRu."


def _write_zip(path: Path, pkl: bytes, storages=None, byteorder=b"little") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("crafted/data.pkl", pkl)
        zf.writestr("crafted/byteorder", byteorder)
        for key, data in (storages or {}).items():
            zf.writestr(f"crafted/data/{key}", data)
    return path


@pytest.mark.parametrize(
    "storage, dtype",
    [
        ("DoubleStorage", np.float64),
        ("LongStorage", np.int64),
        ("IntStorage", np.int32),
        ("ShortStorage", np.int16),
        ("CharStorage", np.int8),
        ("ByteStorage", np.uint8),
    ],
)
@pytest.mark.parametrize("byteorder", [b"little", b"big"])
def test_storage_dtypes_and_byteorder(tmp_path, storage, dtype, byteorder):
    values = np.array([0, 1, -2, 100, 7, -128]).astype(dtype)
    raw = values.astype(np.dtype(dtype).newbyteorder("<" if byteorder == b"little" else ">"))
    pkl = _tensor_pickle(storage, numel=6, offset=1, size=(2, 2), stride=(1, 2))
    got = load_pth(_write_zip(tmp_path / "t.pth", pkl, {"0": raw.tobytes()}, byteorder))["w"]
    assert got.dtype == dtype and got.dtype.isnative and got.flags.c_contiguous
    # offset 1, stride (1, 2): got[i, j] = storage[1 + i + 2 j]
    np.testing.assert_array_equal(got, [[values[1], values[3]], [values[2], values[4]]])


def test_bool_storage_and_old_rebuild_tensor(tmp_path):
    pkl = _tensor_pickle("BoolStorage", numel=4, size=(4,), rebuild="_rebuild_tensor")
    got = load_pth(_write_zip(tmp_path / "t.pth", pkl, {"0": b"\x00\x01\x00\x05"}))["w"]
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, [False, True, False, True])


def test_empty_tensor(tmp_path):
    pkl = _tensor_pickle(numel=0, size=(0, 3), stride=(3, 1))
    got = load_pth(_write_zip(tmp_path / "t.pth", pkl, {"0": b""}))["w"]
    assert got.shape == (0, 3) and got.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stride=(1000,)), "outside the storage"),
        (dict(offset=3, size=(2,)), "outside the storage"),
        (dict(stride=(2**40,)), "outside the storage"),
        (dict(offset=-1), "storage offset must be a non-negative int"),
        (dict(stride=(-1,)), "stride must be a non-negative int"),
        (dict(size=(2, 2)), "differ in rank"),
    ],
)
def test_bad_views_are_rejected(tmp_path, kwargs, message):
    pkl = _tensor_pickle(**kwargs)
    path = _write_zip(tmp_path / "t.pth", pkl, {"0": np.arange(4, dtype="<f4").tobytes()})
    with pytest.raises(CheckpointFormatError, match=message):
        load_pth(path)


@pytest.mark.parametrize(
    "pkl, name",
    [
        (b"\x80\x02cbuiltins\neval\n" + _u("1") + b"\x85R.", "builtins.eval"),
        (b"\x80\x04" + _u("os") + _u("system") + b"\x93" + _u("x") + b"\x85R.", "os.system"),
        (b"\x80\x02ctorch\nload\n.", "torch.load"),
        (b"\x80\x02ctorch._utils\n_rebuild_parameter\n.", "torch._utils._rebuild_parameter"),
    ],
)
def test_disallowed_globals(tmp_path, pkl, name):
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load global '{name}'"):
        load_pth(_write_zip(tmp_path / "t.pth", pkl))


def test_non_storage_persistent_id_is_refused(tmp_path):
    pkl = b"\x80\x02}(" + _u("w") + _u("some_id") + b"Qu."
    with pytest.raises(UnsafeCheckpointError, match="persistent id 'some_id'"):
        load_pth(_write_zip(tmp_path / "t.pth", pkl))


@pytest.mark.parametrize(
    "pkl, message",
    [
        (b"\x80\x02ctorch\nFloatStorage\n)R.", "tried to call storage type FloatStorage"),
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}b.", "tried to set the state of a _Rebuild"),
        (b"\x80\x02]q\x00h\x00a.", "self-referencing container"),  # a list holding itself
        (b"\x80\x02}(" + _u("g") + b"ctorch\nFloatStorage\nu.", "unexpected object"),
    ],
    ids=["call_storage_type", "build_on_stand_in", "cycle", "bare_type_as_value"],
)
def test_misused_allowed_globals(tmp_path, pkl, message):
    with pytest.raises(CheckpointFormatError, match=message):
        load_pth(_write_zip(tmp_path / "t.pth", pkl))


def test_state_dict_metadata_is_dropped(tmp_path):
    sd = collections.OrderedDict([("b", 1), ("a", (2.5, None, "x", [True]))])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])  # as nn.Module.state_dict()
    pkl = pickle.dumps({"generator": sd}, protocol=2)
    got = load_pth(_write_zip(tmp_path / "t.pth", pkl))["generator"]
    assert type(got) is collections.OrderedDict and list(got.items()) == list(sd.items())
    assert not hasattr(got, "_metadata")
