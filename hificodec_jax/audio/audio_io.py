"""Audio decoding shared by the input pipeline and the corpus preparation.

Files are decoded with soundfile (wav/flac/ogg, and mp3 where libsndfile supports it) with
librosa (audioread/ffmpeg) as the fallback, mixed to mono by averaging the channels and
resampled with soxr at librosa's ``res_type="soxr_hq"`` (what ``librosa.load(sr=...)`` uses, so
the data match the reference's; called directly, bit-identical, without librosa's 3 s import). No gain normalisation. Also: the deterministic
train / held-out split by stable hashing, and the checks that reject unusable audio.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import os
from collections.abc import Iterable, Sequence

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")
SILENCE_PEAK = 1e-4  # a clip whose peak |x| is below this is treated as silent


def list_audio_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    allow_empty: bool = False,
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
) -> list[str]:
    """Audio files (names ending in ``extensions``) under a directory tree (recursive), a
    single file, or a list of either.

    Returns absolute paths, sorted within each directory given (list order is kept otherwise).
    Hidden files and directories (name starting with ``.``) are ignored. Raises
    ``FileNotFoundError`` when directories were given but hold no audio (unless ``allow_empty``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = []
            for dirpath, dirnames, filenames in os.walk(p, followlinks=True):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                found.extend(
                    os.path.join(dirpath, f)
                    for f in filenames
                    if not f.startswith(".") and f.lower().endswith(extensions)
                )
            out.extend(sorted(os.path.abspath(f) for f in found))
        elif os.path.isfile(p):
            out.append(os.path.abspath(p))
        else:
            raise FileNotFoundError(f"no such audio file or directory: {p}")
    if paths and not out and not allow_empty:
        raise FileNotFoundError(f"no audio files ({', '.join(extensions)}) under {paths}")
    return out


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``[T]`` float32 resampled with soxr (high quality); unchanged when the rates match."""
    wav = np.asarray(wav, dtype=np.float32)
    if int(orig_sr) == int(target_sr) or wav.size == 0:
        return wav
    import soxr  # == librosa.resample(res_type="soxr_hq")

    out = soxr.resample(wav, int(orig_sr), int(target_sr), quality="soxr_hq")
    return np.ascontiguousarray(out, dtype=np.float32)


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """``(wav [T] float32 mono, sample_rate)`` at the file's own rate; raises if undecodable."""
    import soundfile as sf

    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)  # [T, C]
        wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as sf_error:
        if not path.lower().endswith((".mp3", ".m4a", ".opus")):
            raise
        import librosa

        try:
            wav, sr = librosa.load(path, sr=None, mono=True)
        except Exception as error:  # report both decoders' reasons
            raise RuntimeError(f"soundfile: {sf_error}; librosa: {error}") from error
    return np.ascontiguousarray(wav, dtype=np.float32), int(sr)


@functools.cache
def warm_up_soundfile() -> None:
    """Realise soundfile's C types and functions once, in the calling thread.

    soundfile binds libsndfile through cffi, which builds each C type and function object on its
    first use; on GIL builds that lazy step is not guarded against threads (python-cffi/cffi
    issue 271), so call this before threads decode (the input pipeline does). Also decodes a
    tiny in-memory WAV, so the read path's objects exist too.
    """
    import soundfile as sf

    ffi, lib = getattr(sf, "_ffi", None), getattr(sf, "_snd", None)
    if ffi is not None and lib is not None:  # soundfile's private binding, when it has one
        for name in dir(lib):
            getattr(lib, name)
        typedefs, structs, unions = ffi.list_types()
        for name in typedefs:
            ffi.typeof(name)
        for kind, names in (("struct", structs), ("union", unions)):
            for name in names:
                try:
                    ffi.sizeof(f"{kind} {name}")  # lays the struct out
                except ffi.error:  # opaque (SNDFILE)
                    pass
    buf = io.BytesIO()
    sf.write(buf, np.zeros((16, 2), np.float32), 8000, format="WAV", subtype="PCM_16")
    buf.seek(0)
    sf.read(buf, dtype="float32", always_2d=True)


def load_audio(path: str, sample_rate: int) -> np.ndarray:
    """Decode ``path``, mix to mono and resample to ``sample_rate``: ``[T]`` float32.

    Non-finite samples are left in place (resampling would smear them), for
    :func:`audio_problem` to reject.
    """
    wav, sr = read_audio(path)
    if not np.all(np.isfinite(wav)):
        return wav
    return resample(wav, sr, sample_rate)


def audio_problem(wav: np.ndarray, min_samples: int = 1) -> str | None:
    """Why ``wav`` is unusable for training (``None`` if it is fine)."""
    if wav.ndim != 1:
        return f"expected mono [T] audio, got shape {wav.shape}"
    if wav.size < max(min_samples, 1):
        return f"too short ({wav.size} samples < {max(min_samples, 1)})"
    if not np.all(np.isfinite(wav)):
        return f"non-finite samples ({int(np.sum(~np.isfinite(wav)))} of {wav.size})"
    peak = float(np.max(np.abs(wav)))
    if peak < SILENCE_PEAK:
        return f"silent (peak {peak:.2g})"
    return None


def float_to_int16(wav: np.ndarray) -> np.ndarray:
    """float [-1, 1) -> int16 PCM (x * 32768, rounded, clipped); inverse of :func:`int16_to_float`."""
    return np.clip(np.round(np.asarray(wav, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def int16_to_float(pcm: np.ndarray) -> np.ndarray:
    return np.asarray(pcm, dtype=np.float32) / np.float32(32768.0)


# ----------------------------------------------------------------------------------------------
# Deterministic held-out selection
# ----------------------------------------------------------------------------------------------


def stable_unit_hash(key: str, seed: int = 0) -> float:
    """A uniform number in ``[0, 1)`` from ``key`` and ``seed`` (SHA-1: the same on every machine)."""
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def held_out_groups(groups: Sequence[str], fraction: float, seed: int = 0) -> set[str]:
    """The groups (speakers, utterances, ...) that go to the held-out split.

    A group is held out when its stable hash is below ``fraction``: its membership never changes
    when other groups are added or removed. At least one group is held out (the lowest hash)
    and at least one kept when there are two or more groups and ``0 < fraction < 1``.
    """
    unique = sorted(set(groups))
    if fraction <= 0 or not unique:
        return set()
    if fraction >= 1:
        return set(unique)
    hashes = {g: stable_unit_hash(g, seed) for g in unique}
    held = {g for g, h in hashes.items() if h < fraction}
    if len(unique) >= 2:
        if not held:
            held = {min(unique, key=hashes.__getitem__)}
        elif len(held) == len(unique):
            held.discard(max(unique, key=hashes.__getitem__))
    return held


def file_key(path: str) -> str:
    """``parent/name`` of a file: the split key, stable when the corpus directory moves."""
    parent, name = os.path.split(os.path.abspath(path))
    return f"{os.path.basename(parent)}/{name}"


_GLOB_CHARS = ("*", "?", "[")


def expand_audio_paths(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
) -> list[tuple[str, str]]:
    """``(file, relative name)`` for each file named by ``paths`` (files, directories, globs).

    A directory contributes its files with ``extensions`` (recursive, sorted, hidden entries
    skipped), each named relative to that directory (``a/x.wav``), so outputs can mirror the
    tree; a file or a glob match is named by its base name. A file given by name is taken
    whatever its extension. Raises ``FileNotFoundError`` naming the argument when a path does
    not exist, a glob matches nothing, or a directory holds no such files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[tuple[str, str]] = []
    for p in map(os.fspath, paths):
        if not os.path.exists(p) and any(c in p for c in _GLOB_CHARS):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no files match {p!r}")
            for m in matches:
                out.extend(_expand_one(m, extensions))
        else:
            out.extend(_expand_one(p, extensions))
    return out


def _expand_one(path: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    if not os.path.isdir(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file or directory: {path}")
        return [(os.path.abspath(path), os.path.basename(path))]
    root = os.path.abspath(path)
    files = list_audio_files(root, allow_empty=True, extensions=extensions)
    if not files:
        raise FileNotFoundError(f"no files ({', '.join(extensions)}) under {path}")
    return [(f, os.path.relpath(f, root)) for f in files]
