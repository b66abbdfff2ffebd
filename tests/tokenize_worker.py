"""The exactness run of ``tokenize_test.py``, in a process of its own with 2 simulated CPU
devices (and the session's XLA flags, ``tokenize_test.subprocess_env``).

``python tokenize_worker.py MODEL_DIR CORPUS_DIR OUT_ROOT``: encodes every good record of the
corpus alone (the reference), tokenizes the corpus with batch budgets of 1, 16 and 64 clips
into ``OUT_ROOT/store<budget>`` and writes ``OUT_ROOT/report.json``: per budget, the records
whose stored codes differ from the reference (key, frames differing, frames) and the shards'
SHA-256.
"""

import functools
import hashlib
import json
import os
import sys

import jax
import numpy as np

import hificodec_jax
from hificodec_jax.audio import audio_io
from hificodec_jax.tokens import TokenSource, inputs, job

RATE = 16000


def main():
    model_dir, corpus, out_root = sys.argv[1:]
    codec, variables = hificodec_jax.load(model_dir)
    encode = jax.jit(functools.partial(codec.apply, method="encode"))
    references = {}
    for r in inputs.read_records(corpus):
        if r.key.startswith("bad/"):
            continue
        wav, rate = audio_io.read_audio(r.path)
        references[r.key] = np.asarray(encode(variables, audio_io.resample(wav, rate, RATE)))
    report = {"keys": sorted(references)}
    # What the field's zero-padded batches without lengths give, for contrast.
    wavs = [audio_io.read_audio(r.path)[0] for r in inputs.read_records(corpus)[10:18]]
    padded = np.zeros((len(wavs), max(w.shape[0] for w in wavs)), np.float32)
    for i, w in enumerate(wavs):
        padded[i, : w.shape[0]] = w
    batch = np.asarray(encode(variables, padded))
    keys = [r.key for r in inputs.read_records(corpus)[10:18]]
    differ = [
        np.any(batch[i, : len(references[k])] != references[k], -1) for i, k in enumerate(keys)
    ]
    report["zero_padded_frames_differing"] = float(np.mean(np.concatenate(differ)))
    for budget in (1, 16, 64):
        out = os.path.join(out_root, f"store{budget}")
        summary = job.tokenize(
            model_dir, corpus, out, max_batch=budget, unit_hours=0.03, max_error_rate=0.05,
            progress=False,
        )  # fmt: skip
        source = TokenSource(out)
        differ = []
        for i in range(len(source)):
            rec = source[i]
            want = references[rec["key"]]
            same = rec["codes"].shape == want.shape and np.array_equal(rec["codes"], want)
            if not same:
                frames = int(np.sum(np.any(rec["codes"] != want, axis=-1)))
                differ.append([rec["key"], frames, int(want.shape[0])])
        digests = {
            f: hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(out))
            if f.endswith(".array_record")
        }
        report[str(budget)] = {
            "summary": summary, "differ": differ, "digests": digests,
            "stored_keys": [source.info(i)["key"] for i in range(len(source))],
            "frames": int(np.sum(source.lengths)),
        }  # fmt: skip
    with open(os.path.join(out_root, "report.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
