"""Released models by name, end to end against a local Hub on 127.0.0.1 (no internet).

A thread in this process serves released-format ``.pth`` files (the tiny config's ``g_`` dict,
written without torch) at the Hub's URL layout ``/{repo}/resolve/{revision}/{file}`` with the
headers ``hf_hub_download`` reads (``X-Repo-Commit``, ``ETag``, ``Content-Length``). The
library runs in subprocesses because ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME``
and ``HF_HUB_OFFLINE`` once, at import: each subprocess registers the test models
(entries of ``presets.PRESETS`` pointing at the local Hub, with the tiny config) and runs a list of calls, printing one JSON result per call.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import REPO, config, fast_init
from pth_writer import write_pth

import hificodec_jax
from hificodec_jax import model_dir, presets
from hificodec_jax.reference import convert

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_REPO = "test-org/tiny-codec"
TINY = str(REPO / "configs" / "tiny.py")
# name -> (file on the local Hub, how the server answers its GET)
MODELS = {
    "tiny-test": ("g_tiny", "ok"),
    "tiny-server-error": ("g_error", "error"),  # HEAD fine, GET answers 500
    "tiny-cut": ("g_cut", "cut"),  # the transfer stops half way, the retry answers 500
    "tiny-damaged": ("g_damaged", "ok"),  # a truncated .pth, served whole
}

DRIVER = r"""
import contextlib, dataclasses, io, json, sys
import hificodec_jax
from hificodec_jax import cli
from hificodec_jax import hub, loading, model_dir, presets
from hificodec_jax.reference import convert

spec = json.loads(sys.argv[1])
configs = {}
for name, (filename, config) in spec["models"].items():
    presets.PRESETS[name] = dataclasses.replace(
        presets.PRESETS["hificodec-16k-320d"], repo_id=spec["repo"], hub_file=filename
    )
    configs[name] = config
real_get_config = presets.get_config
presets.get_config = lambda name, arg=None: (
    hificodec_jax.load_config(configs[name]) if name in configs else real_get_config(name, arg)
)
conversions = []
real_convert = convert.convert_checkpoint
convert.convert_checkpoint = lambda *a, **k: conversions.append(a[0]) or real_convert(*a, **k)
for action, name, revision in spec["actions"]:
    try:
        if action == "load":
            codec, variables = hificodec_jax.load(name, inference=False, revision=revision)
            result = {"model_id": model_dir.model_id(variables).hex(), "hop": codec.hop}
        else:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                cli.main(["download", name])
            result = {"printed": out.getvalue().strip()}
    except BaseException as e:
        result = {"error": type(e).__name__, "message": str(e)}
    result["conversions"] = len(conversions)
    print("RESULT " + json.dumps(result), flush=True)
"""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool):
        self.server.log.append((self.command, self.path))
        prefix = f"/{HUB_REPO}/resolve/"
        path = urllib.parse.unquote(self.path)
        filename = path[len(prefix) :].partition("/")[2] if path.startswith(prefix) else ""
        if filename not in self.server.files:
            return self._empty(404, {"X-Error-Code": "EntryNotFound"})
        data, mode = self.server.files[filename]
        earlier_gets = self.server.log.count(("GET", self.path)) - 1
        if body and (mode == "error" or (mode == "cut" and earlier_gets)):
            return self._empty(500, {})
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and mode == "cut":
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
        elif body:
            self.wfile.write(data)

    def _empty(self, code: int, headers: dict):
        self.send_response(code)
        for k, v in {**headers, "Content-Length": "0"}.items():
            self.send_header(k, v)
        self.end_headers()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Released-format ``.pth`` files of the tiny config, one per file of ``MODELS``: the same
    weights, a different ``steps`` entry (the Hub cache shares blobs of equal content)."""
    codec = hificodec_jax.build_codec(config("tiny"))
    state = convert.flax_to_torch(fast_init(codec, 4000, seed=3), codec)
    paths = {}
    for steps, (filename, _) in enumerate(MODELS.values()):
        paths[filename] = tmp_path_factory.mktemp("hub") / f"{filename}.pth"
        write_pth(paths[filename], {**state, "steps": steps})
    return paths


@pytest.fixture(scope="module")
def hub(checkpoints):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.log = []
    server.files = {}
    for name, (filename, mode) in MODELS.items():
        data = checkpoints[filename].read_bytes()
        server.files[filename] = (
            data[: len(data) * 2 // 3] if name == "tiny-damaged" else data,
            mode,
        )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run(hub, hf_home: Path, actions, *, offline: bool = False) -> list[dict]:
    """The driver's results for ``actions`` in a fresh process pointed at the local Hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(hf_home),
        HF_ENDPOINT=f"http://127.0.0.1:{hub.server_port}",
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    spec = {
        "repo": HUB_REPO,
        "models": {name: (filename, TINY) for name, (filename, _) in MODELS.items()},
        "actions": actions,
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert len(results) == len(actions), proc.stdout + proc.stderr[-3000:]
    return results


def converted_dirs(hf_home: Path) -> list[Path]:
    """Model directories (anything but lock files) in the converted-model cache."""
    root = hf_home / "assets" / "hificodec_jax" / HUB_REPO.replace("/", "--")
    return sorted(p for p in root.rglob("*") if p.is_dir() and p.name.startswith("g_"))


def gets(hub, filename: str) -> int:
    return sum(1 for method, path in hub.log if method == "GET" and path.endswith(filename))


@pytest.fixture(scope="module")
def expected_id(checkpoints, tmp_path_factory) -> str:
    """The model id of the checkpoint converted directly (no Hub involved)."""
    out = convert.convert_checkpoint(
        checkpoints["g_tiny"], TINY, tmp_path_factory.mktemp("d") / "m"
    )
    return model_dir.model_id(out).hex()


@pytest.fixture(scope="module")
def online(hub, tmp_path_factory):
    """One online process: load twice, ``hificodec-jax download``, then the failing files."""
    hf_home = tmp_path_factory.mktemp("hf_home")
    actions = [
        ("load", "tiny-test", None),
        ("load", "tiny-test", None),
        ("cli", "tiny-test", None),
        ("load", "tiny-test", COMMIT),  # a pinned commit that is cached: no request at all
        ("load", "tiny-server-error", None),
        ("load", "tiny-cut", None),
        ("load", "tiny-damaged", None),
        ("load", "tiny-tset", None),
        ("cli", "tiny-tset", None),
    ]
    log_start = len(hub.log)
    results = run(hub, hf_home, actions)
    return hf_home, dict(zip(range(len(actions)), results, strict=True)), hub.log[log_start:]


def test_first_call_downloads_and_converts_then_the_cache_serves(online, hub, expected_id):
    hf_home, results, log = online
    first, second, cli, pinned = results[0], results[1], results[2], results[3]
    assert first == {"model_id": expected_id, "hop": 40, "conversions": 1}
    assert second == first == pinned  # no second conversion
    assert cli["conversions"] == 1
    (model,) = [d for d in converted_dirs(hf_home) if d.name == "g_tiny"]
    assert model == hf_home / "assets/hificodec_jax/test-org--tiny-codec" / COMMIT / "g_tiny"
    assert cli["printed"] == str(model)
    assert [m for m, p in log if p.endswith("/g_tiny")] == ["HEAD", "GET", "HEAD", "HEAD"]
    meta = json.loads((model / "model.json").read_text())
    assert meta["source"].startswith(f"{HUB_REPO}/g_tiny@{COMMIT} sha256:")
    assert (model / "model.safetensors").is_file()
    pth = hf_home / "hub/models--test-org--tiny-codec/snapshots" / COMMIT / "g_tiny"
    assert pth.read_bytes() == hub.files["g_tiny"][0]


def test_failed_downloads_leave_no_model_behind(online):
    hf_home, results, log = online
    error, cut, damaged = results[4], results[5], results[6]
    for r, name in ((error, "tiny-server-error"), (cut, "tiny-cut")):
        assert r.get("error") == "ModelDownloadError", r
        assert r["message"].startswith(f"downloading model {name!r} ({HUB_REPO}/g_")
    assert "HfHubHTTPError: Server error '500" in error["message"]
    assert "HfHubHTTPError: Server error '500" in cut["message"]
    assert [m for m, p in log if p.endswith("/g_cut")] == ["HEAD", "GET", "GET"]  # + a retry
    assert damaged["error"] == "ModelDownloadError"
    assert "the downloaded checkpoint cannot be converted" in damaged["message"]
    assert "hificodec-jax download tiny-damaged --force" in damaged["message"]
    assert damaged["conversions"] == 2  # tried, failed, left nothing
    assert [d.name for d in converted_dirs(hf_home)] == ["g_tiny"]
    snapshots = hf_home / "hub/models--test-org--tiny-codec/snapshots" / COMMIT
    assert sorted(p.name for p in snapshots.iterdir()) == ["g_damaged", "g_tiny"]


def test_a_wrong_name_lists_the_valid_ones(online):
    _, results, _ = online
    load, cli = results[7], results[8]
    assert load["error"] == "ModelNotFoundError"
    assert "no model directory 'tiny-tset', and no released model of that name" in load["message"]
    for r in (load, cli):
        assert "hificodec-16k-320d, hificodec-16k-320d-large-universal" in r["message"]
        assert "tiny-test" in r["message"]
    assert cli["error"] == "CliError"
    assert cli["message"].startswith("unknown model name 'tiny-tset'; one of ")


def test_offline_uses_the_cache_and_says_what_to_do_without_it(online, hub, expected_id):
    hf_home, _, _ = online
    log_start = len(hub.log)
    cached, missing = run(
        hub,
        hf_home,
        [("load", "tiny-test", None), ("load", "tiny-server-error", None)],
        offline=True,
    )
    assert hub.log[log_start:] == []  # no request at all
    assert cached == {"model_id": expected_id, "hop": 40, "conversions": 0}
    assert missing.get("error") == "ModelDownloadError", missing
    assert missing["message"] == (
        f"model 'tiny-server-error' ({HUB_REPO}/g_error on the Hugging Face Hub) is not in the "
        "local cache and offline mode is on (HF_HUB_OFFLINE). To use it on a machine without "
        "network access, run `hificodec-jax download tiny-server-error` where the Hub is "
        "reachable and copy that machine's Hugging Face cache (HF_HOME, default "
        "~/.cache/huggingface) here, or copy the printed model directory and pass it as "
        "--model; or convert the reference's .pth with `hificodec-jax convert`"
    )


def test_an_unreachable_hub_answers_at_once_from_the_cache_or_with_what_to_do(online, expected_id):
    # No server on this port: the connection is refused, as on a machine without network.
    hf_home, _, _ = online
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    t0 = time.monotonic()
    cached, missing = run(
        types.SimpleNamespace(server_port=port),
        hf_home,
        [("load", "tiny-test", None), ("load", "tiny-server-error", None)],
    )
    assert time.monotonic() - t0 < 60  # the Hub client's own retries take ~25 s per model
    assert cached == {"model_id": expected_id, "hop": 40, "conversions": 0}
    assert missing.get("error") == "ModelDownloadError", missing
    assert f"127.0.0.1:{port}) cannot be reached. To use it on a machine" in missing["message"]


# ---------------------------------------------------------------------------------------------
# The names table and the presets (no network)


def test_released_models_table():
    hub_files = {name: (p.repo_id, p.hub_file, p.revision) for name, p in presets.PRESETS.items()}
    assert hub_files == {
        "hificodec-16k-320d": ("Dongchao/AcademiCodec", "HiFi-Codec-16k-320d", None),
        "hificodec-16k-320d-large-universal": (
            "Dongchao/AcademiCodec",
            "HiFi-Codec-16k-320d-large-universal",
            None,
        ),
        "hificodec-24k-240d": ("Dongchao/AcademiCodec", "HiFi-Codec-24k-240d", None),
        "hificodec-24k-320d": ("Dongchao/AcademiCodec", "HiFi-Codec-24k-320d", None),
    }
    assert hificodec_jax.model_names() == sorted(hub_files)
    # sample rate, hop, bit/s of each released model (reference configs)
    expected = {
        "hificodec-16k-320d": (16000, 320, 2000.0),
        "hificodec-16k-320d-large-universal": (16000, 320, 2000.0),
        "hificodec-24k-240d": (24000, 240, 4000.0),
        "hificodec-24k-320d": (24000, 320, 3000.0),
    }
    for name, (rate, hop, bps) in expected.items():
        cfg = hificodec_jax.load_config(name)
        assert (cfg.audio.sample_rate, hificodec_jax.hop_length(cfg)) == (rate, hop)
        assert hificodec_jax.bitrate(cfg) == bps
        assert cfg.model.quantizer["update"] == "loss"  # trained with gradient codebooks
    assert hificodec_jax.model_names() == sorted(expected)


def test_presets_load_from_any_directory_and_match_the_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = hificodec_jax.load_config("hificodec-24k-240d:academicodec")
    recipe = hificodec_jax.load_config(f"{REPO / 'configs' / 'grvq4_24k_240d.py'}:academicodec")
    assert by_name.to_dict() == recipe.to_dict()
    assert hificodec_jax.load_config("hificodec-16k-320d:paper").loss.adversarial == "hinge"
    with pytest.raises(FileNotFoundError, match="no preset of that name"):
        hificodec_jax.load_config("hificodec-16k-32d")


def test_unknown_name_or_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(model_dir.ModelNotFoundError) as info:
        hificodec_jax.load("hificodec-16k-32d")
    assert str(info.value) == (
        "no model directory 'hificodec-16k-32d', and no released model of that name (one of "
        "hificodec-16k-320d, hificodec-16k-320d-large-universal, hificodec-24k-240d, "
        "hificodec-24k-320d)"
    )
    with pytest.raises(ValueError, match="unknown model name 'x'; one of hificodec-16k-320d"):
        hificodec_jax.download("x")
