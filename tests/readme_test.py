"""The README's JAX snippet runs as written, from another working directory.

The released model's name is swapped for a tiny model directory (no network here); everything
else, the padded batch with its ``lengths`` and the assertion in it included, runs unchanged.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from helpers import REPO, config, fast_init, xla_flags

import hificodec_jax
from hificodec_jax import model_dir

RELEASED = 'hificodec_jax.load("hificodec-16k-320d")'


def _snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using the codec from JAX") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_runs_from_any_directory(tmp_path):
    snippet = _snippet()
    assert RELEASED in snippet, "the README snippet no longer loads the released model by name"
    cfg = config("tiny")
    assert cfg.audio.sample_rate == 16000  # the snippet's `sr`
    codec = hificodec_jax.build_codec(cfg)
    model = model_dir.save_model(tmp_path / "tiny", cfg, fast_init(codec, 4000), source="test")
    script = snippet.replace(RELEASED, f"hificodec_jax.load({str(model)!r})")
    script += "\nprint('shapes', codes.shape, wav_hat.shape, coarse.shape)\n"
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    hop = 40  # configs/tiny.py
    frames = 16000 // hop
    assert f"shapes ({2}, {frames}, 4) ({2}, {frames * hop}) ({2}, {frames}, 2)" in run.stdout
