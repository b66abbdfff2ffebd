"""One training step of the reference objective from a reference checkpoint pair: every term.

    python benchmarks/reference_step.py G_PTH DO_PTH AUDIO_NPY --config configs/grvq4.py:academicodec

``G_PTH`` / ``DO_PTH``: the reference's ``g_XXXXXXXX`` and ``do_XXXXXXXX`` files (read
torch-free); ``AUDIO_NPY``: a float32 ``[B, L]`` batch. Runs the recipe's objective at those
weights (``init/``) and one training step in the reference loop's order (``step/``: D phase,
D's Adam step, G phase against the updated D), through the importer a resumed run uses, and
prints one JSON line whose keys are the training-parity fixture's scalar names
(``init/d_mpd``, ..., ``step/g_total``, ``init/gnorm_g``, ...): compare them with the same
step of the PyTorch reference on any weights and audio. ``--fresh-stft`` starts MS-STFT from a
fresh initialisation (for a single-GPU run's ``do_`` file, which lacks its weights).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from hificodec_jax import factory
from hificodec_jax.reference import parity
from hificodec_jax.reference.pth import load_pth


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    """Parse ``argv``, run, print the JSON line; returns every term (probe gradients too)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("g_pth", help="the reference's g_XXXXXXXX checkpoint")
    parser.add_argument("do_pth", help="the reference's do_XXXXXXXX checkpoint")
    parser.add_argument("audio_npy", help="float32 [B, L] audio batch (.npy)")
    parser.add_argument("--config", default="configs/grvq4.py:academicodec")
    parser.add_argument("--fresh-stft", action="store_true", help="start MS-STFT fresh")
    args = parser.parse_args(argv)
    for path in (args.g_pth, args.do_pth, args.audio_npy):
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    wav = np.load(args.audio_npy)
    if wav.ndim != 2:
        parser.error(f"{args.audio_npy}: expected a float32 [B, L] batch, got shape {wav.shape}")
    config = factory.load_config(args.config)
    terms = parity.reference_terms(
        load_pth(args.g_pth),
        load_pth(args.do_pth),
        wav.astype(np.float32),
        config,
        fresh_stft=args.fresh_stft,
    )
    print(json.dumps(parity.scalar_terms(terms)))
    sys.stdout.flush()
    return terms


if __name__ == "__main__":
    main()
