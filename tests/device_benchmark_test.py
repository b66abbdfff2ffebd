"""``benchmarks/device.py``: the accelerator benchmark's ``--smoke`` mode runs on CPU and reports
every case with consistent figures; the chip table resolves device kinds."""

from __future__ import annotations

import importlib.util
import json
import math
import types

import pytest
from helpers import REPO


@pytest.fixture(scope="module")
def device_benchmark():
    spec = importlib.util.spec_from_file_location(
        "device_benchmark", REPO / "benchmarks" / "device.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "kind,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("TPU v5 lite", 197.0),
        ("TPU v5p", 459.0),
        ("cpu", None),
    ],
)
def test_peak_table(device_benchmark, kind, peak):
    assert device_benchmark.peak_bf16_tflops(types.SimpleNamespace(device_kind=kind)) == peak


def test_smoke_run_reports_every_case(device_benchmark, capsys):
    result = device_benchmark.main(["--smoke", "--peak-tflops", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert (result["platform"], result["smoke"], result["peak_bf16_tflops"]) == ("cpu", True, 1.0)
    precisions = ("float32", "bfloat16")
    inference = {(e["precision"], e["batch"]): e for e in result["inference"]}
    assert set(inference) == {(p, b) for p in precisions for b in (1, 2)}
    for (_, b), e in inference.items():
        assert "error" not in e, e
        assert e["x_realtime"] == pytest.approx(b * e["seconds_per_clip"] / e["call_s"], rel=0.02)
        assert e["gflop"] > 0 and e["program_mib"] > 0
        assert e["mfu"] == pytest.approx(e["gflop"] * 1e9 / e["call_s"] / 1e12, rel=0.02)
    train = {(e["precision"], e["batch"]): e for e in result["train"]}
    assert set(train) == {(p, 2) for p in precisions}
    for e in train.values():
        assert "error" not in e, e
        assert e["audio_s_per_s"] == pytest.approx(2 * e["segment_s"] / e["step_s"], rel=0.02)
        assert e["gflop"] > 0 and e["program_mib"] > 0 and math.isfinite(e["mel_loss"])
    # Streaming: every chunk size measured; one more frame per chunk is one hop more latency
    # (tiny config: hop 40 at 16 kHz, 2.5 ms).
    stream = result["streaming"]
    assert "error" not in stream, stream
    chunks = stream["chunks"]
    assert set(chunks) == {"1", "5", "10"}
    for c in chunks.values():
        assert 0 < c["push_ms_median"] <= c["push_ms_p99"] <= c["push_ms_max"]
        assert c["compute_ratio_range"][0] <= c["compute_ratio"] <= c["compute_ratio_range"][1]
    latency = {n: chunks[n]["algorithmic_latency_ms"] for n in chunks}
    assert latency["5"] - latency["1"] == pytest.approx(4 * 2.5)
    assert latency["10"] - latency["5"] == pytest.approx(5 * 2.5)
    assert stream["batch8_chunk1"]["compute_ratio_vs_8_offline"] > 0
    # Tokenize: the three rates and their ratios agree with each other.
    tok = result["tokenize"]
    assert "error" not in tok, tok
    assert tok["clips"] >= 1 and tok["audio_s"] > 0.2 * 60 - 0.1  # at least the minutes asked
    for k in ("end_to_end_h_per_h", "model_only_h_per_h", "batch1_h_per_h"):
        assert tok[k] > 0, k
    ratio = tok["end_to_end_h_per_h"] / tok["model_only_h_per_h"]
    assert tok["end_to_end_vs_model"] == pytest.approx(ratio, rel=0.02)
    ratio = tok["end_to_end_h_per_h"] / tok["batch1_h_per_h"]
    assert tok["end_to_end_vs_batch1"] == pytest.approx(ratio, rel=0.02)
