"""Search: the vector index (exact and faiss IVF, persisted) and songs <-> images with a trained model."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from modeling.search import VectorIndex, exact_top_k, normalize, recall_at_k
from synthetic_task import synthetic_task

faiss = pytest.importorskip("faiss")


def _clustered(n: int, d: int, seed: int, n_queries: int = 0, spread: float = 1.0):
    """Vectors around 50 centres (and queries drawn the same way), so that an IVF index has structure
    to exploit but neighbours still cross cluster borders."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    q = centres[rng.integers(0, 50, n_queries)] + spread * rng.standard_normal((n_queries, d)).astype(np.float32)
    return x, q


# ----------------------------------------------------------------------------------------- the index
def test_exact_index_agrees_with_numpy():
    x, q = _clustered(3000, 32, 0, 20)
    index = VectorIndex.build(x, [f"v{i}" for i in range(len(x))], kind="exact")
    scores, ids = index.search(q, 10)
    expected = normalize(q) @ normalize(x).T
    order = np.argsort(-expected, axis=1)[:, :10]
    assert [[f"v{i}" for i in row] for row in order] == ids
    np.testing.assert_allclose(scores, np.take_along_axis(expected, order, axis=1), rtol=1e-5, atol=1e-5)
    # the chunked exact scan used for ground truth gives the same positions
    assert (exact_top_k(normalize(x), normalize(q), 10, chunk=700)[1] == order).all()


def test_ivf_calibrates_to_the_target_recall_on_unseen_queries():
    x, q = _clustered(20000, 48, 1, 400, spread=1.5)
    index = VectorIndex.build(x, range(len(x)), kind="ivf", nlist=64, calibration_queries=q[:200])
    assert index.kind == "ivf" and index.params["calibrated_recall"] >= 0.995
    assert index.params["nprobe"] < 64  # it did not just scan everything
    found = np.array([[int(i) for i in row] for row in index.search(q[200:], 10)[1]])
    truth = exact_top_k(normalize(x), normalize(q[200:]), 10)[1]
    assert recall_at_k(found, truth) >= 0.98
    # fewer lists visited, lower recall: the calibration is what makes it good
    index.set_nprobe(1)
    found1 = np.array([[int(i) for i in row] for row in index.search(q[200:], 10)[1]])
    assert recall_at_k(found1, truth) < recall_at_k(found, truth)


def test_auto_kind_and_bad_input():
    x, _ = _clustered(100, 8, 2)
    assert VectorIndex.build(x, range(100)).kind == "exact"
    with pytest.raises(ValueError, match="100 vectors but 99 ids"):
        VectorIndex.build(x, range(99))
    with pytest.raises(ValueError, match="unknown index kind"):
        VectorIndex.build(x, range(100), kind="hnsw")
    with pytest.raises(ValueError, match="no vectors"):
        VectorIndex.build(np.zeros((0, 8)), [])
    index = VectorIndex.build(x, range(100))
    with pytest.raises(ValueError, match="query vectors have 9 dimensions, the index 8"):
        index.search(np.ones((1, 9)), 5)
    scores, ids = index.search(x[0], 500)  # k above the count: everything, best first
    assert len(ids[0]) == 100 and ids[0][0] == "0" and (np.diff(scores[0]) <= 1e-6).all()


def test_index_saves_and_loads(tmp_path):
    x, q = _clustered(5000, 16, 3, 50)
    index = VectorIndex.build(x, [f"s{i}" for i in range(5000)], kind="ivf", nlist=32, calibration_queries=q)
    folder = index.save(tmp_path / "songs")
    assert sorted(p.name for p in folder.iterdir()) == ["ids.npy", "index.faiss", "index.json"]
    again = VectorIndex.load(folder)
    assert again.kind == "ivf" and again.params == index.params and again.index.nprobe == index.index.nprobe
    assert again.search(q, 10)[1] == index.search(q, 10)[1]
    # saving again replaces the folder whole; a damaged folder is refused with the reason
    VectorIndex.build(x[:10], range(10), kind="exact").save(folder)
    assert len(VectorIndex.load(folder)) == 10 and not list(tmp_path.glob(".songs-*"))
    np.save(folder / "ids.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="rebuild it"):
        VectorIndex.load(folder)
    with pytest.raises(FileNotFoundError, match="index.json missing"):
        VectorIndex.load(tmp_path / "nothing")


# ------------------------------------------------------------------------- songs and images, a model
N_SONGS = 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("torch")
    from modeling.harness.training import train_models
    from modeling.word_vectors import load_word_vectors

    root = tmp_path_factory.mktemp("search")
    # One word per topic class, so that each class's name is one word of its song's lyric.
    snap, tags, classes, names = synthetic_task(root, n_songs=N_SONGS, class_stride=17, max_class_words=1)
    train_models(snap, tags, root / "model", split="b", models=("paper",), attention=False, epochs=25, hidden=32,
                 mlp_hidden=128, seed=0, word_vectors=load_word_vectors(), device="cpu")
    return root, snap, tags, classes, names


def _test_images(tags_path, snap):
    from modeling.tags import load_tags

    _, probs, shas = load_tags(tags_path)
    trip = pd.read_parquet(snap / "triplets.parquet").set_index("image_sha256")
    return [(probs[i], trip.song_id[s]) for i, s in enumerate(shas) if trip.split_b[s] == "test"]


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_songs_for_an_image_with_the_tags_that_drove_them(trained, kind):
    from modeling.search.songs import SongSearch

    root, snap, tags, classes, names = trained
    search = SongSearch(root / "model", snap, tags, kind=kind)
    assert search.song_index.kind == kind and (root / "model" / "search" / f"{snap.name}-{kind}" / "songs").is_dir()
    hits_at_5 = explained = 0
    queries = _test_images(tags, snap)
    for probs, song_id in queries:
        results = search.songs_for_image(probs, top_k=5)
        assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
        assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:]))
        hits_at_5 += song_id in [r["song_id"] for r in results]
        top = results[0]
        if top["song_id"] == song_id:  # a right match should be explained by the song's own class
            explained += names[classes[int(song_id[1:])]] in [t for t, _ in top["tags"]]
            assert all(share > 0 for _, share in top["tags"]) and len(top["tags"]) <= 3
    assert hits_at_5 >= 0.6 * len(queries), hits_at_5  # chance is 5 in 30
    assert explained >= 1


def test_search_index_is_kept_beside_the_model(trained, monkeypatch):
    from modeling.search import songs as songs_module
    from modeling.search.songs import SongSearch

    root, snap, tags, _, _ = trained
    first = SongSearch(root / "model", snap, tags, kind="exact")

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt the index")

    monkeypatch.setattr(songs_module.VectorIndex, "build", no_build)
    again = SongSearch(root / "model", snap, tags, kind="exact")
    probs = _test_images(tags, snap)[0][0]
    assert again.songs_for_image(probs) == first.songs_for_image(probs)
    with pytest.raises(AssertionError, match="rebuilt"):
        SongSearch(root / "model", snap, tags, kind="exact", rebuild=True)
    # an index of other vectors (a model retrained in the same folder) is not reused
    meta_path = root / "model" / "search" / f"{snap.name}-exact" / "songs" / "index.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["vectors_sha1"] = "0" * 40
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AssertionError, match="rebuilt"):
        SongSearch(root / "model", snap, tags, kind="exact")


def test_images_for_a_song(trained):
    from modeling.search.songs import SongSearch

    root, snap, tags, classes, _ = trained
    search = SongSearch(root / "model", snap, tags)
    trip = pd.read_parquet(snap / "triplets.parquet")
    own_in_top5 = 0
    for s in range(len(classes)):
        results = search.images_for_song(f"Song {s}", top_k=5)
        own = set(trip.image_sha256[trip.song_id == f"s{s:02d}"])
        own_in_top5 += sum(r["image_sha256"] in own for r in results)
        assert {"image_path", "post_id", "score", "tags"} <= set(results[0])
    assert own_in_top5 >= 0.5 * 5 * len(classes)  # chance is 5 of 5 x songs images
    assert search.find_song("s03") == "s03" and search.find_song("song 3 — artist 3") == "s03"
    with pytest.raises(LookupError, match="no song"):
        search.images_for_song("No Such Song")


def test_search_an_image_file_from_the_command_line(trained, tmp_path, monkeypatch, capsys):
    """`image2song search IMAGE` and `--song`: real tagger on a real JPEG, the model's ranking, the tags."""
    from PIL import Image

    from image2song import cli, stages

    root, snap, tags, _, _ = trained
    image = tmp_path / "photo.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (120, 90), (200, 40, 40)).save(buf, "JPEG")
    image.write_bytes(buf.getvalue())
    monkeypatch.setenv("IMAGE2SONG_HOME", str(tmp_path / "home"))
    # the tags of this snapshot are already there: the stage would find them under the state folder
    monkeypatch.setattr(stages, "extract_tags", lambda settings, snapshot, vocabulary: {"tags_path": str(tags)})
    argv = ["search", str(image), "--snapshot", str(snap), "--model", str(root / "model"), "--top", "3"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("  1. ") and "— Artist" in lines[0] and "[" in lines[0]
    assert cli.main(argv + ["--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["tags"] for h in hits)
    assert cli.main(["search", "--song", "Song 4", "--snapshot", str(snap), "--model", str(root / "model")]) == 0
    assert "(post p" in capsys.readouterr().out
    assert cli.main(["search", str(tmp_path / "missing.jpg"), "--snapshot", str(snap), "--model", str(root / "model")]) == 2
    assert "no image file" in capsys.readouterr().err
    assert cli.main(["search", "--snapshot", str(snap)]) == 2
