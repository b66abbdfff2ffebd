"""The built-in demo corpus: speech synthesised with eSpeak NG when no dataset is configured.

eSpeak NG comes from the ``espeakng-loader`` wheel (its bundled ``libespeak-ng`` and voice
data, driven through ctypes; no system package needed). Utterances cycle over a few dozen
"speakers" (language voices x voice variants x pitch / rate settings) reading built-in
sentences in their language, are resampled from eSpeak's 22050 Hz to the requested rate with
soxr, given a random peak level in [0.3, 0.9], and written as 16-bit wav files to
``<directory>/<speaker>/<index>.wav``. Synthetic and buzzy, but real phonetic speech in many
voices: enough for demos and smoke tests, not for a useful codec.

Generation is deterministic and idempotent: files are written to a temporary name and renamed,
existing complete files are kept, and a ``.complete.json`` marker makes later calls free.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import threading

import numpy as np

ESPEAK_RATE = 22050
_MARKER = ".complete.json"
_FORMAT_VERSION = 1

# (eSpeak voice file, language of its sentences)
VOICES = (
    ("en-us", "en"),
    ("en", "en"),
    ("en-gb-x-rp", "en"),
    ("en-gb-scotland", "en"),
    ("en-029", "en"),
    ("en-us-nyc", "en"),
    ("de", "de"),
    ("fr", "fr"),
    ("es", "es"),
    ("it", "it"),
    ("pt", "pt"),
    ("nl", "nl"),
)
VARIANTS = ("", "m1", "m3", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt3")

SENTENCES = {
    "en": (
        "The quick brown fox jumps over the lazy dog.",
        "Please call Stella and ask her to bring these things with her from the store.",
        "A neural audio codec turns speech into a short list of numbers and back again.",
        "She sells sea shells by the sea shore, and the shells she sells are surely seashells.",
        "Every morning the baker opens the shop at half past six.",
        "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
        "The weather report promised sunshine, but it rained all afternoon.",
        "Seven silver spoons were found under the old wooden floor.",
        "Could you repeat the last number, please? I did not quite catch it.",
        "The train to the airport leaves from platform nine in twenty minutes.",
        "Bright yellow leaves drifted slowly across the quiet park.",
        "We measured the signal to noise ratio at three different bit rates.",
        "Thank you for calling. Your message is important to us.",
        "The orchestra tuned their instruments while the audience found their seats.",
        "He whispered the answer, then laughed out loud at his own joke.",
        "Turn left at the second traffic light and follow the river road.",
        "Zebras, jaguars and koalas live in very different parts of the world.",
        "Is it true that the museum is closed on Mondays and public holidays?",
        "Fresh bread, cheese and a bowl of soup make a perfect winter lunch.",
        "The committee will announce its decision early next week.",
        "Quietly, the cat jumped onto the windowsill and watched the birds.",
        "One, two, three, four, five, six, seven, eight, nine, ten.",
        "Our flight was delayed by three hours because of thick fog.",
        "Patience and practice are the keys to learning any musical instrument.",
        "The children built a huge sandcastle before the tide came in.",
        "Why does the kettle always boil faster when nobody is watching it?",
    ),
    "de": (
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Morgen früh fahren wir mit dem Zug nach Berlin.",
        "Könnten Sie bitte das Fenster schließen? Es ist sehr kalt hier.",
        "Im Sommer blühen im Garten viele bunte Blumen.",
    ),
    "fr": (
        "Le vif renard brun saute par-dessus le chien paresseux.",
        "Nous prenons le petit déjeuner sur la terrasse chaque matin.",
        "Pourriez-vous m'indiquer le chemin de la gare, s'il vous plaît?",
        "La pluie tombe doucement sur les toits de la vieille ville.",
    ),
    "es": (
        "El veloz murciélago hindú comía feliz cardillo y kiwi.",
        "Mañana por la tarde vamos a visitar a mis abuelos.",
        "¿Sabes a qué hora abre la biblioteca los sábados?",
        "El mar estaba tranquilo y el cielo completamente azul.",
    ),
    "it": (
        "Il treno per Roma parte alle otto e un quarto.",
        "Oggi il cielo è limpido e il sole splende sulle colline.",
        "Mi potrebbe portare un bicchiere d'acqua, per favore?",
    ),
    "pt": (
        "O rápido cão castanho saltou sobre a cerca do jardim.",
        "Amanhã vamos ao mercado comprar frutas e legumes frescos.",
        "Você sabe onde fica a estação de comboios mais próxima?",
    ),
    "nl": (
        "De snelle bruine vos springt over de luie hond.",
        "Morgen gaan we met de fiets naar het strand.",
        "Wil je alsjeblieft de deur dicht doen? Het tocht hier.",
    ),
}

_LOCK = threading.Lock()  # eSpeak NG has global state: one synthesis at a time per process
_ENGINE = None


class _Engine:
    """ctypes binding to the wheel's libespeak-ng in synchronous retrieval mode."""

    _CALLBACK = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
    )

    def __init__(self):
        try:
            import espeakng_loader

            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (ImportError, OSError, RuntimeError) as error:
            raise RuntimeError(
                "the built-in demo corpus needs eSpeak NG from the `espeakng-loader` wheel "
                f"({type(error).__name__}: {error}). Install it (pip install espeakng-loader) "
                "or train on your own audio: --config.data.dir=/path/to/audio (a directory of "
                "wav/flac files) or --config.data.tfds_dir=... (see hificodec_jax.data.corpora)."
            ) from error
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(2, 0, data_path.encode(), 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {data_path}")
        self.rate = rate
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # kept alive as long as the engine
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # continue synthesis

    def synth(self, text: str, voice: str, *, rate: int, pitch: int, pitch_range: int):
        """int16 ``[T]`` at ``self.rate``."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        for parameter, value in ((1, rate), (3, pitch), (4, pitch_range)):  # RATE, PITCH, RANGE
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks = []
        data = text.encode("utf-8")
        # POS_CHARACTER = 1, espeakCHARS_UTF8 = 1
        error = self._lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)
        if error != 0:
            raise RuntimeError(f"espeak_Synth failed with error {error}")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def speakers(num: int = 24, seed: int = 0) -> list[dict]:
    """``num`` deterministic synthetic speakers: voice, variant, base pitch/range and rate."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(num):
        voice, lang = VOICES[k % len(VOICES)]
        variant = VARIANTS[(k * 7 + k // len(VOICES)) % len(VARIANTS)]
        out.append(
            dict(
                name=f"{k:02d}_{voice}{'_' + variant if variant else ''}",
                voice=f"{voice}+{variant}" if variant else voice,
                lang=lang,
                pitch=int(rng.integers(25, 76)),
                pitch_range=int(rng.integers(30, 91)),
                rate=int(rng.integers(140, 201)),
            )
        )
    return out


def synthesize(index: int, sample_rate: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """Utterance ``index`` of the corpus: ``(speaker name, float32 [T] at sample_rate)``."""
    from hificodec_jax.audio import audio_io

    spk_list = speakers(seed=seed)
    spk = spk_list[index % len(spk_list)]
    rng = np.random.default_rng([seed, index])
    sentences = SENTENCES[spk["lang"]]
    text = sentences[int(rng.integers(len(sentences)))]
    with _LOCK:
        engine = _engine()
        pcm = engine.synth(
            text,
            spk["voice"],
            rate=spk["rate"] + int(rng.integers(-15, 16)),
            pitch=int(np.clip(spk["pitch"] + rng.integers(-8, 9), 0, 100)),
            pitch_range=spk["pitch_range"],
        )
        native_rate = engine.rate
    wav = audio_io.resample(audio_io.int16_to_float(pcm), native_rate, sample_rate)
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak > 0:
        wav = wav * np.float32(rng.uniform(0.3, 0.9) / peak)
    return spk["name"], wav.astype(np.float32)


def _expected(sample_rate: int, num_utterances: int, seed: int) -> dict:
    return dict(
        version=_FORMAT_VERSION, sample_rate=sample_rate, num_utterances=num_utterances, seed=seed
    )


def ensure_demo_corpus(
    directory: str | os.PathLike, sample_rate: int, num_utterances: int = 200, seed: int = 0
) -> str:
    """Synthesise the demo corpus into ``directory`` unless it is already there; ``directory``.

    Raises ``RuntimeError`` (telling to pass ``--config.data.dir``) when eSpeak NG from the
    ``espeakng-loader`` wheel cannot be loaded.
    """
    import soundfile as sf

    directory = os.path.abspath(os.fspath(directory))
    marker = os.path.join(directory, _MARKER)
    expected = _expected(int(sample_rate), int(num_utterances), int(seed))
    if os.path.isfile(marker):
        with open(marker) as f:
            try:
                if json.load(f) == expected:
                    return directory
            except ValueError:
                pass
        shutil.rmtree(directory)  # ours (it has our marker), made with other settings
    _engine()  # fail early, with the message above, when eSpeak NG is missing
    os.makedirs(directory, exist_ok=True)
    spk_list = speakers(seed=seed)
    for index in range(num_utterances):
        speaker = spk_list[index % len(spk_list)]["name"]
        path = os.path.join(directory, speaker, f"{index:05d}.wav")
        if os.path.isfile(path):
            try:
                if sf.info(path).samplerate == sample_rate:
                    continue
            except RuntimeError:
                pass
        _, wav = synthesize(index, sample_rate, seed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{index:05d}.tmp{os.getpid()}")  # hidden
        sf.write(tmp, wav, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    tmp = f"{marker}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(expected, f)
    os.replace(tmp, marker)
    return directory
