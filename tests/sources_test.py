"""``data.sources``: user paths (files, directories, globs) -> audio files with their names
relative to the directory given; clear errors for paths that name nothing; epoch length."""

from __future__ import annotations

import os

import pytest

from hificodec_jax.audio.audio_io import expand_audio_paths
from hificodec_jax.data.sources import steps_per_epoch


def audio_files(paths, **kwargs):
    return [f for f, _ in expand_audio_paths(paths, **kwargs)]


def _touch(root, *names):
    for n in names:
        path = root / n
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_directories_keep_relative_names_and_every_extension(tmp_path):
    _touch(tmp_path / "in", "a/x.wav", "b/x.wav", "c.OPUS", "d.m4a", "notes.txt", ".hidden.wav")
    got = expand_audio_paths(str(tmp_path / "in"))
    assert [rel for _, rel in got] == [os.path.join("a", "x.wav"), os.path.join("b", "x.wav"),
                                       "c.OPUS", "d.m4a"]  # fmt: skip
    assert all(os.path.isabs(f) and os.path.isfile(f) for f, _ in got)


def test_files_globs_and_other_extensions(tmp_path):
    _touch(tmp_path, "one.flac", "s1.hfc", "s2.hfc", "sub/s3.hfc", "other.wav")
    files = audio_files(
        [str(tmp_path / "one.flac"), str(tmp_path / "s*.hfc")], extensions=(".hfc",)
    )
    assert files == [str(tmp_path / n) for n in ("one.flac", "s1.hfc", "s2.hfc")]
    assert [r for _, r in expand_audio_paths(tmp_path, extensions=(".hfc",))] == [
        "s1.hfc", "s2.hfc", os.path.join("sub", "s3.hfc")
    ]  # fmt: skip
    assert audio_files(str(tmp_path / "**" / "*.hfc"), extensions=(".hfc",))[-1].endswith("s3.hfc")


@pytest.mark.parametrize(
    "name, message",
    [("missing.wav", "no such file or directory: .*missing.wav"),
     ("nothing*.wav", "no files match .*nothing"),
     ("empty", "no files .* under .*empty")],
)  # fmt: skip
def test_paths_that_name_no_audio_raise_naming_the_argument(tmp_path, name, message):
    (tmp_path / "empty").mkdir()
    _touch(tmp_path, "empty/readme.txt")
    with pytest.raises(FileNotFoundError, match=message):
        audio_files([str(tmp_path / name)])


def test_steps_per_epoch_counts_full_batches():
    assert steps_per_epoch(1000, 64) == 15  # the last partial batch is dropped
    assert steps_per_epoch(64, 64) == 1
    assert steps_per_epoch(5, 8) == 1  # a corpus smaller than a batch still decays
    with pytest.raises(ValueError, match="batch_size"):
        steps_per_epoch(10, 0)
