"""Evaluation metrics on real recorded speech, and the codec evaluation report.

The speech is Debian's ``codec2-examples`` ``speech_orig_16k.wav`` (10.8 s, 16 kHz), read at
test time (``apt-get install codec2-examples``). PESQ/STOI/ViSQOL need their optional packages
(``pip install .[eval]``). Where either is absent, the tests that need it skip, except with the
``CI`` environment variable set: there they fail. A metric whose package is installed never
skips: a NaN or an error fails its test.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.signal
from helpers import config, fast_init

from hificodec_jax import build_codec
from hificodec_jax.inference import evaluation

SR = 16000
SNRS = (40, 30, 20, 10)  # dB, white noise: more noise -> lower quality
PACKAGES = {"pesq_wb": ["pesq"], "stoi": ["pystoi"], "visqol_speech": ["visqol", "ai_edge_litert"]}


def _absent(reason: str):
    """Skip, or fail under CI (``CI`` set), where an optional test input is not installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required when CI is set)")
    pytest.skip(reason)


def _speech_path() -> str | None:
    try:
        out = subprocess.run(
            ["dpkg", "-L", "codec2-examples"], capture_output=True, text=True, check=False
        ).stdout
        hits = [p for p in out.splitlines() if p.endswith("speech_orig_16k.wav")]
    except OSError:
        hits = []
    hits += glob.glob("/usr/share/codec2/**/speech_orig_16k.wav", recursive=True)
    return hits[0] if hits else None


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    path = _speech_path()
    if path is None:
        _absent("real speech absent: apt-get install codec2-examples")
    return evaluation.load_audio(path, SR).astype(np.float64)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def _at_snr(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    n = _noise(x.size, seed)
    return x + n * np.sqrt(np.sum(x**2) / np.sum(n**2) / 10 ** (snr_db / 10))


def _lowpass(x: np.ndarray, cutoff: float) -> np.ndarray:
    sos = scipy.signal.butter(8, cutoff, "low", fs=SR, output="sos")
    return scipy.signal.sosfiltfilt(sos, x)


def _need(metric: str):
    """Skip (fail under CI) when a package ``metric`` needs is not installed."""
    missing = [m for m in PACKAGES.get(metric, []) if importlib.util.find_spec(m) is None]
    if missing:
        _absent(f"{metric} needs {missing}: pip install .[eval]")


@pytest.fixture(scope="module")
def scores(speech) -> dict[str, dict[str, float]]:
    """Every metric (whose packages are installed) for identity, white noise at ``SNRS`` and a
    4 kHz low-pass."""
    names = [
        m for m in evaluation.METRICS if all(map(importlib.util.find_spec, PACKAGES.get(m, [])))
    ]
    conditions = {"identity": speech, "lowpass4k": _lowpass(speech, 4000.0)}
    conditions.update({f"snr{s}": _at_snr(speech, s) for s in SNRS})
    return {
        name: {m: evaluation.METRICS[m](speech, deg, SR) for m in names}
        for name, deg in conditions.items()
    }


def test_identity_gives_metric_maxima(scores):
    s = scores["identity"]
    assert s["log_mel_l1"] == 0.0 and s["log_mel_l1_norm"] == 0.0
    assert s["si_sdr"] > 250.0  # residual floored at 1e-30 of the signal: +300 dB
    _need("pesq_wb")
    assert s["pesq_wb"] == pytest.approx(4.644, abs=0.01)
    _need("stoi")
    assert s["stoi"] == pytest.approx(1.0, abs=1e-6)
    _need("visqol_speech")
    assert s["visqol_speech"] >= 4.5


@pytest.mark.parametrize("metric", list(evaluation.METRICS))
def test_degradations_lower_every_metric(scores, metric):
    _need(metric)
    sign = -1.0 if metric.startswith("log_mel_l1") else 1.0  # distance: lower is better
    q = {name: sign * s[metric] for name, s in scores.items()}
    assert q["lowpass4k"] < q["identity"]
    ladder = ["identity", *(f"snr{s}" for s in SNRS)]
    if metric == "visqol_speech":
        # The lattice mapper bottoms out at MOS 1.0 near 20 dB white noise and reads ~1.4 at
        # 10 dB (the python port's lattice, not our resampling): monotone only down to 20 dB.
        ladder = ladder[:-1]
        assert q["snr10"] < q["snr40"]
    values = [q[name] for name in ladder]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), (ladder, values)


def test_si_sdr_closed_form_and_scale_invariance(speech):
    ref = speech - speech.mean()
    e = _noise(ref.size, seed=3)
    e -= e.mean()
    e -= (e @ ref) / (ref @ ref) * ref  # exactly orthogonal to ref
    e *= 0.05
    for c in (1.0, 0.3, -2.5):
        expected = 10 * np.log10(c**2 * (ref @ ref) / (c**2 * (e @ e)))
        assert evaluation.si_sdr(speech, c * (ref + e)) == pytest.approx(expected, abs=1e-6)
        assert evaluation.si_sdr(c * speech, ref + e) == pytest.approx(expected, abs=1e-6)
    assert evaluation.si_sdr(speech, 0.25 * speech) > 250.0  # a scaled copy: no residual
    for snr in (0, 10, 20):
        assert abs(evaluation.si_sdr(speech, _at_snr(speech, snr, seed=7)) - snr) < 0.1
    assert math.isnan(evaluation.si_sdr(np.zeros(100), np.ones(100)))


def test_log_mel_l1_gain_and_loudness_normalization(speech):
    half = 0.5 * speech
    assert evaluation.log_mel_l1(speech, half, SR, loudness_normalize=False) == pytest.approx(
        math.log(2.0), abs=0.01
    )
    assert evaluation.log_mel_l1(speech, half, SR, loudness_normalize=True) < 1e-4


def test_pesq_resamples_other_rates(speech):
    """PESQ at 24 kHz input resamples to 16 kHz exactly (same score as native 16 kHz)."""
    import soxr

    _need("pesq_wb")
    noisy = _at_snr(speech, 25)
    native = evaluation.pesq_wb(speech, noisy, SR)
    up = [soxr.resample(x, SR, 24000, quality="HQ") for x in (speech, noisy)]
    assert evaluation.pesq_wb(up[0], up[0], 24000) == pytest.approx(4.644, abs=0.01)
    assert evaluation.pesq_wb(*up, 24000) == pytest.approx(native, abs=0.05)


@pytest.fixture
def fresh_optional(monkeypatch):
    """A clean one-time-warning state and ViSQOL cache, restored afterwards."""
    monkeypatch.setattr(evaluation, "_WARNED", set())
    evaluation._visqol_api.cache_clear()
    yield monkeypatch
    evaluation._visqol_api.cache_clear()


def test_broken_optional_package_raises(fresh_optional):
    """An installed package whose own import fails is an error, not a missing package."""

    def import_module(name):  # pystoi is found but needs a module that is not
        raise ModuleNotFoundError(f"{name} needs numba", name="numba")

    fresh_optional.setattr(evaluation.importlib, "import_module", import_module)
    x = np.sin(np.arange(8000) / 10.0)
    with pytest.raises(ModuleNotFoundError, match="numba"):
        evaluation.stoi(x, x, SR)


def test_missing_optional_package_gives_nan_and_warns_once(fresh_optional):
    for module in ("pesq", "pystoi", "visqol"):
        fresh_optional.setitem(sys.modules, module, None)  # makes `import module` fail
    x = np.sin(np.arange(8000) / 10.0)
    for fn in (evaluation.pesq_wb, evaluation.stoi, evaluation.visqol_speech):
        with pytest.warns(UserWarning, match="returning NaN"):
            assert math.isnan(fn(x, x, SR))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a second call is silent
            assert math.isnan(fn(x, x, SR))


def test_evaluate_writes_report(speech, tmp_path, fresh_optional):
    import soundfile as sf
    import soxr

    a = tmp_path / "a.wav"
    sf.write(a, speech[16000:25600].astype(np.float32), SR)  # 0.6 s mono
    b = tmp_path / "b_stereo.wav"  # 0.8 s, 22.05 kHz stereo: mono mix + resample to 16 kHz
    clip = soxr.resample(speech[32000:44800], SR, 22050).astype(np.float32)
    sf.write(b, np.stack([clip, 0.5 * clip], axis=1), 22050, subtype="FLOAT")
    fresh_optional.setitem(sys.modules, "visqol", None)  # the NaN path through the report

    cfg = config("tiny")
    codec = build_codec(cfg)
    variables = fast_init(codec, 4000)
    with pytest.warns(UserWarning, match="visqol"):
        result = evaluation.evaluate(
            codec, variables, [a, b], sample_rate=SR, progress=False, config=cfg
        )
    q = codec.quantizer
    streams = q.num_levels * q.num_groups
    assert result["bitrate_bps"] == pytest.approx(16000 / 40 * streams * 6)
    assert [r["name"] for r in result["files"]] == [str(a), str(b)]
    assert [r["seconds"] for r in result["files"]] == pytest.approx([0.6, 0.8], abs=1e-3)
    for r in result["files"]:
        assert math.isnan(r["visqol_speech"]) and np.isfinite(r["log_mel_l1"])
    cb = result["codebooks"]
    counts = np.asarray(cb["counts"])
    assert counts.shape == (streams, q.codebook_size)
    assert np.all(counts.sum(axis=1) == 9600 // 40 + 12800 // 40)  # every valid frame, once
    assert len(cb["usage"]) == len(cb["perplexity"]) == len(cb["used"]) == streams
    assert all(1.0 <= p <= q.codebook_size for p in cb["perplexity"])

    json_path, csv_path = evaluation.write_report(result, tmp_path / "out" / "report")
    data = json.loads(json_path.read_text())
    assert set(data) >= {"bitrate_bps", "num_levels", "files", "aggregate", "codebooks"}
    assert set(data["aggregate"]) == set(evaluation.METRICS)
    assert data["aggregate"]["visqol_speech"]["mean"] is None
    assert set(data["aggregate"]["si_sdr"]) == {"mean", "median", "count"}
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["name"] for r in rows] == [str(a), str(b), "mean", "median", "total"]
    durations = sorted(float(r["seconds"]) for r in rows[:2])
    assert float(rows[3]["seconds"]) == pytest.approx(sum(durations) / 2, abs=1e-3)  # median
    assert float(rows[4]["seconds"]) == pytest.approx(sum(durations), abs=1e-3)  # total
    assert set(rows[0]) == {"name", "seconds", *evaluation.METRICS}
    assert rows[0]["visqol_speech"] == ""
    assert float(rows[2]["si_sdr"]) == pytest.approx(data["aggregate"]["si_sdr"]["mean"])
    table = evaluation.format_table(result)
    assert "b_stereo.wav" in table and "median" in table and "kbps" in table
    assert result["errors"] == [] and "ERRORS" not in table

    def broken(ref, deg, sr):
        raise RuntimeError("metric bug")

    fresh_optional.setitem(evaluation.METRICS, "broken", broken)
    with pytest.warns(UserWarning, match="broken failed on"):
        low = evaluation.evaluate(
            codec,
            variables,
            [a],
            sample_rate=SR,
            num_levels=1,
            metrics=["si_sdr", "broken"],
            progress=False,
        )
    assert low["bitrate_bps"] == pytest.approx(result["bitrate_bps"] / 2)
    assert np.asarray(low["codebooks"]["counts"]).shape == (q.num_groups, q.codebook_size)
    assert math.isnan(low["files"][0]["broken"]) and np.isfinite(low["files"][0]["si_sdr"])
    assert low["errors"] == [
        {"name": str(a), "metric": "broken", "error": "RuntimeError('metric bug')"}
    ]
    assert "1 METRIC ERRORS" in evaluation.format_table(low)
