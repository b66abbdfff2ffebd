"""Local speech corpora -> TFDS ArrayRecord data (no network, no TensorFlow).

:func:`prepare_corpus` reads your own downloaded copy of a corpus, resamples every utterance to
the model's rate and writes ``train`` / ``validation`` ArrayRecord shards with the TFDS builder
``local_speech`` (features: ``audio`` int16 PCM ``[T]``, ``id``, ``speaker_id``, ``duration``
in seconds; the rate is in the dataset metadata). Read them back with
``input_pipeline.ArrayRecordAudioSource(data_dir, "train")`` (or
``tfds.builder_from_directory(data_dir).as_data_source()``).

Layouts (``root`` may be the corpus directory or the audio directory inside it):

* ``libritts`` (also LibriTTS-R): ``root/<subset e.g. train-clean-100>/<speaker>/<chapter>/<utt>.wav``
* ``vctk``: ``root/wav48_silence_trimmed/<speaker>/<utt>_mic1.flac`` (``mic`` picks mic1/mic2)
  or the older ``root/wav48/<speaker>/<utt>.wav``
* ``aishell``: ``root/data_aishell/wav/<subset train|dev|test>/<speaker>/<utt>.wav``
  (the per-speaker ``.tar.gz`` archives extracted in place)
* ``generic``: any tree of audio files; the speaker is the file's parent directory name.

The held-out split is deterministic: by default whole speakers are held out, chosen by a
stable hash of the speaker id (SHA-1 with ``seed``), so a speaker's membership never depends on
the rest of the corpus; ``split_by="utterance"`` hashes utterance ids instead (used
automatically when the corpus has a single speaker).

CLI: ``hificodec-jax prepare --kind libritts --root R --out O --sample_rate 16000`` (also
``python -m hificodec_jax.data.corpora ...``)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tqdm import tqdm

from hificodec_jax.audio import audio_io

KINDS = ("libritts", "vctk", "aishell", "generic")


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str
    speaker: str
    path: str
    subset: str = ""


# ----------------------------------------------------------------------------------------------
# Corpus layouts
# ----------------------------------------------------------------------------------------------


def _first_dir(root: str, candidates: Sequence[str]) -> str:
    for c in candidates:
        d = os.path.join(root, c)
        if os.path.isdir(d):
            return d
    return root


def _rel_parts(path: str, base: str) -> list[str]:
    return os.path.relpath(path, base).split(os.sep)


def scan_corpus(
    kind: str, root: str, *, subsets: Sequence[str] | None = None, mic: str = "mic1"
) -> list[Utterance]:
    """The utterances of a local corpus copy, sorted by id."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"corpus root {root} is not a directory")
    utts: list[Utterance] = []
    if kind == "libritts":
        for path in audio_io.list_audio_files(root, allow_empty=True):
            parts = _rel_parts(path, root)
            if len(parts) < 3 or not path.lower().endswith(".wav"):
                continue
            subset = parts[-4] if len(parts) >= 4 else ""
            utts.append(Utterance(_stem(path), parts[-3], path, subset))
    elif kind == "vctk":
        base = _first_dir(root, ("wav48_silence_trimmed", "wav48"))
        for path in audio_io.list_audio_files(base, allow_empty=True):
            parts = _rel_parts(path, base)
            stem = _stem(path)
            if "_mic" in stem:
                stem, _, file_mic = stem.rpartition("_")
                if file_mic != mic:
                    continue
            utts.append(Utterance(stem, parts[-2] if len(parts) >= 2 else "unknown", path))
    elif kind == "aishell":
        base = _first_dir(root, (os.path.join("data_aishell", "wav"), "wav"))
        for path in audio_io.list_audio_files(base, allow_empty=True):
            parts = _rel_parts(path, base)
            subset = parts[-3] if len(parts) >= 3 else ""
            utts.append(
                Utterance(_stem(path), parts[-2] if len(parts) >= 2 else "unknown", path, subset)
            )
        if not utts and any(f.endswith(".tar.gz") for _, _, fs in os.walk(base) for f in fs):
            raise FileNotFoundError(f"{base} holds .tar.gz archives: extract them in place first")
    elif kind == "generic":
        for path in audio_io.list_audio_files(root, allow_empty=True):
            parts = _rel_parts(path, root)
            speaker = parts[-2] if len(parts) >= 2 else os.path.basename(root)
            utts.append(Utterance(os.path.splitext("/".join(parts))[0], speaker, path))
    else:
        raise ValueError(f"unknown corpus kind {kind!r}; one of {KINDS}")
    if subsets:
        utts = [u for u in utts if u.subset in set(subsets)]
    if not utts:
        raise FileNotFoundError(f"no {kind} audio found under {root} (subsets={subsets})")
    dupes = [k for k, n in collections.Counter(u.id for u in utts).items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate utterance ids in {root}, e.g. {dupes[:3]}: use kind='generic'")
    return sorted(utts, key=lambda u: u.id)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def split_utterances(
    utts: Sequence[Utterance], held_out_fraction: float, seed: int = 0, split_by: str = "speaker"
) -> tuple[list[Utterance], list[Utterance]]:
    """``(train, validation)`` by stable hashing of speaker (default) or utterance ids."""
    if split_by not in ("speaker", "utterance"):
        raise ValueError(f"split_by must be 'speaker' or 'utterance', got {split_by!r}")
    if split_by == "speaker" and len({u.speaker for u in utts}) < 2:
        split_by = "utterance"  # one speaker: hold out utterances instead
    key = (lambda u: u.speaker) if split_by == "speaker" else (lambda u: u.id)
    held = audio_io.held_out_groups([key(u) for u in utts], held_out_fraction, seed)
    return [u for u in utts if key(u) not in held], [u for u in utts if key(u) in held]


# ----------------------------------------------------------------------------------------------
# The TFDS builder
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class LocalSpeechConfig(tfds.core.BuilderConfig):
    """What to read (``kind``, ``root``) and how to cut and resample it."""

    kind: str = "generic"
    root: str = ""
    sample_rate: int = 16000
    held_out_fraction: float = 0.02
    seed: int = 0
    split_by: str = "speaker"
    subsets: tuple[str, ...] | None = None
    mic: str = "mic1"
    num_workers: int = 4


class LocalSpeech(tfds.core.GeneratorBasedBuilder):
    """Speech from a local corpus copy as int16 PCM at one sample rate, train / validation.

    Always built with a :class:`LocalSpeechConfig` (see :func:`prepare_corpus`); there are no
    predefined configs since every corpus copy lives somewhere else.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "int16 audio, id, speaker_id, duration; speaker-hashed split."}

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{cfg.kind} speech from {cfg.root} at {cfg.sample_rate} Hz (int16 PCM).",
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                    "id": tfds.features.Text(),
                    "speaker_id": tfds.features.Text(),
                    "duration": tfds.features.Scalar(dtype=np.float32),
                }
            ),
            supervised_keys=None,
            metadata=tfds.core.MetadataDict(
                sample_rate=int(cfg.sample_rate), kind=cfg.kind, split_by=cfg.split_by
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local data only
        cfg = self.builder_config
        utts = scan_corpus(cfg.kind, cfg.root, subsets=cfg.subsets, mic=cfg.mic)
        train, held = split_utterances(utts, cfg.held_out_fraction, cfg.seed, cfg.split_by)
        logging.info("%s: %d train / %d validation utterances", cfg.root, len(train), len(held))
        splits = {"train": self._generate_examples(train, "train")}
        if held:
            splits["validation"] = self._generate_examples(held, "validation")
        return splits

    def _generate_examples(self, utts: Sequence[Utterance], split: str = "train") -> Iterator:
        cfg = self.builder_config
        skipped = 0
        with tqdm(total=len(utts), desc=f"{cfg.kind} {split}", unit="utt") as bar:
            for utt, wav in _decode_all(utts, cfg.sample_rate, cfg.num_workers):
                bar.update(1)
                if isinstance(wav, str):
                    skipped += 1
                    logging.warning("skipping %s: %s", utt.path, wav)
                    continue
                yield (
                    utt.id,
                    {
                        "audio": audio_io.float_to_int16(wav),
                        "id": utt.id,
                        "speaker_id": utt.speaker,
                        "duration": np.float32(wav.shape[0] / cfg.sample_rate),
                    },
                )
        if skipped:
            logging.warning("%s: skipped %d undecodable / non-finite / empty files", split, skipped)


def _decode(utt: Utterance, sample_rate: int):
    try:
        wav = audio_io.load_audio(utt.path, sample_rate)
    except Exception as error:  # one bad file must not stop the preparation
        return utt, f"undecodable: {type(error).__name__}: {error}"
    if wav.size == 0:
        return utt, "empty"
    if not np.all(np.isfinite(wav)):
        return utt, "non-finite samples"
    return utt, wav


def _decode_all(utts: Sequence[Utterance], sample_rate: int, num_workers: int):
    """``(utt, wav or reason)`` in order, decoded by a thread pool with a bounded read-ahead."""
    if num_workers <= 1:
        yield from (_decode(u, sample_rate) for u in utts)
        return
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        pending: collections.deque = collections.deque()
        for utt in utts:
            pending.append(pool.submit(_decode, utt, sample_rate))
            if len(pending) >= 4 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def prepare_corpus(
    kind: str,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sample_rate: int,
    held_out_fraction: float = 0.02,
    seed: int = 0,
    split_by: str = "speaker",
    subsets: Sequence[str] | None = None,
    mic: str = "mic1",
    num_workers: int = 4,
    name: str | None = None,
) -> str:
    """Write ``kind`` corpus ``root`` as ArrayRecord data under ``out_dir``; its directory.

    The result is ``out_dir/local_speech/<name>/1.0.0`` (``name`` defaults to
    ``<kind>_<sample_rate>``); already prepared data there are reused as they are.
    ``subsets`` keeps only those subset directories (LibriTTS ``train-clean-100`` ...,
    AISHELL ``train`` / ``dev`` / ``test``).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown corpus kind {kind!r}; one of {KINDS}")
    config = LocalSpeechConfig(
        name=name or f"{kind}_{int(sample_rate)}",
        version=LocalSpeech.VERSION,
        kind=kind,
        root=os.path.abspath(os.fspath(root)),
        sample_rate=int(sample_rate),
        held_out_fraction=float(held_out_fraction),
        seed=int(seed),
        split_by=split_by,
        subsets=tuple(subsets) if subsets else None,
        mic=mic,
        num_workers=int(num_workers),
    )
    out_dir = os.path.abspath(os.fspath(out_dir))
    builder = LocalSpeech(config=config, data_dir=out_dir, file_format="array_record")
    builder.download_and_prepare(
        download_dir=os.path.join(out_dir, "downloads"),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return os.fspath(builder.data_dir)


if __name__ == "__main__":  # the former entry point, kept as an alias of `hificodec-jax prepare`
    import sys

    from hificodec_jax.cli import main

    sys.exit(main(["prepare", *sys.argv[1:]]))
