"""Objective evaluation of a codec: PESQ, STOI, ViSQOL, mel distance, SI-SDR, codebook usage.

Metric functions take 1-D numpy float arrays of equal length (reference first) at a sample rate:

* :func:`pesq_wb` wide-band PESQ (ITU-T P.862.2, ``pesq`` package; 1.04..4.64). Input is resampled
  to 16 kHz with soxr (librosa's ``res_type="soxr_hq"``: band-limited, rate-exact; never an FFT
  resample to a sample count).
* :func:`stoi` short-time objective intelligibility (``pystoi``; 0..1, it resamples to 10 kHz).
* :func:`visqol_speech` ViSQOL v3 speech mode with the deep-lattice mapper (``visqol-python
  [lattice]``; MOS-LQO 1..~4.7) at 16 kHz. The polynomial fallback over-predicts on degraded
  speech, so without the lattice runtime this returns NaN rather than a different scale.
* :func:`log_mel_l1` mean absolute difference of natural-log mel spectrograms (80 mels,
  n_fft 1024, hop 256, Hann 1024, :func:`hificodec_jax.audio.spectral.mel_spectrogram`); 0 is
  equal. Named apart from training's ``eval/mel_distance``, the reference's training mel loss
  at the model's own STFT settings.
  ``loudness_normalize=True`` first scales each signal to the same RMS (-20 dBFS; RMS, not LUFS),
  so a pure gain change costs nothing.
* :func:`si_sdr` scale-invariant SDR in dB (zero-mean signals by default).

The three optional packages are imported on first use; when one is not installed its metric
returns NaN with one warning per process, and an installed one that fails raises (a broken
package must not read as a missing one). :func:`evaluate` runs a codec over files or arrays,
scores every clip and aggregates; :func:`write_report` writes ``.json`` and ``.csv``; :func:`format_table`
renders the console summary.
"""

from __future__ import annotations

import csv
import functools
import importlib
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from hificodec_jax.audio.audio_io import load_audio, resample
from hificodec_jax.models.codec import non_finite_message
from hificodec_jax.models.quantizer import codebook_perplexity

_WARNED: set[str] = set()  # optional packages already reported missing
_LOUDNESS_RMS = 0.1  # -20 dBFS, target RMS of log_mel_l1(loudness_normalize=True)
_MEL = {"n_fft": 1024, "num_mels": 80, "hop_size": 256, "win_size": 1024}


def _optional(module: str, purpose: str):
    """``import module``, or None when it is not installed (warning once per process that
    ``purpose`` will be NaN); an installed module that fails to import raises."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise  # the package is there but something it needs is not
        if module not in _WARNED:
            _WARNED.add(module)
            hint = "pip install pesq pystoi 'visqol-python[lattice]' (the package's [eval] extra)"
            warnings.warn(f"{purpose} needs {module!r} ({e}); returning NaN. {hint}", stacklevel=3)
        return None


def _pair(ref, deg) -> tuple[np.ndarray, np.ndarray]:
    ref, deg = np.asarray(ref, np.float64), np.asarray(deg, np.float64)
    if ref.ndim != 1 or deg.ndim != 1:
        raise ValueError(f"expected 1-D signals, got shapes {ref.shape} and {deg.shape}")
    if ref.shape != deg.shape:
        raise ValueError(f"ref and deg lengths differ: {ref.size} vs {deg.size} samples")
    for x, what in ((ref, "ref"), (deg, "deg")):
        if message := non_finite_message(x, what):
            raise ValueError(message)
    return ref, deg


def pesq_wb(ref, deg, sr: int) -> float:
    """Wide-band PESQ MOS-LQO at 16 kHz (NaN: ``pesq`` missing, or no speech in ``ref``)."""
    ref, deg = _pair(ref, deg)
    pesq = _optional("pesq", "pesq_wb")
    if pesq is None:
        return math.nan
    ref, deg = resample(ref, sr, 16000), resample(deg, sr, 16000)
    try:
        return float(pesq.pesq(16000, ref, deg, "wb"))
    except pesq.NoUtterancesError:
        warnings.warn("pesq_wb: no utterances detected; returning NaN", stacklevel=2)
        return math.nan


def stoi(ref, deg, sr: int) -> float:
    """STOI (classic, not extended) in [0, 1]; NaN when ``pystoi`` is missing."""
    ref, deg = _pair(ref, deg)
    pystoi = _optional("pystoi", "stoi")
    return math.nan if pystoi is None else float(pystoi.stoi(ref, deg, sr, extended=False))


@functools.lru_cache(maxsize=1)
def _visqol_api():
    """A speech-mode, lattice-mapper ViSQOL instance (None when unavailable)."""
    visqol = _optional("visqol", "visqol_speech")
    if visqol is None or _optional("ai_edge_litert.interpreter", "visqol_speech") is None:
        return None
    api = visqol.VisqolApi()
    api.create(mode="speech", use_lattice_model=True)
    return api


def visqol_speech(ref, deg, sr: int) -> float:
    """ViSQOL v3 speech-mode MOS-LQO (lattice mapper) at 16 kHz; NaN when unavailable."""
    ref, deg = _pair(ref, deg)
    api = _visqol_api()
    if api is None:
        return math.nan
    ref, deg = resample(ref, sr, 16000), resample(deg, sr, 16000)
    return float(api.measure_from_arrays(ref, deg, 16000).moslqo)


def log_mel_l1(ref, deg, sr: int, *, loudness_normalize: bool) -> float:
    """Mean L1 between natural-log mel spectrograms (80 mels, n_fft 1024, hop 256).

    With ``loudness_normalize`` both signals are first scaled to an RMS of 0.1 (-20 dBFS; plain
    RMS over the whole clip, no LUFS weighting or gating); silent signals are left as they are.
    """
    import jax.numpy as jnp

    from hificodec_jax.audio.spectral import mel_spectrogram

    ref, deg = _pair(ref, deg)
    if loudness_normalize:
        g = [_LOUDNESS_RMS / r if (r := np.sqrt(np.mean(x**2))) > 1e-8 else 1.0 for x in (ref, deg)]
        ref, deg = ref * g[0], deg * g[1]
    wav = jnp.asarray(np.stack([ref, deg]), jnp.float32)
    mel = np.asarray(mel_spectrogram(wav, sample_rate=sr, **_MEL))
    return float(np.mean(np.abs(mel[0] - mel[1])))


def si_sdr(ref, deg, *, zero_mean: bool = True) -> float:
    """Scale-invariant SDR (dB): ``10 log10(|a ref|^2 / |deg - a ref|^2)``, ``a = <deg,ref>/|ref|^2``.

    Computed in float64. The residual energy is floored at ``1e-30 |a ref|^2``, so identical
    signals give +300 dB rather than inf; a silent (or constant, with ``zero_mean``) ``ref``
    gives NaN.
    """
    ref, deg = _pair(ref, deg)
    if zero_mean:
        ref, deg = ref - ref.mean(), deg - deg.mean()
    energy = np.dot(ref, ref)
    if energy == 0.0:
        return math.nan
    target = (np.dot(deg, ref) / energy) * ref
    noise = deg - target
    signal = np.dot(target, target)
    return float(10.0 * np.log10(signal / max(np.dot(noise, noise), 1e-30 * signal, 1e-300)))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
    "pesq_wb": pesq_wb,
    "stoi": stoi,
    "visqol_speech": visqol_speech,
    "log_mel_l1": functools.partial(log_mel_l1, loudness_normalize=False),
    "log_mel_l1_norm": functools.partial(log_mel_l1, loudness_normalize=True),
    "si_sdr": lambda ref, deg, sr: si_sdr(ref, deg),
}


def _inputs(files_or_arrays, sample_rate: int):
    """(name, wav [T] float32) pairs from paths, arrays or a name -> path/array mapping."""
    is_map = isinstance(files_or_arrays, Mapping)
    for key, x in files_or_arrays.items() if is_map else enumerate(files_or_arrays):
        path = isinstance(x, str | os.PathLike)
        name = str(key) if is_map else str(x) if path else f"array_{key}"
        x = load_audio(x, sample_rate) if path else np.asarray(x, np.float32)
        if x.ndim != 1:
            raise ValueError(f"{name}: arrays must be mono [T], got shape {x.shape}")
        yield name, x


def _stats(values) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": math.nan, "median": math.nan, "count": 0}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "count": int(v.size)}


def evaluate(
    codec,
    variables,
    files_or_arrays: Sequence | Mapping,
    *,
    sample_rate: int,
    num_levels: int | None = None,
    progress: bool = True,
    metrics: Sequence[str] | None = None,
    bucket_seconds: float = 1.0,
    config=None,
) -> dict:
    """Encode + decode every clip and score it against its input; returns a JSON-able dict.

    ``files_or_arrays``: audio paths (mono mix, resampled to ``sample_rate``), 1-D arrays at
    ``sample_rate``, or a ``{name: path_or_array}`` mapping. Clips are zero-padded to a multiple of
    ``bucket_seconds`` (one compile per bucket), coded with their true lengths (the codec masks
    the padding) and scored on their first ``(T // hop) * hop`` samples. ``metrics``: names from
    :data:`METRICS` (default all). ``config`` (optional) is only checked against
    ``sample_rate``; the bitrate is :meth:`Codec.bitrate`.

    Returns ``{"sample_rate", "num_levels", "bitrate_bps", "num_files", "total_seconds",
    "metrics", "files": [row, ...], "aggregate": {metric: {"mean", "median", "count"}},
    "codebooks": {"codebook_size", "counts" [L*G][K], "used" [L*G], "usage" [L*G],
    "perplexity" [L*G]}, "errors": [{"name", "metric", "error"}, ...]}``; rows are ``{"name",
    "seconds", <metric>: float, ...}``. Codebook statistics pool every clip's valid frames;
    perplexity is ``exp(entropy)`` of that histogram. A metric that raises on a clip scores NaN
    there and is reported: a warning, an entry in ``errors`` and a line in :func:`format_table`.
    """
    import jax

    names = list(METRICS) if metrics is None else list(metrics)
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    q, hop = codec.quantizer, codec.hop
    levels = q.check_levels(num_levels)
    if config is not None and config.audio.sample_rate != sample_rate:
        raise ValueError(f"config rate {config.audio.sample_rate} != {sample_rate}")

    def roundtrip(variables, wav, lengths):
        codes = codec.apply(variables, wav, lengths, method="encode", num_levels=levels)
        return codes, codec.apply(variables, codes, lengths // hop, method="decode")

    roundtrip = jax.jit(roundtrip)
    bucket = max(hop, int(math.ceil(bucket_seconds * sample_rate / hop)) * hop)
    counts = np.zeros((levels * q.num_groups, q.codebook_size), np.int64)
    rows, errors = [], []
    items = _inputs(files_or_arrays, sample_rate)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="evaluate", unit="clip", total=len(files_or_arrays))
    for name, wav in items:
        t = wav.shape[0]
        if t < hop:
            raise ValueError(f"{name}: {t} samples is shorter than one hop ({hop})")
        padded = np.zeros((1, -(-t // bucket) * bucket), np.float32)
        padded[0, :t] = wav
        codes, wav_hat = roundtrip(variables, padded, np.array([t], np.int32))
        frames = t // hop
        codes = np.asarray(codes[0, :frames])
        for s in range(codes.shape[1]):
            counts[s] += np.bincount(codes[:, s], minlength=q.codebook_size)
        ref, deg = wav[: frames * hop], np.asarray(wav_hat[0, : frames * hop], np.float32)
        row = {"name": name, "seconds": t / sample_rate}
        for m in names:
            try:
                row[m] = METRICS[m](ref, deg, sample_rate)
            except Exception as e:  # one bad clip must not end a long run
                warnings.warn(f"{m} failed on {name}: {e!r}; NaN", stacklevel=2)
                errors.append({"name": name, "metric": m, "error": repr(e)})
                row[m] = math.nan
        rows.append(row)
    used = (counts > 0).sum(axis=1)
    return {
        "sample_rate": int(sample_rate),
        "num_levels": levels,
        "bitrate_bps": float(codec.bitrate(sample_rate, levels)),
        "num_files": len(rows),
        "total_seconds": float(sum(r["seconds"] for r in rows)),
        "metrics": names,
        "files": rows,
        "aggregate": {m: _stats(r[m] for r in rows) for m in names},
        "codebooks": {
            "codebook_size": int(q.codebook_size),
            "counts": counts.tolist(),
            "used": used.tolist(),
            "usage": (used / q.codebook_size).tolist(),
            "perplexity": codebook_perplexity(counts).tolist(),
        },
        "errors": errors,
    }


def _seconds_stats(result: dict) -> dict[str, float]:
    """Mean and median clip duration (the seconds column of the mean / median rows)."""
    secs = np.array([r["seconds"] for r in result["files"]], np.float64)
    if not secs.size:
        return {"mean": 0.0, "median": 0.0}
    return {"mean": float(secs.mean()), "median": float(np.median(secs))}


def write_report(result: dict, out_prefix: str | os.PathLike) -> tuple[Path, Path]:
    """``<prefix>.json`` (the whole result, NaN as null) and ``<prefix>.csv`` (one row per clip,
    then ``mean`` and ``median`` rows, whose seconds are the clips' mean and median duration,
    and a ``total`` row; NaN as empty cells). Returns both paths."""
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = Path(f"{prefix}.json"), Path(f"{prefix}.csv")
    strict = json.loads(json.dumps(result), parse_constant=lambda _: None)  # NaN -> null
    json_path.write_text(json.dumps(strict, indent=1) + "\n")
    names = result["metrics"]

    def cell(v):
        return "" if isinstance(v, float) and not math.isfinite(v) else v

    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "seconds", *names])
        for r in result["files"]:
            w.writerow([r["name"], f"{r['seconds']:.3f}", *(cell(r[m]) for m in names)])
        agg = result["aggregate"]
        secs = _seconds_stats(result)
        for stat in ("mean", "median"):
            w.writerow([stat, f"{secs[stat]:.3f}", *(cell(agg[m][stat]) for m in names)])
        w.writerow(["total", f"{result['total_seconds']:.3f}", *([""] * len(names))])
    return json_path, csv_path


def format_table(result: dict) -> str:
    """A fixed-width console table: one line per clip, mean/median lines, bitrate, codebooks."""
    names = result["metrics"]
    width = max([8, *(len(m) for m in names)])
    label = min(40, max([6, *(len(Path(r["name"]).name) for r in result["files"])]))

    def line(name, secs, values):
        vals = "".join(f" {'nan' if not math.isfinite(v) else f'{v:.3f}':>{width}}" for v in values)
        return f"{name[-label:]:<{label}} {secs:>7.2f}{vals}"

    out = [f"{'clip':<{label}} {'seconds':>7}" + "".join(f" {m:>{width}}" for m in names)]
    out += [
        line(Path(r["name"]).name, r["seconds"], [r[m] for m in names]) for r in result["files"]
    ]
    out.append("-" * len(out[0]))
    secs = _seconds_stats(result)
    for stat in ("mean", "median"):
        values = [result["aggregate"][m][stat] for m in names]
        out.append(line(stat, secs[stat], values))
    out.append(f"{'total':<{label}} {result['total_seconds']:>7.2f}")
    cb = result["codebooks"]
    usage, ppl = (
        " ".join(f"{u:.0%}" for u in cb["usage"]),
        " ".join(f"{p:.1f}" for p in cb["perplexity"]),
    )
    rate = f"{result['bitrate_bps'] / 1000:.2f} kbps ({result['num_levels']} levels)"
    out.append(f"{rate}; codebook usage {usage}; perplexity {ppl} of {cb['codebook_size']}")
    errors = result.get("errors", [])
    if errors:
        out.append(f"{len(errors)} METRIC ERRORS (scored NaN):")
        out += [f"  {e['metric']} on {e['name']}: {e['error']}" for e in errors]
    return "\n".join(out)
