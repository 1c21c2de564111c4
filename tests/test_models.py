"""The model library: the paper's model (encoder, tag attention, pooling), the baselines and the hybrid.

CPU only, toy sizes; the training harness is tested in test_harness.py."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from modeling.lyric_encoder import pad_batch  # noqa: E402
from modeling.models import rowwise_standardize, score_matrix  # noqa: E402
from modeling.models.baselines.conse import ConseScorer  # noqa: E402
from modeling.models.baselines.control import ImageHistoryControl  # noqa: E402
from modeling.models.baselines.neighbours import BANDWIDTH_GRID, ImageHistoryNeighbours, fit_neighbours  # noqa: E402
from modeling.models.baselines.popularity import PopularityScorer  # noqa: E402
from modeling.models.baselines.semantic_indexing import SemanticIndexing  # noqa: E402
from modeling.models.baselines.topics import TEMPERATURE_GRID, VisualTopics, fit_topics  # noqa: E402
from modeling.models.hybrid import fit_hybrid, fit_weight, fuse  # noqa: E402
from modeling.models.paper import Image2SongModel, ImageSpace  # noqa: E402

T = 30  # tags in the toy models


class _KV:
    """A tiny stand-in for gensim KeyedVectors."""

    def __init__(self, words, dim=8, seed=0):
        rng = np.random.default_rng(seed)
        self.key_to_index = {w: i for i, w in enumerate(words)}
        self.vectors = rng.normal(size=(len(words), dim)).astype(np.float32)
        self.vector_size = dim

    def __getitem__(self, w):
        return self.vectors[self.key_to_index[w]]


def _toy_model(attention: bool, seed: int = 0, pooling: str = "mean") -> Image2SongModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(20, 8)).astype(np.float32)
    emb[0] = 0
    tag_emb = rng.normal(size=(T, 8)).astype(np.float32)
    space = ImageSpace.fit(rng.dirichlet(np.ones(T), 10).astype(np.float32))
    return Image2SongModel(emb, tag_emb, space, hidden=6, attention=attention, mlp_hidden=16, tag_pooling=pooling).eval()


@pytest.mark.parametrize("attention", [False, True])
def test_forward_shapes_and_padding_invariance(attention):
    model = _toy_model(attention)
    seqs = [[1, 2, 3, 4, 5, 6, 7], [3, 4, 5], [9]]
    tokens, lengths = pad_batch(seqs)
    probs = torch.softmax(torch.randn(3, T), -1)
    with torch.no_grad():
        out, s = model(tokens, lengths, probs, return_attention=True)
        alone = model(*pad_batch([seqs[1]]), probs[1:2])
    assert out.shape == (3, T)
    torch.testing.assert_close(out[1:2], alone, atol=1e-5, rtol=1e-5)  # padding changes nothing
    if attention:
        assert s.shape == (3, 7)
        torch.testing.assert_close(s.sum(1), torch.ones(3))
        assert torch.all(s[1, 3:] == 0) and torch.all(s[2, 1:] == 0)
        other = torch.softmax(torch.randn(3, T) * 5, -1)
        with torch.no_grad():  # the lyric vector depends on the image through the tag query
            assert not torch.allclose(model(tokens, lengths, other), out)
    else:
        assert s is None
        with torch.no_grad():
            torch.testing.assert_close(model(tokens, lengths, torch.rand(3, T)), out)


def test_lyrics_sorted_into_length_chunks_give_the_same_outputs_and_gradients():
    model = _toy_model(True)
    rng = np.random.default_rng(2)
    seqs = [list(rng.integers(1, 20, size=int(n))) for n in rng.integers(1, 12, size=9)]
    tokens, lengths = pad_batch(seqs)
    chunked_h, chunked_final = model.encoder.context(tokens, lengths, chunk=2)
    whole_h, whole_final = model.encoder.context(tokens, lengths, chunk=len(seqs))
    torch.testing.assert_close(chunked_h, whole_h, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked_final, whole_final, atol=1e-6, rtol=1e-5)
    grads = []
    for h, final in ((chunked_h, chunked_final), (whole_h, whole_final)):
        model.zero_grad()
        (h.square().sum() + final.sum()).backward()
        grads.append(model.encoder.lstm.forward_lstm.weight_hh_l0.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_attention_reweights_the_bilstm_outputs_without_a_second_encoder():
    model = _toy_model(True)
    lstms = {name for name, m in model.named_modules() if isinstance(m, torch.nn.LSTM)}
    assert lstms == {"encoder.lstm.forward_lstm", "encoder.lstm.backward_lstm"}  # the one BiLSTM
    tokens, lengths = pad_batch([[1, 2, 3, 4]])
    probs = torch.softmax(torch.randn(1, T), -1)
    with torch.no_grad():
        h, _ = model.encoder.context(tokens, lengths)
        out, s = model(tokens, lengths, probs, return_attention=True)
        expected = model.mlp((s.unsqueeze(-1) * h).sum(1))  # sum_t s_t h_t, then the MLP
    torch.testing.assert_close(out, expected)


def test_query_vector_mean_and_max_of_top5_tag_embeddings():
    probs = torch.zeros(1, T)
    top = [3, 17, 20, 25, 29]
    probs[0, top] = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1])
    mean_model, max_model = _toy_model(True), _toy_model(True, pooling="max")
    torch.testing.assert_close(mean_model.query_vector(probs), mean_model.tag_embeddings[top].mean(0, keepdim=True))
    torch.testing.assert_close(max_model.query_vector(probs), max_model.tag_embeddings[top].max(0, keepdim=True).values)
    mean_model.tag_embeddings[17] = 0  # a tag with no known word is skipped, not averaged in as zero
    torch.testing.assert_close(mean_model.query_vector(probs), mean_model.tag_embeddings[[3, 20, 25, 29]].mean(0, keepdim=True))
    with pytest.raises(ValueError, match="tag_pooling"):
        _toy_model(True, pooling="median")


def _toy_reader(seed: int = 0):
    from modeling.models.baselines.attentive_reader import AttentiveReaderModule

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(20, 8)).astype(np.float32)
    emb[0] = 0
    space = ImageSpace.fit(rng.dirichlet(np.ones(T), 10).astype(np.float32))
    return AttentiveReaderModule(emb, rng.normal(size=(T, 8)).astype(np.float32), space, hidden=6, mlp_hidden=16).eval()


@pytest.mark.parametrize("make", [_toy_model, _toy_reader], ids=["paper", "attentive-reader"])
def test_training_pairs_equal_the_forward_pass(make):
    """``song_pairs`` (training) reuses each song's attention keys across the images it is paired with."""
    model = make(True) if make is _toy_model else make()
    songs = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    probs = torch.softmax(torch.randn(5, T) * 3, -1)
    idx = torch.tensor([0, 2, 1, 1, 0])
    with torch.no_grad():
        pairs = model.song_pairs(model.song_context(songs, torch.arange(3)), idx, probs)
        alone = torch.cat([model(*pad_batch([songs[j]]), probs[i : i + 1]) for i, j in enumerate(idx.tolist())])
    torch.testing.assert_close(pairs, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [_toy_model, _toy_reader], ids=["paper", "attentive-reader"])
def test_pair_scoring_in_chunks_equals_each_pair_alone(make):
    model = make(True) if make is _toy_model else make()
    songs = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11], [12, 13, 14]]
    probs = np.random.default_rng(1).dirichlet(np.ones(T), 7).astype(np.float32)
    chunked = score_matrix(model, songs, len(songs), probs, song_batch=2, pair_batch=3)
    assert chunked.shape == (7, 5) and np.all(np.abs(chunked) <= 1 + 1e-5)
    with torch.no_grad():
        for i in range(7):
            for j in range(5):
                tokens, lengths = pad_batch([songs[j]])
                pred = model(tokens, lengths, torch.from_numpy(probs[i : i + 1]))
                img = model.image_side(torch.from_numpy(probs[i : i + 1]))
                assert abs(float(torch.nn.functional.cosine_similarity(pred, img)) - chunked[i, j]) < 1e-5


def test_image_space_reprs():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(ImageSpace.fit(p, "l2", center=False).transform(p), axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(ImageSpace.fit(p, "prob", center=False).transform(p), p)
    np.testing.assert_allclose(ImageSpace.fit(p, "sqrt", center=False).transform(p), np.sqrt(p), rtol=1e-6)
    for repr in ("sqrt", "logstd", "l2", "prob"):
        space = ImageSpace.fit(p, repr, center=True)
        np.testing.assert_allclose(space.transform(p).mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(space.torch_transform(torch.from_numpy(p)).numpy(), space.transform(p), atol=1e-6)
        again = ImageSpace.from_dict(space.to_dict())
        np.testing.assert_array_equal(again.transform(p[:1]), space.transform(p[:1]))
    with pytest.raises(ValueError):
        ImageSpace.fit(p, "nope")


def _pictures_under_noise(rng, n_songs: int, per_song: int):
    """Tag scores whose song shows in a few weak tags and whose strong variation (the 'background',
    drawn afresh for every image) says nothing of the song."""
    tags = 40
    picture = rng.normal(0, 1, (n_songs, 4))
    logits = np.zeros((n_songs * per_song, tags))
    song_of = np.repeat(np.arange(n_songs), per_song)
    logits[:, :4] = picture[song_of] + rng.normal(0, 0.2, (len(song_of), 4))
    logits[:, 4:] = rng.normal(0, 3, (len(song_of), tags - 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.astype(np.float32), [f"s{k}" for k in song_of]


def test_discriminant_space_keeps_what_separates_songs_and_drops_what_varies_within_one():
    rng = np.random.default_rng(0)
    probs, ids = _pictures_under_noise(rng, 30, 4)
    base = ImageSpace.fit(probs, "logstd")
    space = ImageSpace.fit_discriminant(probs, ids, dims=8)
    assert space.label == "logstd+discriminant8" and space.dim(40) == 8
    assert space.transform(probs).shape == (len(ids), 8)
    np.testing.assert_allclose(space.torch_transform(torch.from_numpy(probs)).numpy(), space.transform(probs), atol=1e-4)
    again = ImageSpace.from_dict(space.to_dict())
    np.testing.assert_array_equal(again.transform(probs[:3]), space.transform(probs[:3]))

    # New images of the same songs: the nearest training image is of the right song far more often.
    queries, query_ids = _pictures_under_noise(np.random.default_rng(0), 30, 5)
    queries, query_ids = queries[4::5], query_ids[4::5]  # the fifth image of each song, unseen in training

    def nearest_right(sp):
        a = sp.transform(queries)
        b = sp.transform(probs)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        return np.mean([ids[k] == q for k, q in zip((a @ b.T).argmax(1), query_ids)])

    assert nearest_right(space) >= nearest_right(base) + 0.25


def test_discriminant_space_dimension_stays_below_the_song_count_and_needs_two_songs():
    rng = np.random.default_rng(1)
    probs, ids = _pictures_under_noise(rng, 5, 3)
    assert ImageSpace.fit_discriminant(probs, ids, dims=64).dim(40) == 4
    one_each = ImageSpace.fit_discriminant(probs[::3], ids[::3], dims=3)  # no within-song scatter: PCA-like
    assert np.isfinite(one_each.transform(probs)).all()
    with pytest.raises(ValueError, match="two songs"):
        ImageSpace.fit_discriminant(probs[:3], ids[:3])


# ------------------------------------------------------------------ baselines
def test_control_scores_by_the_songs_mean_training_image():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(T) * 0.2, 6).astype(np.float32)
    space = ImageSpace.fit(probs)
    control = ImageHistoryControl.build(probs, ["x", "x", "y", "y", "z", "z"], space)
    scores = control.score(probs[[0]], ["x", "y", "new"], None)
    mean_x = space.transform(probs[:2]).mean(0)
    img = space.transform(probs[[0]])[0]
    expected = img @ mean_x / np.linalg.norm(img) / np.linalg.norm(mean_x)
    assert scores[0, 0] == pytest.approx(expected, rel=1e-5)
    assert np.isnan(scores[0, 2])  # no history: no score (ranked last; the hybrid falls back to the lyrics)


def test_neighbours_score_a_kernel_density_over_the_songs_training_images():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(T) * 0.2, 7).astype(np.float32)
    space = ImageSpace.fit(probs)
    ids = ["y", "x", "y", "z", "x", "y", "z"]  # unsorted on purpose: the index groups them by song
    nb = ImageHistoryNeighbours.build(probs, ids, space, bandwidth=0.2)
    query = rng.dirichlet(np.ones(T) * 0.2, 3).astype(np.float32)
    scores = nb.score(query, ["z", "new", "x", "y"], None)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    cos = unit(space.transform(query)) @ unit(space.transform(probs)).T
    for j, song in [(0, "z"), (2, "x"), (3, "y")]:
        mine = cos[:, [k for k, s in enumerate(ids) if s == song]]
        np.testing.assert_allclose(scores[:, j], np.log(np.exp(mine / 0.2).mean(1)), rtol=1e-5)
    assert np.isnan(scores[:, 1]).all()  # no history: no score
    # The nearest neighbour decides at a small bandwidth: an image equal to one of y's training images
    # finds y, even though y's mean training image is far from it.
    odd = np.zeros((1, T), np.float32)
    odd[0, 0] = 1.0
    eye = np.eye(T, dtype=np.float32)
    probs2 = np.stack([eye[1], eye[1], eye[1], odd[0], *(0.6 * odd[0] + 0.4 * eye[k] for k in (2, 3, 4))])
    ids2 = ["y", "y", "y", "y", "x", "x", "x"]
    space2 = ImageSpace.fit(probs2, "prob", center=False)
    near = ImageHistoryNeighbours.build(probs2, ids2, space2, bandwidth=0.02).score(odd, ["x", "y"])
    mean = ImageHistoryControl.build(probs2, ids2, space2).score(odd, ["x", "y"])
    assert near[0, 1] > near[0, 0] and mean[0, 0] > mean[0, 1]
    # The space and bandwidth are those that maximise the objective on validation.
    spaces = [ImageSpace.fit(probs, "sqrt", True), ImageSpace.fit(probs, "logstd", True)]
    space, bandwidth, grid = fit_neighbours(spaces, probs, ids, query, ["x", "y", "z"], lambda sc: float(sc[0, 0] - sc[0, 1]))
    assert grid[f"{space.repr} b={bandwidth}"] == max(grid.values()) and len(grid) == 2 * len(BANDWIDTH_GRID)


def test_popularity_ranks_every_image_alike_by_posts_then_favorites():
    pop = PopularityScorer.build(["a", "a", "b", "c", "c"], [1, 1, 900, 0, 5])
    scores = pop.score(np.zeros((3, T)), ["a", "b", "c", "unknown"])
    assert (scores == scores[0]).all()
    assert list(np.argsort(-scores[0])) == [2, 0, 1, 3]  # c (2 posts, 5 favs) > a (2, 2) > b (1, 900) > unknown


def test_conse_image_is_the_probability_weighted_tag_vector():
    kv = _KV(["dog", "cat", "sky", "love"], dim=4)
    conse = ConseScorer.build(["dog love", "sky"], ["dog", "cat", "sky"], kv)
    probs = np.array([[0.9, 0.1, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(conse.image_vectors(probs)[0], 0.9 * kv["dog"] + 0.1 * kv["cat"], rtol=1e-5)
    scores = conse.score(probs, ["s1", "s2"], ["dog love", "sky"])
    assert scores[1, 1] == pytest.approx(1.0, abs=1e-5)  # the image tagged "sky" and the lyric "sky"
    assert conse.score(probs, ["s"], ["nothing known"])[0, 0] == 0.0


def test_semantic_indexing_bags_are_tfidf_and_unit_length():
    probs = np.random.default_rng(0).dirichlet(np.ones(T), 4).astype(np.float32)
    psi = SemanticIndexing.build(["rain rain sun", "sun moon", "moon"], [f"t{i}" for i in range(T)], probs)
    bags = psi.prepare(["rain rain sun", "unknown words only"])
    weights = dict(bags[0])
    assert weights[psi.words["rain"]] > weights[psi.words["sun"]]  # twice as frequent, and rarer
    assert sum(x * x for _, x in bags[0]) == pytest.approx(1.0)
    assert bags[1] == [(0, 1.0)]
    assert psi.score(probs, ["a", "b"], ["rain", "moon"]).shape == (4, 2)


TOPIC_WORDS = ("harbour", "orchard", "engine", "sparrow", "lantern", "glacier")


def _topic_world(rng, n_songs: int, per_song: int, pictures: np.ndarray):
    """Songs whose lyric names one of ``TOPIC_WORDS`` among words of their own; every image of a song
    shows its topic's picture (a few tags) under a strong random background."""
    tags = 40
    topic = rng.integers(0, len(TOPIC_WORDS), n_songs)
    texts = [" ".join([TOPIC_WORDS[t], *(f"w{rng.integers(10_000)}" for _ in range(6))]) for t in topic]
    song_of = np.repeat(np.arange(n_songs), per_song)
    logits = rng.normal(0, 2, (len(song_of), tags))
    logits[:, :6] = pictures[topic[song_of]] + rng.normal(0, 0.3, (len(song_of), 6))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.astype(np.float32), texts, song_of


def _median_rank(scores: np.ndarray) -> float:
    """Median 1-based rank of song q for image q (one image per song)."""
    return float(np.median((scores > np.diag(scores)[:, None]).sum(1) + 1))


def test_visual_topics_find_new_songs_by_their_words_and_permuted_words_do_not():
    rng = np.random.default_rng(0)
    pictures = rng.normal(0, 3, (len(TOPIC_WORDS), 6))
    probs, texts, song_of = _topic_world(rng, 60, 4, pictures)
    new_probs, new_texts, _ = _topic_world(rng, 30, 1, pictures)  # songs never seen in training
    space = ImageSpace.fit(probs, "logstd", True)
    model = VisualTopics.fit(texts + new_texts, probs, [texts[k] for k in song_of], space, topics=12)
    scores = model.score(new_probs, [f"n{k}" for k in range(30)], new_texts)
    assert scores.shape == (30, 30) and np.isfinite(scores).all()
    shuffled = [texts[k] for k in np.roll(np.arange(60), 1)]  # every song gets another song's words
    permuted = VisualTopics.fit(texts + new_texts, probs, [shuffled[k] for k in song_of], space, topics=12)
    # Chance is 15.5; the five songs of the image's topic share its words, so about 3 is the best possible.
    assert _median_rank(scores) <= 6 < 10 <= _median_rank(permuted.score(new_probs, [], new_texts))
    # The score is log sum_c p(c | i) q(c | s) / pi(c); a lyric of unknown words gets the topics' base rate.
    p, q = model.image_topics(new_probs[:2]), model.song_topics(new_texts[:3])
    np.testing.assert_allclose(np.exp(model.score(new_probs[:2], [], new_texts[:3])), (p / model.prior) @ q.T, rtol=1e-5)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    unknown = model.song_topics(["nothing known here", ""])
    np.testing.assert_allclose(unknown[0], unknown[1])


def test_visual_topics_save_plain_arrays_and_handle_tiny_or_uniform_training_sets(tmp_path):
    from modeling.models import load_scorer, save_scorer

    rng = np.random.default_rng(1)
    pictures = rng.normal(0, 3, (len(TOPIC_WORDS), 6))
    probs, texts, song_of = _topic_world(rng, 12, 3, pictures)
    space = ImageSpace.fit(probs, "sqrt", True)
    model = VisualTopics.fit(texts, probs, [texts[k] for k in song_of], space, topics=128)
    assert model.config["topics"] == len(probs) // 2  # capped by the training set
    again = load_scorer(save_scorer(model, tmp_path / "topics.pt"))
    np.testing.assert_array_equal(again.score(probs, [], texts), model.score(probs, [], texts))
    assert not any(type(v).__module__.startswith("sklearn") for v in vars(model).values())
    # Two topics: the regression has one row of log-odds, and the words still pick the topic.
    two = np.full((8, probs.shape[1]), 0.01, dtype=np.float32)
    two[:4, 0] = two[4:, 1] = 1.0  # two clearly different pictures, four images each
    two_texts = [texts[0]] * 4 + [texts[1]] * 4
    pair = VisualTopics.fit(texts, two, two_texts, space, topics=2)
    q = pair.song_topics(texts[:2])  # "lantern …" and "sparrow …"
    assert pair.config["topics"] == 2 and q[0].argmax() != q[1].argmax()
    same = np.repeat(probs[:1], 5, axis=0)  # one picture: a single topic, whatever the words
    uniform = VisualTopics.fit(texts, same, texts[:5], space, topics=4)
    assert np.isfinite(uniform.score(probs, [], texts)).all()
    with pytest.raises(ValueError, match="two training images"):
        VisualTopics.fit(texts, probs[:1], texts[:1], space)
    with pytest.raises(ValueError, match="lyrics"):
        VisualTopics.fit(texts, probs, texts[:2], space)


def test_fit_topics_keeps_the_best_setting_on_validation():
    rng = np.random.default_rng(2)
    pictures = rng.normal(0, 3, (len(TOPIC_WORDS), 6))
    probs, texts, song_of = _topic_world(rng, 40, 4, pictures)
    val_probs, val_texts, _ = _topic_world(rng, 20, 1, pictures)
    spaces = [ImageSpace.fit(probs, "sqrt", True), ImageSpace.fit(probs, "logstd", True)]
    model, grid = fit_topics(texts + val_texts, probs, [texts[k] for k in song_of], spaces,
                             lambda m: -_median_rank(m.score(val_probs, [], val_texts)), topics=(4, 8, 500))
    # 500 is capped at 80: three topic counts per space, each with every temperature.
    assert len(grid) == len(spaces) * 3 * len(TEMPERATURE_GRID)
    key = f"{model.config['image_repr']} k={model.config['topics']} T={model.temperature}"
    assert grid[key] == max(grid.values()) == -_median_rank(model.score(val_probs, [], val_texts))


def test_hybrid_fuses_standardised_scores_and_falls_back_to_lyrics():
    lyric = np.array([[3.0, 1.0, 2.0], [0.0, 1.0, 5.0]])
    control = np.array([[0.1, 0.9, np.nan], [0.2, 0.1, np.nan]])
    fused = fuse(lyric, control, 0.5)
    zl, zc = rowwise_standardize(lyric), rowwise_standardize(control[:, :2])
    np.testing.assert_allclose(fused[:, :2], 0.5 * zl[:, :2] + 0.5 * zc)
    np.testing.assert_allclose(fused[:, 2], 0.5 * zl[:, 2])  # a song without images: lyrics alone, control term 0
    np.testing.assert_allclose(fuse(lyric, np.full_like(control, np.nan), 0.3), zl)  # all new: the lyric ranking
    # The weight is the one that maximises the objective on validation.
    relevant = np.array([[False, True, False], [True, False, False]])
    w, grid = fit_weight(lyric, control, lambda s: float((s[relevant] - s[~relevant].reshape(2, 2).max(1)).mean()))
    assert w == max(grid, key=lambda k: (grid[k], k)) and w < 0.5  # the control knows better here


def test_hybrid_fits_the_history_space_bandwidth_and_weight_together():
    rng = np.random.default_rng(3)
    songs = [f"s{k}" for k in range(6)]
    centers = rng.dirichlet(np.ones(T) * 0.1, len(songs)).astype(np.float32)
    train = np.concatenate([np.clip(c + rng.normal(0, 0.01, (4, T)), 1e-4, None) for c in centers]).astype(np.float32)
    ids = [s for s in songs for _ in range(4)]
    val = np.clip(centers + rng.normal(0, 0.01, centers.shape), 1e-4, None).astype(np.float32)
    relevant = np.eye(len(songs), dtype=bool)
    lyric = rng.normal(size=(len(songs), len(songs)))  # lyrics that know nothing here
    spaces = [ImageSpace.fit(train, "sqrt", True), ImageSpace.fit(train, "logstd", True)]
    objective = lambda sc: float(np.mean(np.argsort(-sc, 1)[:, 0] == np.arange(len(songs))))  # noqa: E731
    space, bandwidth, weight, grid = fit_hybrid(lyric, spaces, train, ids, val, songs, objective)
    assert weight < 0.5 and grid[f"{space.repr} b={bandwidth}"] == max(grid.values()) == 1.0
    assert len(grid) == len(spaces) * len(BANDWIDTH_GRID)


def test_bilstm_without_packing_equals_the_packed_bilstm():
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from modeling.lyric_encoder import BiLSTM

    torch.manual_seed(0)
    ours = BiLSTM(5, 4)
    packed = torch.nn.LSTM(5, 4, batch_first=True, bidirectional=True)
    with torch.no_grad():  # the same weights in both
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(packed, name).copy_(getattr(ours.forward_lstm, name))
            getattr(packed, name + "_reverse").copy_(getattr(ours.backward_lstm, name))
    lengths = torch.tensor([6, 2, 4, 1])
    x = torch.randn(4, 6, 5) * (torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
    out, final = ours(x, lengths)
    ref, (h_n, _) = packed(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    ref, _ = pad_packed_sequence(ref, batch_first=True, total_length=6)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(final, torch.cat([h_n[-2], h_n[-1]], -1), atol=1e-6, rtol=1e-5)
