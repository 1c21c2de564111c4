"""Tests for the modeling package: tagging, word vectors, vocabulary, retrieval metrics, search.

CPU only; builds its own tiny snapshots (contract of ``curation/snapshots/reader.py``) in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from modeling.harness import evaluation as ev  # noqa: E402
from modeling.lyric_encoder import Vocabulary, tag_name_words  # noqa: E402
from modeling.tagging import NUM_TAGS, extract_tags, imagenet_tag_names, load_tags  # noqa: E402
from modeling.word_vectors import load_word_vectors  # noqa: E402
from synthetic_task import write_snapshot  # noqa: E402


# ------------------------------------------------------------------ helpers
def make_jpeg(store: Path, seed: int) -> tuple[str, str]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (96, 72), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(0, 60, 2)
        draw.ellipse([int(x), int(y), int(x) + 30, int(y) + 25], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    rel = f"{sha[:2]}/{sha}.jpg"
    (store / sha[:2]).mkdir(parents=True, exist_ok=True)
    (store / rel).write_bytes(data)
    return sha, rel


@pytest.fixture(scope="session")
def glove():
    return load_word_vectors()


@pytest.fixture()
def image_snapshot(tmp_path):
    """Six real JPEGs + one corrupt file in an object store, referenced by a snapshot."""
    store = tmp_path / "store"
    rows = []
    for i in range(6):
        sha, rel = make_jpeg(store, i)
        rows.append(dict(post_id=f"p{i}", image_sha256=sha, image_path=rel, song_id=f"s{i % 3}", split_a="train", split_b="train"))
    bad = b"\xff\xd8\xff\xe0 this is not really a jpeg"
    bad_sha = hashlib.sha256(bad).hexdigest()
    (store / "bad").mkdir()
    (store / "bad" / "broken.jpg").write_bytes(bad)
    rows.append(dict(post_id="p-bad", image_sha256=bad_sha, image_path="bad/broken.jpg", song_id="s0", split_a="train", split_b="test"))
    songs = [dict(song_id=f"s{i}", title=f"t{i}", artist="a", modeling_text="golden retriever love") for i in range(3)]
    snap = write_snapshot(tmp_path / "snap", rows, songs)
    return snap, store, rows, bad_sha


# ------------------------------------------------------------------ tagging
def test_tag_names_are_imagenet():
    names = imagenet_tag_names()
    assert len(names) == NUM_TAGS and names[0] == "tench" and "golden retriever" in names


def test_extract_tags_shapes_sums_and_broken_image(image_snapshot, tmp_path):
    snap, store, rows, bad_sha = image_snapshot
    out = tmp_path / "tags.parquet"
    summary = extract_tags(snap, store, out, batch_size=4, progress=False)
    assert summary["n_images"] == 7 and summary["n_tagged"] == 7 and summary["n_errors"] == 1
    shas, probs, names = load_tags(out)
    assert len(shas) == 6 and bad_sha not in shas
    assert probs.shape == (6, NUM_TAGS) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (probs >= 0).all() and names == imagenet_tag_names()
    table = pq.read_table(out).to_pandas()
    bad = table[table.image_sha256 == bad_sha].iloc[0]
    assert bad.status == "error" and bad.error and bad.probs is None
    assert set(table[table.status == "ok"].image_sha256) == {r["image_sha256"] for r in rows[:6]}
    assert pq.read_schema(out).field("probs").type.list_size == NUM_TAGS
    assert not (tmp_path / "tags.parquet.parts").exists()


def test_extract_tags_resumes(image_snapshot, tmp_path, monkeypatch):
    snap, store, rows, bad_sha = image_snapshot
    out = tmp_path / "tags.parquet"
    from modeling import tagging

    # A run that crashes after its first batch leaves a checkpoint behind ...
    real_predict = tagging.Tagger.predict
    calls = {"n": 0}

    def crashing(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real_predict(self, batch)

    monkeypatch.setattr(tagging.Tagger, "predict", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_tags(snap, store, out, batch_size=2, checkpoint_every=2, progress=False)
    monkeypatch.setattr(tagging.Tagger, "predict", real_predict)
    assert list((tmp_path / "tags.parquet.parts").glob("part-*.parquet"))

    # ... which the next run skips.
    s2 = extract_tags(snap, store, out, batch_size=2, progress=False)
    assert s2["n_skipped"] == 2 and s2["n_tagged"] == 5
    shas, probs, _ = load_tags(out)
    assert len(shas) == 6 == len(set(shas))

    # Done images are skipped; the broken one is retried unless told not to.
    s3 = extract_tags(snap, store, out, progress=False)
    assert s3["n_skipped"] == 6 and s3["n_tagged"] == 1 and s3["n_errors"] == 1
    s4 = extract_tags(snap, store, out, retry_errors=False, progress=False)
    assert s4["n_tagged"] == 0
    shas4, probs4, _ = load_tags(out)
    assert shas4 == shas and np.array_equal(probs4, probs)


# ------------------------------------------------------------------ word vectors
def test_packaged_glove_and_cache(tmp_path, glove):
    assert glove.vector_size == 50 and len(glove.index_to_key) == 400_000 and "retriever" in glove.key_to_index
    first = load_word_vectors("glove-6b-50d", cache_dir=tmp_path / "wv")
    assert (tmp_path / "wv" / "glove-6b-50d.kv").exists()
    second = load_word_vectors("glove-6b-50d", cache_dir=tmp_path / "wv")
    assert isinstance(second.vectors, np.memmap)
    np.testing.assert_array_equal(second["dog"], first["dog"])
    np.testing.assert_array_equal(second["dog"], glove["dog"])


def test_word2vec_files(tmp_path):
    from gensim.models import KeyedVectors

    (tmp_path / "w2v.txt").write_text("3 4\ncat 1 0 0 0\ndog 0 1 0 0\nsky 0 0 1 0\n")
    (tmp_path / "glove.txt").write_text("cat 1 0 0 0\ndog 0 1 0 0\n")
    kv = load_word_vectors(tmp_path / "w2v.txt", cache_dir=tmp_path / "cache")
    assert kv.vector_size == 4 and kv.index_to_key == ["cat", "dog", "sky"]
    assert list((tmp_path / "cache").glob("w2v-*.kv"))
    assert load_word_vectors(str(tmp_path / "glove.txt")).index_to_key == ["cat", "dog"]
    kv.save_word2vec_format(str(tmp_path / "w2v.bin"), binary=True)
    kb = load_word_vectors(tmp_path / "w2v.bin")
    np.testing.assert_array_equal(kb["sky"], [0, 0, 1, 0])
    assert isinstance(load_word_vectors(kb), KeyedVectors)


def test_missing_word_vectors_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="glove-6b-50d"):
        load_word_vectors(tmp_path / "GoogleNews-vectors-negative300.bin")


# ------------------------------------------------------------------ encoder and model
class _KV:
    def __init__(self, words, dim=8, seed=0):
        rng = np.random.default_rng(seed)
        self.key_to_index = {w: i for i, w in enumerate(words)}
        self.vectors = rng.normal(size=(len(words), dim)).astype(np.float32)
        self.vector_size = dim

    def __getitem__(self, w):
        return self.vectors[self.key_to_index[w]]


def test_vocabulary_and_tag_words():
    kv = _KV(["love", "dog", "night"])
    vocab = Vocabulary.build(["love dog zzz love", "night"], kv)
    assert vocab.words == ["<pad>", "love", "dog", "night"]
    assert vocab.encode("love zzz night dog", max_len=2) == [1, 3]
    assert vocab.encode("zzz qqq") == [0]
    assert tag_name_words("jack-o'-lantern") == ["jack", "o", "lantern"]
    assert tag_name_words("golden retriever") == ["golden", "retriever"]


# ------------------------------------------------------------------ metrics
def test_ranks_recall_median_on_known_matrices():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3], [0.7, 0.2, 0.1]])
    relevant = np.eye(3, dtype=bool)
    ranks = ev.closest_relevant_rank(scores, relevant)
    assert ranks.tolist() == [1, 1, 3]
    assert ev.recall_at_k(ranks, 1) == pytest.approx(200 / 3)
    assert ev.median_rank(np.array([1, 2, 3, 10])) == 2.5
    assert ev.recall_at_k(np.array([1, 2, 3, 10]), 5) == 75.0
    # Ties are pessimistic: a constant scorer gets the worst rank, a tie with one other gives rank 2.
    assert ev.closest_relevant_rank(np.zeros((2, 4)), np.eye(2, 4, dtype=bool)).tolist() == [4, 4]
    assert ev.closest_relevant_rank(np.array([[0.5, 0.5, 0.1]]), np.array([[False, True, False]])).tolist() == [2]
    # Several relevant items: the closest one counts; NaN ranks last.
    rel = np.array([[True, False, True, False]])
    assert ev.closest_relevant_rank(np.array([[0.1, 0.9, 0.8, 0.2]]), rel).tolist() == [2]
    assert ev.closest_relevant_rank(np.array([[np.nan, 0.9, 0.1, 0.2]]), np.array([[True, False, False, False]])).tolist() == [4]
    with pytest.raises(ValueError):
        ev.closest_relevant_rank(np.zeros((1, 3)), np.zeros((1, 3), dtype=bool))


def test_chance_figures():
    c = ev.chance_metrics(100, [1] * 7, [1, 5, 10, 50])
    assert c["R@1"] == pytest.approx(1.0) and c["R@10"] == pytest.approx(10.0) and c["MedR"] == 50.5
    assert ev.chance_metrics(101, [1], [1])["MedR"] == 51.0
    two = ev.chance_metrics(10, [2], [1, 5])  # P(best of 2 in top 5) = 1 - C(8,5)/C(10,5)
    assert two["R@1"] == pytest.approx(20.0) and two["R@5"] == pytest.approx(100 * (1 - 56 / 252)) and two["MedR"] == 3.0


def test_evaluate_scores_perfect_and_reversed():
    rel = np.eye(20, dtype=bool)
    ts = ev.TestSet("b", [str(i) for i in range(20)], np.zeros((20, NUM_TAGS)), [str(i) for i in range(20)], [""] * 20, rel, [])
    perfect = ev.evaluate_scores(np.eye(20), ts)
    assert perfect["image_to_song"]["model"]["R@1"] == 100.0 and perfect["song_to_image"]["model"]["MedR"] == 1.0
    worst = ev.evaluate_scores(-np.eye(20), ts)
    assert worst["image_to_song"]["model"]["R@10"] == 0.0 and worst["image_to_song"]["model"]["MedR"] == 20.0
    assert set(perfect["image_to_song"]["model"]) == {"R@1", "R@3", "R@5", "R@10", "MedR"}
    with pytest.raises(ValueError):
        ev.evaluate_scores(np.eye(19), ts)


def test_bootstrap_intervals_hold_the_estimate_and_shrink_with_queries():
    rng = np.random.default_rng(0)
    small, large = rng.integers(1, 50, 40), rng.integers(1, 50, 4000)
    for ranks in (small, large):
        ci = ev.bootstrap_ci(ranks, ["R@10", "MedR"])
        assert ci["R@10"][0] <= ev.recall_at_k(ranks, 10) <= ci["R@10"][1]
        assert ci["MedR"][0] <= ev.median_rank(ranks) <= ci["MedR"][1]
    width = lambda r: np.diff(ev.bootstrap_ci(r, ["R@10"])["R@10"])[0]  # noqa: E731
    assert width(large) < width(small) / 3
    assert ev.bootstrap_ci(np.ones(30, int), ["R@1"])["R@1"] == [100.0, 100.0]


# ------------------------------------------------------------------ retrieval
def test_search_songs_for_an_image_file(tmp_path, glove):
    from modeling.harness.training import train_models
    from modeling.retrieval import search_songs
    from modeling.tagging import Tagger
    from synthetic_task import synthetic_task

    snap, tags = synthetic_task(tmp_path, n_songs=12)
    train_models(snap, tags, tmp_path / "run", split="b", models=("paper",), attention=False, epochs=1, hidden=8,
                 mlp_hidden=16, word_vectors=glove, device="cpu")
    sha, rel = make_jpeg(tmp_path, 42)
    results = search_songs(tmp_path / "run", snap, tmp_path / rel, top_k=5, tags_model=Tagger("cpu"), device="cpu")
    assert len(results) == 5 and [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert {"song_id", "title", "artist", "score"} <= set(results[0])
    assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:]))
    with pytest.raises(FileNotFoundError):
        search_songs(tmp_path / "run", snap, tmp_path / "nope.jpg")
