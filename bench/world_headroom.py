"""How much can a song's words add to its image history on split B of the demo world? A ceiling, measured
with the world's ground truth. Prints figures; not a test.

    IMAGE2SONG_HOME=... .venv/bin/python bench/world_headroom.py [--vocabulary obj+attr] [--seed 0]

It reads the state folder's latest snapshot, its tags and the demo world's ground truth
(``demo-corpus/truth.json``). The world's pairing rule (``image2song.demo.corpus``) lets a song's words
choose its theme and nothing more: the 3 stamps a song favours are drawn at random within the theme. So a
lyric model can at best know each song's theme. The **oracle** here is that model made perfect: it knows
the true theme of every song whose own words chose its theme (``theme_by == "overlap"`` and an ``ok``
lyric; a hashed theme, or another song's lyric, is outside what its words can tell, and the oracle
scores those songs all alike). It scores an image for a song
by a kernel density over the training images of every song of that theme, in the history's image space
and bandwidth. ``oracle (every theme)`` also knows the hashed themes: a looser ceiling.

Printed, on split B's test part, image -> song R@10 and MedR with 95 % bootstrap intervals:
the control and the neighbours (fitted on validation as ``train_models`` does), each oracle alone, and
each oracle fused with the neighbours (``models.hybrid.fuse``) with the weight fitted on validation and
with the weight that is best on the test part itself (a ceiling no honest fit reaches); then paired
differences of the fused scorers against the neighbours and the control. If even the test-best fusion of
the perfect oracle does not beat the control by more than the intervals, no lyric model can on this world.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def song_themes(snapshot: str, truth: dict) -> tuple[dict[str, str], dict[str, str]]:
    """Snapshot song id -> the world's theme, and -> how the theme was chosen (``overlap``: by the words,
    ``hash``: by a seeded hash; ``not its own words`` where the lyric is not the song's own, e.g. a
    mismatched one). A snapshot song is the world's song most of its posts came from."""
    from curation.snapshots.reader import load_snapshot

    triplets = load_snapshot(snapshot).triplets
    posts = truth["posts"]
    votes: dict[str, Counter] = {}
    for song_id, external in zip(triplets["song_id"], triplets["external_id"].astype(str)):
        key = posts.get(external, {}).get("song")
        if key is not None:
            votes.setdefault(song_id, Counter())[key] += 1
    songs = truth["songs"]
    world = {s: c.most_common(1)[0][0] for s, c in votes.items()}
    return ({s: songs[k]["theme"] for s, k in world.items()},
            {s: songs[k]["theme_by"] if songs[k]["kind"] == "ok" else "not its own words" for s, k in world.items()})


def theme_density(history, theme_of: dict[str, str], image_probs, song_ids, bandwidth: float, known=None):
    """[I, S] log mean exp(cos / b) over the history images of every song of each song's theme: the same
    for every song of a theme. Songs outside ``known`` (when given) score each image's average over the
    known songs: the oracle knows nothing of them."""
    import numpy as np

    row_theme = np.repeat(np.array([theme_of.get(s, "") for s in history.songs]), np.diff(history.starts))
    z = history.similarities(image_probs).astype(np.float64) / bandwidth
    top = z.max(1, keepdims=True)  # log-sum-exp, stable
    per_theme = {t: np.log(np.exp(z[:, row_theme == t] - top).mean(1)) + top[:, 0]
                 for t in set(row_theme.tolist()) - {""}}
    out = np.full((len(image_probs), len(song_ids)), np.nan)
    for j, s in enumerate(song_ids):
        if theme_of.get(s) in per_theme and (known is None or s in known):
            out[:, j] = per_theme[theme_of[s]]
    known_mean = np.nanmean(out, axis=1, keepdims=True) if not np.isnan(out).all() else np.zeros((len(out), 1))
    return np.where(np.isnan(out), known_mean, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabulary", default="obj+attr", help="tag vocabulary (default obj+attr)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshot", default=None, help="a snapshot version or folder (default: the latest)")
    args = parser.parse_args(argv)

    import numpy as np

    from image2song import stages
    from image2song.settings import Settings
    from modeling.harness.data import load_split
    from modeling.harness.evaluation import bootstrap_ci, closest_relevant_rank, paired_difference, pairs_test_set
    from modeling.harness.training import negative_mean_log_rank
    from modeling.models.baselines.control import ImageHistoryControl
    from modeling.models.baselines.neighbours import ImageHistoryNeighbours, fit_neighbours
    from modeling.models.hybrid import WEIGHT_GRID, fuse
    from modeling.models.paper import validated_spaces

    settings = Settings.from_env()
    truth_path = settings.demo_corpus / "truth.json"
    if not truth_path.exists():
        parser.error(f"no demo world here: {truth_path} is missing (build one with `image2song demo`)")
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    snapshot = stages.resolve_snapshot(settings, args.snapshot)
    tags = stages.extract_tags(settings, snapshot, vocabulary=args.vocabulary)
    data = load_split(snapshot, tags["tags_path"], "b", vocabulary=args.vocabulary, seed=args.seed)
    theme_of, theme_by = song_themes(snapshot, truth)
    by_words = {s for s, how in theme_by.items() if how == "overlap"}

    val_songs = data.validation_songs
    val = pairs_test_set(data.validation, val_songs, data.texts(val_songs), "b", data.tag_names)
    test = pairs_test_set(data.test, data.test_songs, data.texts(data.test_songs), "b", data.tag_names)
    objective = lambda s: negative_mean_log_rank(s, val.relevant)  # noqa: E731
    spaces = validated_spaces(data.train.probs, data.train.song_ids)
    space, bandwidth, _ = fit_neighbours(spaces, data.train.probs, data.train.song_ids, val.image_probs,
                                         val.song_ids, objective)
    control_space = max(spaces, key=lambda sp: objective(
        ImageHistoryControl.build(data.train.probs, data.train.song_ids, sp).score(val.image_probs, val.song_ids)))
    history_probs = np.concatenate([data.train.probs, data.validation.probs])
    history_ids = data.train.song_ids + data.validation.song_ids
    val_history = ImageHistoryNeighbours.build(data.train.probs, data.train.song_ids, space, bandwidth)
    test_history = ImageHistoryNeighbours.build(history_probs, history_ids, space, bandwidth)

    scores = {
        "control": ImageHistoryControl.build(history_probs, history_ids, control_space).score(test.image_probs, test.song_ids),
        "neighbours": test_history.score(test.image_probs, test.song_ids),
    }
    hist_val = val_history.score(val.image_probs, val.song_ids)
    hist_test = scores["neighbours"]
    for name, known in (("oracle (words' themes)", by_words), ("oracle (every theme)", None)):
        o_val = theme_density(val_history, theme_of, val.image_probs, val.song_ids, bandwidth, known)
        o_test = theme_density(test_history, theme_of, test.image_probs, test.song_ids, bandwidth, known)
        scores[name] = o_test
        w_val = max(WEIGHT_GRID, key=lambda w: (objective(fuse(o_val, hist_val, float(w))), w))
        r10 = {float(w): (closest_relevant_rank(fuse(o_test, hist_test, float(w)), test.relevant) <= 10).mean()
               for w in WEIGHT_GRID}
        w_test = max(r10, key=lambda w: (r10[w], w))
        scores[f"{name} + history, w {w_val:.2f} (validation)"] = fuse(o_test, hist_test, float(w_val))
        scores[f"{name} + history, w {w_test:.2f} (test-best R@10)"] = fuse(o_test, hist_test, float(w_test))

    ranks = {name: closest_relevant_rank(s, test.relevant) for name, s in scores.items()}
    n_songs = len(test.song_ids)
    print(f"split B of {Path(snapshot).name}: {len(test.image_probs)} test images, {n_songs} songs "
          f"(themes the song's own words chose: {len(by_words & set(test.song_ids))}); history: {space.label}, b {bandwidth}; "
          f"control: {control_space.label}")
    print(f"{'scorer':58s} {'R@10':>6s} {'95 % interval':>14s} {'MedR':>7s} {'95 % interval':>15s}")
    for name, r in ranks.items():
        ci = bootstrap_ci(r, ("R@10", "MedR"), seed=args.seed)
        print(f"{name:58s} {(r <= 10).mean() * 100:6.1f} [{ci['R@10'][0]:5.1f}, {ci['R@10'][1]:5.1f}] "
              f"{np.median(r):7.1f} [{ci['MedR'][0]:6.1f}, {ci['MedR'][1]:6.1f}]")
    print("\npaired differences (fused minus baseline), R@10 points and MedR ranks, 95 % intervals:")
    for name in [n for n in ranks if "+ history" in n]:
        for base in ("neighbours", "control"):
            d = paired_difference(ranks[name], ranks[base], seed=args.seed)
            print(f"  {name:58s} - {base:10s} R@10 {d['R@10']['difference']:+5.1f} "
                  f"[{d['R@10']['ci95'][0]:+5.1f}, {d['R@10']['ci95'][1]:+5.1f}]  MedR {d['MedR']['difference']:+6.1f} "
                  f"[{d['MedR']['ci95'][0]:+6.1f}, {d['MedR']['ci95'][1]:+6.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
