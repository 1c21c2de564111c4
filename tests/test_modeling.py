"""Tests for the modeling package (tags: tests/test_tags.py): word vectors, encoder/model, training, evaluation, retrieval.

CPU only; builds its own tiny snapshots (contract of ``curation/snapshots/reader.py``) in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from modeling import evaluation as ev  # noqa: E402
from modeling.lyric_encoder import Vocabulary, pad_batch, tag_name_words  # noqa: E402
from modeling.model import Image2SongModel, ImageSpace, load_model  # noqa: E402
from modeling.tags import write_view  # noqa: E402
from modeling.tags.vocabularies import imagenet_class_names  # noqa: E402
from modeling.training import train  # noqa: E402
from modeling.word_vectors import load_word_vectors  # noqa: E402

NUM_TAGS = 1000
FILLER = "love night heart baby dance time dream fire rain sky road summer home light river song".split()


# ------------------------------------------------------------------ helpers
def write_snapshot(path: Path, triplets: list[dict], songs: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    t = pd.DataFrame(triplets)
    for col, default in (("title", "t"), ("artist", "a"), ("mood", None), ("favorite_count", 0)):
        if col not in t:
            t[col] = default
    t = t[["post_id", "image_sha256", "image_path", "song_id", "title", "artist", "mood", "favorite_count", "split_a", "split_b"]]
    t.to_parquet(path / "triplets.parquet")
    s = pd.DataFrame(songs)
    if "lyric" not in s:
        s["lyric"] = s["modeling_text"]
    s[["song_id", "title", "artist", "lyric", "modeling_text"]].to_parquet(path / "songs.parquet")
    (path / "manifest.json").write_text(json.dumps({"version": path.name, "seed": 0}))
    return path


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


def _toy_model(attention: bool, seed: int = 0) -> Image2SongModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(20, 8)).astype(np.float32)
    emb[0] = 0
    tag_emb = rng.normal(size=(NUM_TAGS, 8)).astype(np.float32)
    return Image2SongModel(emb, tag_emb, hidden=6, attention=attention, mlp_hidden=16).eval()


@pytest.mark.parametrize("attention", [False, True])
def test_forward_shapes_and_padding_invariance(attention):
    model = _toy_model(attention)
    seqs = [[1, 2, 3, 4, 5, 6, 7], [3, 4, 5], [9]]
    tokens, lengths = pad_batch(seqs)
    probs = torch.softmax(torch.randn(3, NUM_TAGS), -1)
    with torch.no_grad():
        out, s = model(tokens, lengths, probs, return_attention=True)
        alone = model(*pad_batch([seqs[1]]), probs[1:2])
    assert out.shape == (3, NUM_TAGS)
    # Padding must not change a lyric's vector (packed sequences, final real output).
    torch.testing.assert_close(out[1:2], alone, atol=1e-5, rtol=1e-5)
    if attention:
        assert s.shape == (3, 7)
        torch.testing.assert_close(s.sum(1), torch.ones(3))
        assert torch.all(s[1, 3:] == 0) and torch.all(s[2, 1:] == 0) and torch.all(s > -1)
        # The lyric vector depends on the image through the tag query.
        other = torch.softmax(torch.randn(3, NUM_TAGS) * 5, -1)
        with torch.no_grad():
            assert not torch.allclose(model(tokens, lengths, other), out)
    else:
        assert s is None
        with torch.no_grad():
            torch.testing.assert_close(model(tokens, lengths, torch.rand(3, NUM_TAGS)), out)


def test_query_vector_is_mean_of_top5_tag_embeddings():
    model = _toy_model(True)
    probs = torch.zeros(1, NUM_TAGS)
    top = [3, 17, 250, 600, 999]
    probs[0, top] = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1])
    expected = model.tag_embeddings[top].mean(0, keepdim=True)
    torch.testing.assert_close(model.query_vector(probs), expected)
    model.tag_embeddings[17] = 0  # a tag with no known word is skipped, not averaged in as zero
    expected = model.tag_embeddings[[3, 250, 600, 999]].mean(0, keepdim=True)
    torch.testing.assert_close(model.query_vector(probs), expected)


def test_image_space_reprs():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(ImageSpace.fit(p, "l2", center=False).transform(p), axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(ImageSpace.fit(p, "prob", center=False).transform(p), p)
    np.testing.assert_allclose(ImageSpace.fit(p, "sqrt", center=False).transform(p), np.sqrt(p), rtol=1e-6)
    for repr in ("sqrt", "logstd", "l2"):  # centred on the training images
        space = ImageSpace.fit(p, repr, center=True)
        np.testing.assert_allclose(space.transform(p).mean(0), 0.0, atol=1e-5)
        again = ImageSpace.from_dict(space.to_dict())
        np.testing.assert_array_equal(again.transform(p[:1]), space.transform(p[:1]))
    with pytest.raises(ValueError):
        ImageSpace.fit(p, "nope")


# ------------------------------------------------------------------ a learnable synthetic task
N_SONGS = 40


def _synthetic_task(root: Path, *, shuffle_train: bool, seed: int = 0):
    """Each song has a topic ImageNet class; its lyric holds the class name's words among fillers;
    its 5 images' tag vectors peak at that class. Split B: 4 train + 1 test image per song; split A:
    10 songs held out."""
    rng = np.random.default_rng(seed)
    names = list(imagenet_class_names())
    classes = [c for c in range(0, NUM_TAGS, 23) if len(tag_name_words(names[c])) <= 2][:N_SONGS]
    songs, rows, shas, probs = [], [], [], []
    test_a = set(range(0, N_SONGS, 4))
    for s, c in enumerate(classes):
        words = " ".join(tag_name_words(names[c]))
        filler = " ".join(rng.choice(FILLER, 6))
        songs.append(dict(song_id=f"s{s:02d}", title=f"Song {s}", artist=f"Artist {s}", modeling_text=f"{filler} {words} {filler}"))
        for j in range(5):
            logits = rng.normal(size=NUM_TAGS)
            logits[c] += 7.0
            p = np.exp(logits - logits.max())
            sha = hashlib.sha256(f"{s}-{j}".encode()).hexdigest()
            shas.append(sha)
            probs.append(p / p.sum())
            rows.append(dict(post_id=f"{s}-{j}", image_sha256=sha, image_path=f"x/{sha}", song_id=f"s{s:02d}",
                             split_a="test" if s in test_a else "train", split_b="test" if j == 0 else "train"))
    if shuffle_train:  # break the image-lyric link in the training part of split B
        train_rows = [r for r in rows if r["split_b"] == "train"]
        perm = rng.permutation(len(train_rows))
        ids = [train_rows[i]["song_id"] for i in perm]
        for r, sid in zip(train_rows, ids):
            r["song_id"] = sid
    snap = write_snapshot(root / ("shuffled" if shuffle_train else "snap"), rows, songs)
    tags = write_view(snap.parent / f"{snap.name}-tags.parquet", shas, np.array(probs, dtype=np.float32), names)
    return snap, tags


@pytest.fixture(scope="module")
def trained(tmp_path_factory, glove):
    root = tmp_path_factory.mktemp("task")
    snap, tags = _synthetic_task(root, shuffle_train=False)
    summary = train(snap, tags, root / "model", split="b", epochs=20, hidden=32, mlp_hidden=128, seed=0, word_vectors=glove, progress=False)
    return root, snap, tags, summary


def test_training_learns_and_beats_chance(trained):
    root, snap, tags, summary = trained
    losses = summary["losses"]
    assert len(losses) == 20 and losses[-1] < 0.9 * losses[0]
    assert (root / "model" / "model.pt").exists()
    log = json.loads((root / "model" / "training.json").read_text())
    assert [h["loss"] for h in log["history"]] == losses
    report = ev.evaluate(root / "model", snap, tags, progress=False)
    i2s = report["image_to_song"]
    assert i2s["n_queries"] == N_SONGS and i2s["n_candidates"] == N_SONGS
    assert i2s["model"]["R@5"] >= 5 * i2s["chance"]["R@5"]
    assert i2s["model"]["MedR"] <= i2s["chance"]["MedR"] / 3
    assert report["song_to_image"]["model"]["R@5"] >= 3 * report["song_to_image"]["chance"]["R@5"]
    md = (root / "model" / "report.md").read_text()
    assert "| metric | model | chance |" in md and "R@10" in md
    assert json.loads((root / "model" / "report.json").read_text())["image_to_song"]["model"] == i2s["model"]


def test_shuffled_training_pairs_stay_at_chance(trained, glove):
    root, _, _, _ = trained
    snap, tags = _synthetic_task(root, shuffle_train=True)
    train(snap, tags, root / "shuffled-model", split="b", epochs=20, hidden=32, mlp_hidden=128, seed=0, word_vectors=glove, progress=False)
    i2s = ev.evaluate(root / "shuffled-model", snap, tags, progress=False)["image_to_song"]
    assert i2s["model"]["R@5"] <= 2.5 * i2s["chance"]["R@5"]
    assert i2s["model"]["MedR"] >= i2s["chance"]["MedR"] / 2


def test_training_is_deterministic_and_split_a_candidates(trained, glove, tmp_path):
    root, snap, tags, _ = trained
    a = train(snap, tags, tmp_path / "m1", split="a", epochs=2, hidden=8, mlp_hidden=16, seed=3, word_vectors=glove, progress=False)
    b = train(snap, tags, tmp_path / "m2", split="a", epochs=2, hidden=8, mlp_hidden=16, seed=3, word_vectors=glove, progress=False)
    assert a["losses"] == b["losses"] and a["n_songs"] == N_SONGS - 10
    sa, sb = load_model(tmp_path / "m1").model.state_dict(), load_model(tmp_path / "m2").model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    rep = ev.evaluate(tmp_path / "m1", snap, tags, progress=False)
    assert rep["split"] == "a" and rep["image_to_song"]["n_candidates"] == 10 and rep["image_to_song"]["n_queries"] == 50
    assert rep["song_to_image"]["n_queries"] == 10 and rep["song_to_image"]["n_candidates"] == 50


@pytest.mark.parametrize("loss", ["cosine", "margin"])
@pytest.mark.parametrize("attention", [False, True])
def test_attention_and_losses_train_and_score(trained, glove, tmp_path, attention, loss):
    root, snap, tags, _ = trained
    s = train(snap, tags, tmp_path / "m", split="b", epochs=2, hidden=8, mlp_hidden=16, attention=attention, loss=loss, word_vectors=glove, progress=False)
    assert all(np.isfinite(s["losses"]))
    lm = load_model(tmp_path / "m")
    ts = ev.build_test_set(snap, tags, "b")
    scores = lm.score(ts.image_probs[:7], ts.song_texts[:9], batch_size=4, pair_batch=10)
    assert scores.shape == (7, 9) and np.all(np.abs(scores) <= 1 + 1e-5)
    if attention:  # pair scoring in chunks equals scoring each pair alone
        one = lm.score(ts.image_probs[3:4], ts.song_texts[5:6])
        assert abs(one[0, 0] - scores[3, 5]) < 1e-5


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
    assert set(perfect["image_to_song"]["model"]) == {"R@1", "R@5", "R@10", "MedR"}
    with pytest.raises(ValueError):
        ev.evaluate_scores(np.eye(19), ts)


def test_evaluate_scorer_is_model_agnostic(trained, tmp_path):
    _, snap, tags, _ = trained

    def oracle(ts):  # knows the answer: must be perfect
        return ts.relevant.astype(float)

    rep = ev.evaluate_scorer(snap, tags, oracle, split="b", out_dir=tmp_path, name="oracle")
    assert rep["image_to_song"]["model"]["R@1"] == 100.0
    assert "oracle" in (tmp_path / "report.md").read_text()
