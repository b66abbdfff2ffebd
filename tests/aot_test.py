"""Ahead-of-time compiles for TPU and GPU targets on this CPU host (hificodec_jax.aot).

The tiny config's train step and grvq4's encode+decode compile for a v5e slice and an H100;
the reports' figures are present and positive and the programs have the accelerators' form
(native strided convs, cuDNN convolutions on GPU, no cross-chip traffic but the gradient
reduction); ``max_batch`` stops at a batch whose double does not fit; the step's compiler
options follow the target; the command's flags, overrides and exit statuses.

Needs the ``[aot]`` extra (libtpu, the CUDA plugin): skipped without it, failed under ``CI``.
Compiling is slow on a 2-core host (the TPU train step takes minutes), so each program is
compiled once per module and shared by the tests that read it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import jax
import pytest
from helpers import REPO, config, tiny_step_config

from hificodec_jax.aot import compile as aot
from hificodec_jax.aot import report as report_lib
from hificodec_jax.aot import targets
from hificodec_jax.cli import compile as command
from hificodec_jax.training import compilation, sharding


def _need(platform: str) -> None:
    """Skip, or fail under CI (``CI`` set), where the compiler for ``platform`` is missing."""
    if not targets.compiler_installed(platform):
        reason = f"no {platform} compiler installed (pip install -e '.[aot]')"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required when CI is set)")
        pytest.skip(reason)


def _tiny_train_on_two_chips(target):
    """The tiny train step compiled for ``target`` (two chips, batch 1 each), and its HLO."""
    hlo = []
    report = aot.compile_job(
        target,
        tiny_step_config(),
        "train",
        batch_size=2,
        on_compiled=lambda c: hlo.append(c.as_text()),
    )
    return report, hlo[0]


@pytest.fixture(scope="module")
def tpu_train():
    _need("tpu")
    return _tiny_train_on_two_chips("v5e-2")


@pytest.fixture(scope="module")
def gpu_train():
    _need("cuda")
    return _tiny_train_on_two_chips("h100-2")


def _grvq4_roundtrip(target):
    return aot.compile_job(
        target, config("grvq4"), "roundtrip", batch_size=1, seconds=0.2, precision="bfloat16"
    )


@pytest.fixture(scope="module")
def tpu_codec():
    _need("tpu")
    return _grvq4_roundtrip("v5e-1")


@pytest.fixture(scope="module")
def gpu_codec():
    _need("cuda")
    return _grvq4_roundtrip("h100")


def _assert_memory(report, chips):
    assert report.compiled and report.fits and report.chips == chips
    for field in ("state_bytes", "batch_bytes", "temp_bytes", "total_bytes", "capacity_bytes"):
        assert getattr(report, field) > 0, field
    assert report.total_bytes >= report.state_bytes + report.batch_bytes + report.temp_bytes
    assert report.headroom_bytes == report.capacity_bytes - report.total_bytes
    assert report.compile_s > 0 and report.lower_s > 0
    assert report.flops > 0


def _assert_tpu_estimates(report):
    assert report.bytes_accessed > 0 and report.cycles > 0
    assert report.priced_s > 0 and report.cycles_s > 0
    by_scope = report.cycles_by_scope_s  # every op's cycles in exactly one scope
    assert sum(f + b for f, b in by_scope.values()) == pytest.approx(report.cycles_s, rel=1e-9)
    for name in ("priced", "cycles"):
        assert report.audio_s_per_chip_s[name] > 0
        assert 0 < report.mfu[name] <= 1  # the FLOPs over the estimate at the chip's peak


def test_tiny_train_step_for_v5e(tpu_train):
    r, _ = tpu_train
    _assert_memory(r, chips=2)
    _assert_tpu_estimates(r)
    assert r.batch == 2 and r.batch_per_chip == 1 and r.seconds == 0.25
    # The step donates its state: the new state reuses the old one's memory.
    assert r.output_bytes < r.state_bytes
    # XLA's own strided convs (the CPU's space-to-depth rewrite and looped grouped convs are
    # not in a TPU program) in float32, the config's precision.
    assert r.form["strided_convolutions"] > 0 and r.form["cudnn_convolutions"] == 0
    assert set(r.form["conv_dtypes"]) == {"f32"}


@pytest.mark.parametrize("compiled", ["tpu_train", "gpu_train"])
def test_train_step_moves_no_rows_between_chips(compiled, request):
    """Each chip keeps its rows of the batch through the step: no collective-permute or
    all-to-all, and no all-gather of the batch (the GPU partitioner gathers it before an FFT
    unless the spectrograms and discriminators run on each chip's own rows). What crosses
    chips is the gradient and metric all-reduce and, from the quantizer, the codebooks'
    statistics over the global batch (k-means initialisation and dead-code restarts:
    all-gathers of codebook-sized arrays)."""
    r, hlo = request.getfixturevalue(compiled)
    assert r.form["collective_permutes"] == 0 and r.form["all_to_alls"] == 0
    assert r.form["all_reduces"] > 0
    gathers = re.findall(r" all-gather(?:-start)?\(.*", hlo)
    assert 0 < r.form["all_gathers"] <= len(gathers)  # copies of one collective count once
    for line in gathers:
        assert "/quantizer/quantizer." in line, line


# The shape of a compiled TPU program's text: an all-gather the compiler copied into two async
# fusions (one channel), another all-gather, an async all-reduce pair, and unpriced custom calls
# in the entry computation and in a conditional branch.
_HLO = """
%async_collective_fusion.1 (p: s32[2,8]) -> s32[2,64] {
  %all-gather.1 = s32[2,64]{1,0} all-gather(%p), channel_id=616, dimensions={1}
}
%async_collective_fusion.2 (p: s32[2,8]) -> s32[2,64] {
  %all-gather.2 = s32[2,64]{1,0} all-gather(%p), channel_id=616, dimensions={1}
}
%branch_0 (p: f32[8]) -> f32[8] {
  %cc.9 = f32[8]{0} custom-call(%p), custom_call_target="ConcatBitcast"
  %cc.10 = f32[8]{0} custom-call(%p), custom_call_target="ConcatBitcast"
}
ENTRY %main (a: s32[2,8], b: f32[8]) -> f32[8] {
  %all-gather.3 = s32[2,64]{1,0} all-gather(%a), channel_id=620, dimensions={1}
  %all-reduce-start.1 = f32[8]{0} all-reduce-start(%b), channel_id=5, to_apply=%add
  %all-reduce-done.1 = f32[8]{0} all-reduce-done(%all-reduce-start.1)
  %cc.1 = f32[8]{0} custom-call(%b), custom_call_target="ConcatBitcast"
  %cc.2 = (f32[8]{0}, u32[]) custom-call(%b), custom_call_target="X64Combine"
  ROOT %cc.3 = f32[8]{0} custom-call(%b), custom_call_target="AssumeGatherIndicesInBound"
}
"""


def test_report_counts_collectives_and_unpriced_calls_as_the_compiler_does():
    form = report_lib.program_form(_HLO)
    assert (form["all_gathers"], form["all_reduces"], form["collective_permutes"]) == (2, 1, 0)
    assert report_lib.unpriced_calls(_HLO) == 2  # the entry's ConcatBitcast and X64Combine


# Ops as a compiled TPU program names them: a discriminator conv forward and backward (in a
# cond branch), a loss reduction outside any module, and a compiler copy with no jax name.
_SCOPED_HLO = """
  %f.1 = bf16[8]{0} fusion(%a), metadata={op_name="jit(step)/shard_map/jvp(ScaleDiscriminator)/convs_1/conv_general_dilated"}, backend_config={"estimated_cycles":"100"}
  %f.2 = bf16[8]{0} fusion(%a), metadata={op_name="jit(step)/transpose(jvp(ScaleDiscriminator))/convs_1/cond/branch_1_fun/conv_general_dilated"}, backend_config={"estimated_cycles":"300"}
  %f.3 = f32[]{:T(128)} fusion(%b), metadata={op_name="jit(step)/jvp()/reduce_sum"}, backend_config={"estimated_cycles":"200"}
  %f.4 = u8[8]{0} fusion(%c), backend_config={"estimated_cycles":"50"}
  %f.5 = f32[8]{0} fusion(%d), metadata={op_name="jit(step)/jvp(Codec)/Codec._decoder/decoder/add"}, backend_config={"estimated_cycles":"25"}
"""


def test_cycles_by_scope_splits_modules_and_directions(tmp_path, capsys):
    by_scope = report_lib.cycles_by_scope(_SCOPED_HLO)
    assert by_scope == {
        "ScaleDiscriminator": (100, 300),
        "(top level)": (200, 0),
        "(unnamed)": (50, 0),
        "Codec": (25, 0),
    }
    assert list(report_lib.cycles_by_scope(_SCOPED_HLO, depth=2))[:1] == [
        "ScaleDiscriminator/convs_1"
    ]
    assert report_lib.cycles_by_scope(_SCOPED_HLO, depth=2)["Codec/Codec._decoder"] == (25, 0)
    # 1 GHz: cycles are nanoseconds; the two smallest scopes summed as the rest.
    seconds = report_lib.scope_seconds(by_scope, 1e9, top=2)
    assert seconds == {
        "ScaleDiscriminator": [1e-7, 3e-7],
        "(top level)": [2e-7, 0.0],
        "(rest)": [7.5e-8, 0.0],
    }
    path = tmp_path / "step.hlo"
    path.write_text(_SCOPED_HLO)
    report_lib.main([str(path), "--target", "v5e-8", "--top", "1"])
    out = capsys.readouterr().out.splitlines()
    # v5e's clock is 1.5 GHz: 400 cycles = 0.27 us; 675 cycles in all.
    assert out[1].split()[:3] == ["ScaleDiscriminator", "0.00", "0.00"] and "59.3%" in out[1]
    assert out[2].split()[0] == "(rest)"
    with pytest.raises(SystemExit, match="missing.hlo: cannot read it"):
        report_lib.main([str(tmp_path / "missing.hlo")])
    (tmp_path / "gpu.hlo").write_text("HloModule m\n")
    with pytest.raises(SystemExit, match="gpu.hlo: no estimated_cycles"):
        report_lib.main([str(tmp_path / "gpu.hlo")])
    with pytest.raises(SystemExit) as err:  # argparse: exit status 2, the reason on stderr
        report_lib.main([str(path), "--target", "h100"])
    assert err.value.code == 2 and "no cycle model" in capsys.readouterr().err


def test_tiny_train_step_for_h100(gpu_train):
    r, _ = gpu_train
    _assert_memory(r, chips=2)
    assert r.priced_s is None and r.cycles is None  # the GPU compiler gives no estimate
    assert r.compute_floor_s == pytest.approx(r.flops / 989e12)
    assert r.form["cudnn_convolutions"] > 0 and r.form["convolutions"] == 0
    # The first step's k-means initialisation is the program's only loops (the CPU program
    # loops over conv groups too).
    assert r.form["while_loops"] <= 2


def test_grvq4_encode_decode_for_v5e(tpu_codec):
    r = tpu_codec
    _assert_memory(r, chips=1)
    _assert_tpu_estimates(r)
    assert r.precision == "bfloat16" and r.seconds == pytest.approx(0.2)
    assert r.form["while_loops"] == 0 and r.form["strided_convolutions"] > 0
    assert r.form["conv_dtypes"].get("bf16", 0) > 0


def test_grvq4_encode_decode_for_h100(gpu_codec):
    r = gpu_codec
    _assert_memory(r, chips=1)
    assert r.form["while_loops"] == 0 and r.form["cudnn_convolutions"] > 0
    assert r.form["conv_dtypes"].get("bf16", 0) > 0


def test_max_batch_stops_below_a_batch_that_does_not_fit():
    _need("cuda")
    cfg = config("tiny")
    at_4 = aot.compile_job("h100", cfg, "encode", batch_size=4, seconds=1.0)
    seen = []
    per_chip, fits, over = aot.max_batch(
        "h100", cfg, "encode", seconds=1.0, capacity_bytes=at_4.total_bytes, on_report=seen.append
    )
    assert [r.batch_per_chip for r in seen] == [1, 2, 4, 8]
    assert per_chip == 4 and fits.fits and fits.total_bytes == at_4.total_bytes
    assert over.batch_per_chip == 8 and not over.fits and over.total_bytes > at_4.total_bytes


def test_step_compiler_options_follow_the_target(monkeypatch):
    assert compilation.step_compiler_options("tpu") == {}
    assert compilation.step_compiler_options("cuda") == {}
    assert compilation.step_compiler_options("cpu") == compilation._CPU_STEP_OPTIONS
    asked = []
    options = compilation.step_compiler_options
    monkeypatch.setattr(
        compilation, "step_compiler_options", lambda p=None: asked.append(p) or options(p)
    )
    cfg = tiny_step_config()
    compilation.build(cfg, sharding.make_mesh(jax.devices("cpu")[:1]))
    _need("tpu")
    compilation.build(cfg, sharding.make_mesh(targets.devices("v5e-1")))
    assert asked == ["cpu", "tpu"]  # the mesh's platform, not this host's backend


def _command(*argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_applies_overrides_and_refuses_a_job_that_does_not_fit(capsys, tmp_path):
    _need("cuda")
    hlo = tmp_path / "encode.hlo"
    args = _command(
        "--target", "h100", "--config", str(REPO / "configs" / "tiny.py"), "--job", "encode",
        "--batch-size", "2", "--seconds", "0.5", "--config.precision=bfloat16",
        "--config.model.quantizer.num_groups", "1", "--capacity-gib", "0.0001", "--quiet",
        "--dump-hlo", str(hlo),
    )  # fmt: skip
    assert args.config_overrides == [
        "--config.precision=bfloat16",
        "--config.model.quantizer.num_groups=1",
    ]
    assert command.run(args) == command.DOES_NOT_FIT
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["precision"] == "bfloat16" and not report["fits"]
    assert "it does not fit" in err and "needs" in err
    assert not hlo.exists()  # the inputs alone do not fit: nothing was compiled
    args.capacity_gib = None
    assert command.run(args) == 0
    text = hlo.read_text()  # the optimized program, for where the estimates go
    assert text.startswith("HloModule") and "__cudnn$conv" in text and "bf16[2," in text


def test_command_rejects_bad_arguments(capsys):
    tiny = str(REPO / "configs" / "tiny.py")
    assert command.run(_command("--target", "v9x-8", "--config", tiny)) == 2
    assert "unknown target 'v9x-8'" in capsys.readouterr().err
    assert command.run(_command("--target", "v5e-8", "--config", tiny, "--batch-size", "4")) == 2
    assert "multiple of the 8 chips" in capsys.readouterr().err
    assert command.run(_command("--target", "h100", "--config", tiny, "--config.nope=1")) == 2
    assert "bad --config override" in capsys.readouterr().err


def test_plugins_stay_quiet_on_a_host_without_accelerators():
    from hificodec_jax import platforms

    if platforms.accelerator_present() or not platforms.accelerator_plugins_installed():
        pytest.skip("needs the [aot] plugins on a host without accelerators")
    code = (
        "from hificodec_jax import platforms\n"
        "assert platforms.default_to_cpu_without_accelerator()\n"
        "import jax, jax.numpy as jnp\n"
        "print(jax.devices()[0].platform, float(jnp.ones(3).sum()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "3.0"]
    # Neither the CUDA plugin's initialisation traceback nor libtpu's start-up warnings.
    for noise in ("Traceback", "plugin configuration error", "TPU", "libtpu"):
        assert noise not in proc.stderr, proc.stderr
