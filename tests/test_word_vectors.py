"""Word vectors trained here with gensim word2vec: learning, determinism, caching, and the shell's specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modeling import word_vectors as wv
from modeling.word_vectors import load_word_vectors, train_word2vec, trained_word2vec

ROOT = Path(__file__).resolve().parents[1]
ANIMALS = ["cat", "dog", "horse", "rabbit"]
VEHICLES = ["truck", "train", "tractor", "bicycle"]


def _corpus(n: int = 400) -> list[str]:
    """Animals and vehicles each in their own contexts: word2vec must put each family together."""
    rng = np.random.default_rng(0)
    animal_ctx = "fur paws barn hay meadow fed purred galloped nibbled".split()
    vehicle_ctx = "engine wheels fuel garage highway drove parked diesel rails".split()
    texts = []
    for _ in range(n):
        family, ctx = (ANIMALS, animal_ctx) if rng.random() < 0.5 else (VEHICLES, vehicle_ctx)
        words = [str(w) for w in rng.choice(ctx, 5)]
        words.insert(int(rng.integers(0, 6)), str(rng.choice(family)))
        texts.append(" ".join(words))
    return texts


def _sim(kv, a: str, b: str) -> float:
    return float(kv.similarity(a, b))


def test_word2vec_learns_shared_contexts():
    kv = train_word2vec(_corpus(), vector_size=16, window=3, min_count=1, epochs=30)
    within = np.mean([_sim(kv, a, b) for fam in (ANIMALS, VEHICLES) for a in fam for b in fam if a < b])
    across = np.mean([_sim(kv, a, b) for a in ANIMALS for b in VEHICLES])
    assert within > across + 0.2, (within, across)
    assert kv.most_similar("cat", topn=1)[0][0] in ANIMALS + "fur paws barn hay meadow fed purred galloped nibbled".split()


def test_word2vec_is_the_same_in_another_process_with_another_hash_seed(tmp_path):
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[2]);"
            "from tests.test_word_vectors import _corpus; from modeling.word_vectors import train_word2vec;"
            "kv = train_word2vec(_corpus(100), vector_size=8, min_count=1, epochs=3, seed=4);"
            "np.save(sys.argv[1], kv.vectors); open(sys.argv[1] + '.words', 'w').write(' '.join(kv.index_to_key))")
    for name, hash_seed in (("a", "1"), ("b", "2")):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{name}.npy"), str(ROOT)], check=True, env=env,
                       cwd=ROOT)
    assert (tmp_path / "a.npy.words").read_text() == (tmp_path / "b.npy.words").read_text()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_word2vec_refuses_empty_text():
    with pytest.raises(ValueError, match="no words"):
        train_word2vec(["", "the and of"])  # stop words only
    with pytest.raises(ValueError, match="occurs 5 times"):
        train_word2vec(["lonely words here"], min_count=5)


def test_trained_word2vec_is_cached_per_corpus(tmp_path, monkeypatch):
    texts = _corpus(100)
    first = trained_word2vec(texts, tmp_path, "toy", vector_size=8, min_count=1, epochs=2)
    kv = load_word_vectors(first)
    assert first.name.startswith("word2vec-toy-") and set(ANIMALS) <= set(kv.index_to_key)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(wv, "train_word2vec", no_training)
    assert trained_word2vec(texts, tmp_path, "toy", vector_size=8, min_count=1, epochs=2) == first
    # another corpus or other parameters are another file
    with pytest.raises(AssertionError, match="trained again"):
        trained_word2vec(texts + ["one more text about cats"], tmp_path, "toy", vector_size=8, min_count=1, epochs=2)
    with pytest.raises(AssertionError, match="trained again"):
        trained_word2vec(texts, tmp_path, "toy", vector_size=8, min_count=1, epochs=3)


def test_trained_specs_are_not_files():
    with pytest.raises(ValueError, match="resolve it to a file first"):
        load_word_vectors("word2vec-english")


# ----------------------------------------------------------------------------------- the shell's specs
def _snapshot(path: Path, texts: list[str]) -> Path:
    path.mkdir(parents=True)
    pd.DataFrame({"post_id": ["p0"], "image_sha256": ["0" * 64], "image_path": ["x.jpg"], "song_id": ["s0"],
                  "title": ["t"], "artist": ["a"], "mood": [None], "favorite_count": [1], "split_a": ["train"],
                  "split_b": ["train"]}).to_parquet(path / "triplets.parquet")
    pd.DataFrame({"song_id": [f"s{i}" for i in range(len(texts))], "title": "t", "artist": "a", "lyric": texts,
                  "modeling_text": texts}).to_parquet(path / "songs.parquet")
    (path / "manifest.json").write_text(json.dumps({"version": path.name, "seed": 0}))
    return path


def _settings(tmp_path, spec: str):
    from image2song.settings import Settings

    return Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path / "home"), "IMAGE2SONG_WORD_VECTORS": spec})


def test_stage_trains_word2vec_on_the_snapshot_lyrics(tmp_path):
    from image2song import stages

    snap = _snapshot(tmp_path / "2026-01-01", _corpus(200))
    settings = _settings(tmp_path, "word2vec-snapshot")
    path = stages.word_vectors(settings, str(snap))
    assert Path(path).parent == settings.home / "word-vectors" and "snapshot-2026-01-01" in Path(path).name
    kv = load_word_vectors(path)
    assert set(ANIMALS + VEHICLES) <= set(kv.index_to_key)
    assert stages.word_vectors(settings, str(snap)) == path  # trained once
    with pytest.raises(ValueError, match="need a snapshot"):
        stages.word_vectors(settings)
    # the packaged GloVe and a user's file pass through untouched
    assert stages.word_vectors(_settings(tmp_path, "glove-6b-50d"), str(snap)) == "glove-6b-50d"
    assert stages.word_vectors(settings, str(snap), spec="/data/GoogleNews.bin") == "/data/GoogleNews.bin"


def test_stage_trains_word2vec_on_packaged_english_text(tmp_path, monkeypatch):
    from image2song import stages
    from image2song.demo import material

    seen = []

    def few_texts():
        seen.append(True)
        return _corpus(100)

    real_train = wv.train_word2vec
    monkeypatch.setattr(material, "packaged_english_texts", few_texts)
    monkeypatch.setattr(wv, "train_word2vec",
                        lambda texts, **p: real_train(texts, **{**p, "vector_size": 8, "min_count": 1, "epochs": 1}))
    path = stages.word_vectors(_settings(tmp_path, "word2vec-english"))
    assert seen and "word2vec-english-" in Path(path).name and "cat" in load_word_vectors(path).key_to_index



@pytest.mark.skipif(not Path("/usr/share/games/fortunes/songs-poems").exists(), reason="needs Debian fortunes")
def test_packaged_english_text_is_every_english_file_and_the_bible():
    from image2song.demo.material import ALL_ENGLISH_FORTUNE_FILES, packaged_english_texts

    texts = packaged_english_texts()
    joined = "\n".join(texts)
    assert len(texts) > 8000
    assert "The LORD is my shepherd; I shall not want." in joined or not _has_bible()
    assert "In the beginning God created the heaven and the earth." in joined or not _has_bible()
    assert len(ALL_ENGLISH_FORTUNE_FILES) >= 40 and "songs-poems" in ALL_ENGLISH_FORTUNE_FILES
    assert "italia" not in ALL_ENGLISH_FORTUNE_FILES  # fortunes-it puts Italian files in the same folder


def _has_bible() -> bool:
    import shutil

    return shutil.which("bible") is not None
