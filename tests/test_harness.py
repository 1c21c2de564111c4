"""The harness: validation part, training loop (losses, early stopping, seeds), the permuted-lyrics control,
evaluation with intervals, run folders and reports, through the pipeline's stages.

CPU only, on the synthetic snapshot of ``synthetic_task`` (lyrics carry the signal)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from modeling.harness import evaluation as ev  # noqa: E402
from modeling.harness.data import Pairs, load_split, validation_mask  # noqa: E402
from modeling.harness.training import LYRIC_MODELS, _loss, derangement, fit_joint, train_models  # noqa: E402
from modeling.models.baselines.neighbours import BANDWIDTH_GRID  # noqa: E402
from modeling.word_vectors import load_word_vectors  # noqa: E402
from synthetic_task import N_SONGS, synthetic_task  # noqa: E402

SMALL = dict(hidden=32, mlp_hidden=128, device="cpu")


@pytest.fixture(scope="module")
def glove():
    return load_word_vectors()


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    task = synthetic_task(root)
    return root, task.snapshot, task.tags


@pytest.fixture(scope="module")
def paper_and_permuted(task, glove):
    """The paper's model (attention) and the permuted-lyrics control, trained and evaluated on split B."""
    root, snap, tags = task
    out = root / "b"
    train_models(snap, tags, out, split="b", models=("paper", "permuted"), epochs=20, seed=0, word_vectors=glove, **SMALL)
    return out, ev.evaluate_models(out, device="cpu")


# ------------------------------------------------------------------ data
def test_validation_part_mirrors_the_split(task):
    _, snap, tags = task
    a = load_split(snap, tags, "a", seed=0)
    assert set(a.validation.song_ids).isdisjoint(a.train.song_ids)  # A: whole songs held out
    assert 2 <= len(set(a.validation.song_ids)) < len(set(a.train.song_ids))
    assert set(a.validation.song_ids).isdisjoint(a.test_songs)
    b = load_split(snap, tags, "b", seed=0)
    held = b.validation.song_ids
    assert len(held) == len(set(held)) == N_SONGS  # B: one image of every song, the others stay in train
    assert set(b.train.song_ids) == set(held)
    assert set(b.validation.image_sha256).isdisjoint(b.train.image_sha256) and set(b.validation.image_sha256).isdisjoint(b.test.image_sha256)
    assert load_split(snap, tags, "b", seed=0).validation.image_sha256 == b.validation.image_sha256  # seeded
    assert load_split(snap, tags, "b", seed=1).validation.image_sha256 != b.validation.image_sha256
    ids = ["s1", "s1", "s2", "s3", "s3", "s3"]
    pairs = Pairs([f"i{i}" for i in range(6)], np.zeros((6, 2), np.float32), ids)
    mask = validation_mask(pairs, "b", seed=0)
    assert mask.sum() == 2 and {ids[i] for i in np.flatnonzero(mask)} == {"s1", "s3"}  # s2 has one image only


def test_vocabulary_covers_every_lyric_of_the_snapshot(task, glove, paper_and_permuted):
    from modeling.models import load_scorer

    _, snap, tags = task
    model = load_scorer(paper_and_permuted[0] / "paper.pt", device="cpu")
    a = load_split(snap, tags, "a")
    test_words = {w for t in a.texts(a.test_songs) for w in t.split() if w in glove.key_to_index}
    assert test_words and test_words <= set(model.vocab.words)


# ------------------------------------------------------------------ training loop
class _Toy(torch.nn.Module):
    """Songs are learned vectors, images their tag vector: enough to exercise the losses."""

    conditional = False

    def __init__(self, n_songs, n_tags):
        super().__init__()
        self.songs = torch.nn.Embedding(n_songs, n_tags)

    def image_side(self, probs):
        return probs

    def song_context(self, songs, rows):
        return self.songs(rows)

    def song_pairs(self, ctx, idx, probs):
        return ctx[idx]

    def song_vectors(self, ctx):
        return ctx


def test_margin_negatives_come_from_the_whole_training_set():
    torch.manual_seed(0)
    module = _Toy(10, 4)
    probs = torch.softmax(torch.randn(3, 4), -1)
    rows = torch.tensor([2, 2, 2])  # a batch of one song: in-batch negatives would give nothing to learn
    kw = dict(all_rows=torch.arange(10), train_probs=torch.softmax(torch.randn(30, 4), -1),
              train_rows=torch.arange(30) % 10, margin=2.0, negatives=5, temperature=0.05)
    loss = _loss("margin", module, None, rows, probs, gen=torch.Generator().manual_seed(0), **kw)
    assert float(loss.detach()) > 0
    loss.backward()
    touched = module.songs.weight.grad.abs().sum(1) > 0
    assert touched[2] and touched.sum() > 1  # other songs than the batch's got gradients
    only_self = dict(kw, all_rows=torch.tensor([2]), train_rows=torch.full((30,), 2))
    assert float(_loss("margin", module, None, rows, probs, gen=torch.Generator(), **only_self).detach()) == 0.0  # own song masked


def test_early_stopping_keeps_the_best_epoch(task, glove):
    from modeling.models.paper import PaperModel

    _, snap, tags = task
    data = load_split(snap, tags, "b")
    songs = sorted(set(data.train.song_ids))
    model = PaperModel.build(data.songs["modeling_text"].tolist(), data.tag_names, glove, data.train.probs, hidden=8, mlp_hidden=16)
    val = ev.pairs_test_set(data.validation, data.validation_songs, data.texts(data.validation_songs), "b", data.tag_names)
    v = (model.prepare(val.song_texts), len(val.song_ids), val.image_probs, val.relevant)
    out = fit_joint(model.module, model.prepare(data.texts(songs)), {s: i for i, s in enumerate(songs)}, data.train,
                    validation=v, epochs=60, patience=2, lr=3e-2, device="cpu")
    history = out["history"]
    assert len(history) < 60 and out["best_epoch"] == len(history) - 2  # stopped 2 epochs after the best
    best = max(h["validation_mrr"] for h in history)
    assert out["best_validation_mrr"] == best == history[out["best_epoch"] - 1]["validation_mrr"]
    again = ev.closest_relevant_rank(model.score(val.image_probs, val.song_ids, val.song_texts), val.relevant)
    assert np.mean(1.0 / again) == pytest.approx(best)  # the module holds the best epoch's weights


def test_training_is_seeded_and_saves_its_configuration(task, glove, tmp_path):
    _, snap, tags = task
    kw = dict(split="a", models=("paper",), loss="margin", attention=True, epochs=2, seed=3, word_vectors=glove,
              hidden=8, mlp_hidden=16, device="cpu")
    train_models(snap, tags, tmp_path / "m1", **kw)
    train_models(snap, tags, tmp_path / "m2", **kw)
    one, two = (json.loads((tmp_path / m / "training.json").read_text()) for m in ("m1", "m2"))
    # Same seed, same run: equal up to float32 summation order across CPU threads.
    assert one["models"]["paper"]["history"][-1]["loss"] == pytest.approx(
        two["models"]["paper"]["history"][-1]["loss"], rel=1e-5)
    assert one["config"]["seed"] == 3 and one["config"]["loss"] == "margin" and one["config"]["batch_size"] == 100
    assert one["models"]["paper"]["config"]["attention"] is True
    assert one["summary"]["n_train_songs"] == N_SONGS - 10 - one["summary"]["n_validation_pairs"] // 5
    with pytest.raises(ValueError, match="infonce"):
        train_models(snap, tags, tmp_path / "m3", **{**kw, "loss": "infonce"})


def test_bilstm_models_have_their_own_epoch_cap_and_the_hybrid_takes_any_lyric_model(task, glove, tmp_path):
    _, snap, tags = task
    train_models(snap, tags, tmp_path / "m", split="b", models=("paper", "psi"), epochs=3, bilstm_epochs=1, patience=10,
                 seed=0, word_vectors=glove, hidden=8, mlp_hidden=16, device="cpu")
    trained = json.loads((tmp_path / "m" / "training.json").read_text())
    assert len(trained["models"]["paper"]["history"]) == 1 and len(trained["models"]["psi"]["history"]) == 3
    assert trained["config"]["bilstm_epochs"] == 1
    # A hybrid over PSI trains no BiLSTM: the lyric side is chosen among the lyric models asked for.
    train_models(snap, tags, tmp_path / "h", split="b", models=("psi", "hybrid"), epochs=1, seed=0, device="cpu")
    hybrid = json.loads((tmp_path / "h" / "training.json").read_text())["models"]
    assert "paper" not in hybrid and hybrid["hybrid"]["lyric_model"] == "psi"


def test_cheap_models_and_the_history_scorers_try_the_discriminant_space(task, tmp_path):
    _, snap, tags = task
    train_models(snap, tags, tmp_path / "m", split="b", models=("psi", "topics", "control", "neighbours"), epochs=1,
                 seed=0, device="cpu")
    trained = json.loads((tmp_path / "m" / "training.json").read_text())["models"]
    tried = set(trained["psi"]["validation_mrr_by_space"])
    assert {"sqrt", "logstd"} < tried and any("+discriminant" in label for label in tried)
    assert trained["psi"]["config"]["image_repr"] in tried
    assert set(trained["control"]["validation_objective_by_space"]) == tried
    assert any("+discriminant" in key for key in trained["neighbours"]["validation_objective_by_setting"])
    topics = trained["topics"]
    assert {key.split(" k=")[0] for key in topics["validation_mrr_by_setting"]} == tried
    chosen = f"{topics['config']['image_repr']} k={topics['config']['topics']} T={topics['config']['temperature']}"
    assert topics["validation_mrr_by_setting"][chosen] == topics["best_validation_mrr"] == max(
        topics["validation_mrr_by_setting"].values())


def test_derangement_moves_every_lyric():
    for n in (2, 3, 10, 101):
        d = derangement(n, seed=n)
        assert sorted(d) == list(range(n)) and not np.any(d == np.arange(n))


# ------------------------------------------------------------------ the permuted-lyrics control
def test_permuted_lyrics_sit_at_chance_and_the_real_model_above(paper_and_permuted):
    _, summary = paper_and_permuted
    real = summary["models"]["paper"]["image_to_song"]
    permuted = summary["models"]["permuted"]["image_to_song"]
    chance = real["chance"]
    assert real["n_queries"] == N_SONGS and real["n_candidates"] == N_SONGS
    # The real model: its whole interval above chance, for R@5 and for MedR.
    assert real["ci95"]["R@5"][0] > chance["R@5"] and real["ci95"]["MedR"][1] < chance["MedR"]
    # The same model trained on permuted lyrics: chance inside its intervals.
    assert permuted["ci95"]["R@5"][0] <= chance["R@5"] <= permuted["ci95"]["R@5"][1]
    assert permuted["ci95"]["MedR"][0] <= chance["MedR"] <= permuted["ci95"]["MedR"][1]


# ------------------------------------------------------------------ stages, run folders, reports
def first_key(home, snap) -> str:
    return next((home / "runs" / snap.name).iterdir()).name


def test_stages_train_evaluate_report_every_model(task, tmp_path):
    from image2song import stages
    from image2song.settings import Settings

    _, snap, tags = task
    settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path)})
    params = {"epochs": 2, "seed": 0, "tag_vocabularies": ["imagenet"]}
    evaluations = []
    for split in ("a", "b"):
        model = stages.train(settings, str(snap), {"imagenet": str(tags)}, split=split, vocabulary="imagenet", params=params)
        evaluations.append(stages.evaluate(settings, model["experiment_dir"]))
    first = stages.report(settings, evaluations, str(snap))
    b = evaluations[1]["models"]
    assert set(b) == {"paper", "permuted", "attentive-reader", "psi", "minilm", "topics", "conse", "control",
                      "neighbours", "popularity", "hybrid"}
    for history in ("control", "neighbours"):
        assert evaluations[0]["models"][history] == {"not_applicable": "no test song has training images in split A"}
    training = json.loads((tmp_path / "runs" / snap.name / first_key(tmp_path, snap) / "imagenet" / "split-b" / "training.json").read_text())
    # The hybrid's lyric side is the lyric model whose fusion is best on validation.
    lyric = training["models"]["hybrid"]["validation_objective_by_lyric_model"]
    assert set(lyric) == {"paper", "attentive-reader", "psi", "minilm", "topics"} == set(LYRIC_MODELS)
    assert training["models"]["hybrid"]["lyric_model"] == max(lyric, key=lyric.get)
    assert max(training["models"]["hybrid"]["validation_objective_by_setting"].values()) == max(lyric.values())
    assert training["models"]["hybrid"]["bandwidth"] in BANDWIDTH_GRID
    assert training["models"]["neighbours"]["bandwidth"] in BANDWIDTH_GRID
    versus = evaluations[1]["hybrid_versus"]
    assert set(versus) == {training["models"]["hybrid"]["lyric_model"], "control", "neighbours"}
    # Split A: no history scorer applies, so the hybrid is compared with its lyric model alone.
    assert len(evaluations[0]["hybrid_versus"]) == 1 and set(evaluations[0]["hybrid_versus"]) <= set(LYRIC_MODELS)
    for d in ("image_to_song", "song_to_image"):
        m = b["hybrid"][d]
        assert set(m["ci95"]) == set(m["model"]) and set(m["chance"]) == set(m["model"])
    md = open(first["report"]).read()
    html = open(first["report_html"]).read()
    for text in ("lyric-free control", "MiniLM", "visual topics", "CONSE", "Attentive Reader", "PSI", "popularity", "permuted lyrics",
                 "*chance*", "split A", "split B", "image → song", "song → image", "The paper's numbers", "62.5",
                 "The hybrid against its parts", "image-history neighbours"):
        assert text in md, text
    assert "<table>" in html and "lyric-free control" in html
    run = tmp_path / "runs" / snap.name / first["run_key"]
    assert first["run_key"].startswith("p-") and (run / "run.json").exists()
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert "recall-imagenet-b-image_to_song.png" in pngs and "per-song-imagenet-a.png" in pngs
    assert (run / "imagenet" / "split-b" / "per_song.csv").read_text().count("\n") == len(b) * N_SONGS + 1
    assert set(first["headline"]) >= {"imagenet a paper", "imagenet b hybrid", "imagenet b control", "imagenet b neighbours"}

    # Another run with other parameters gets its own folder; the snapshot's report lists both.
    other = stages.train(settings, str(snap), {"imagenet": str(tags)}, split="b", vocabulary="imagenet",
                         params={**params, "baselines": ["conse"], "loss": "cosine"}, run_id="manual__2026-01-01T00:00:00")
    second = stages.report(settings, [stages.evaluate(settings, other["experiment_dir"])], str(snap))
    assert second["run_key"] == "manual__2026-01-01T00_00_00" and second["run_dir"] != first["run_dir"]
    latest = open(second["snapshot_report"]).read()
    assert first["run_key"] in latest and second["run_key"] in latest
    assert first["run_key"] in open(second["report"]).read()  # earlier runs beside this one
    with pytest.raises(ValueError, match="no tags for vocabulary 'obj'"):
        stages.train(settings, str(snap), {"imagenet": str(tags)}, split="b", vocabulary="obj", params=params)
    with pytest.raises(ValueError, match="not among the run's tag_vocabularies"):
        stages.train(settings, str(snap), {"imagenet": str(tags), "obj": str(tags)}, split="b", vocabulary="obj",
                     params=params)


def test_the_report_has_the_paper_model_on_every_vocabulary(task, tmp_path):
    """The default run: every model on the first vocabulary, the paper's model alone on obj and attr, and the
    report's Table-2 section with all three for both splits."""
    from image2song import stages
    from image2song.settings import Settings
    from modeling.tags import load_tags, write_view
    from modeling.tags.vocabularies import vocabulary_view

    _, snap, tags = task
    names, probs, shas = load_tags(tags)
    rng = np.random.default_rng(0)
    heads = {"imagenet": (names, probs), "attr": ([f"attribute {i}" for i in range(6)], rng.random((len(shas), 6)))}
    views = {}
    for vocabulary in ("obj", "attr", "obj+attr"):
        tag_names, scores = vocabulary_view(vocabulary, heads)
        views[vocabulary] = write_view(tmp_path / f"{vocabulary}.parquet", shas, scores, tag_names)
    settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path / "home")})
    params = {"epochs": 1, "seed": 0, "baselines": ["conse"]}  # the default vocabularies: obj+attr, obj, attr
    evaluations = []
    for vocabulary in stages.train_params(settings, params)["tag_vocabularies"]:
        for split in ("a", "b"):
            model = stages.train(settings, str(snap), views, split=split, vocabulary=vocabulary, params=params)
            evaluations.append(stages.evaluate(settings, model["experiment_dir"]))
    trained = {(e["vocabulary"], e["split"]): sorted(e["models"]) for e in evaluations}
    assert trained[("obj+attr", "a")] == trained[("obj+attr", "b")] == ["conse", "paper", "permuted"]
    assert all(trained[(v, s)] == ["paper"] for v in ("obj", "attr") for s in ("a", "b")), trained

    summary = stages.report(settings, evaluations, str(snap))
    md = open(summary["report"]).read()
    section = md.split("## The paper's model per tag vocabulary (as the paper's Table 2), image → song")[1]
    section = section.split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| tags")]
    assert [tuple(c.strip() for c in row.split("|")[1:3]) for row in rows] == [
        ("obj", "A"), ("obj", "B"), ("attr", "A"), ("attr", "B"), ("obj+attr", "A"), ("obj+attr", "B")]
    for row, e in zip(rows, sorted(evaluations, key=lambda e: (("obj", "attr", "obj+attr").index(e["vocabulary"]), e["split"]))):
        d = e["models"]["paper"]["image_to_song"]
        cells = [c.strip() for c in row.split("|")[1:-1]]
        # Each figure with its interval, chance beside it.
        assert cells[5] == f"{d['model']['R@5']:.1f} [{d['ci95']['R@5'][0]:.1f}, {d['ci95']['R@5'][1]:.1f}]"
        assert cells[7] == f"{d['model']['MedR']:.1f} [{d['ci95']['MedR'][0]:.1f}, {d['ci95']['MedR'][1]:.1f}]"
        assert cells[-1] == f"{d['chance']['MedR']:.1f}" and cells[3] == str(d["n_candidates"])
    # The printed table: the models where the baselines ran, then the paper's model on every vocabulary.
    assert "| obj+attr | B | conse |" in summary["table"] and "| obj | B | paper |" not in summary["table"]
    assert summary["table"].count("\n| attr | ") == 2 and "as the paper's Table 2" in summary["table"]
    assert {"obj a paper", "attr b paper", "obj+attr b conse"} <= set(summary["headline"])
    # Search takes the paper's model of the first vocabulary, the one every model was trained on.
    assert stages.latest_model(settings, str(snap), "b").endswith("obj+attr/split-b")


def test_the_report_says_plainly_when_the_hybrid_is_one_of_its_sides():
    from modeling.harness.reports import hybrid_sentence

    e = {"split": "b", "hybrid_lyric_model": "psi"}
    assert "weight 0.45" in hybrid_sentence({**e, "hybrid_weight": 0.45}) and "alone" not in hybrid_sentence({**e, "hybrid_weight": 0.45})
    assert "history side alone" in hybrid_sentence({**e, "hybrid_weight": 0.0})
    assert "lyric model alone" in hybrid_sentence({**e, "hybrid_weight": 1.0})
    # On split A every song is new: the lyrics alone are the design, not a finding.
    assert "alone" not in hybrid_sentence({**e, "split": "a", "hybrid_weight": 1.0})
    assert hybrid_sentence({"split": "b", "hybrid_weight": None}) == ""
