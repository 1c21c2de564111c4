"""Tests for the modeling package (tags: tests/test_tags.py; models: test_models.py; harness: test_harness.py;
search: test_search.py): word vectors, vocabulary, retrieval metrics.

CPU only; builds its own tiny snapshots (contract of ``curation/snapshots/reader.py``) in tmp_path.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from modeling.harness import evaluation as ev  # noqa: E402
from modeling.lyric_encoder import Vocabulary, tag_name_words  # noqa: E402
from modeling.word_vectors import load_word_vectors  # noqa: E402

NUM_TAGS = 1000


@pytest.fixture(scope="session")
def glove():
    return load_word_vectors()


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


def test_paired_difference_sees_a_shift_that_separate_intervals_miss():
    rng = np.random.default_rng(1)
    base = rng.integers(1, 200, 600)
    better = np.maximum(1, base - rng.integers(0, 6, 600))  # every query a few ranks better, or the same
    paired = ev.paired_difference(better, base, ["R@10", "MedR"])
    assert paired["R@10"]["difference"] == pytest.approx(ev.recall_at_k(better, 10) - ev.recall_at_k(base, 10))
    assert paired["R@10"]["ci95"][0] > 0 and paired["MedR"]["ci95"][1] < 0  # shown better on both
    apart = ev.bootstrap_ci(better, ["MedR"])["MedR"], ev.bootstrap_ci(base, ["MedR"])["MedR"]
    assert apart[0][1] >= apart[1][0]  # while the two separate MedR intervals overlap
    same = ev.paired_difference(base, base, ["R@10", "MedR"])
    assert same["R@10"] == {"difference": 0.0, "ci95": [0.0, 0.0]} and same["MedR"]["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same queries"):
        ev.paired_difference(base, base[:-1])
