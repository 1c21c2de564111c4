"""Retrieval evaluation on a split's test part: image -> song and song -> image.

Test set: the distinct tagged images of the split's test part and the distinct songs of that part
(split A: the held-out songs with their images; split B: every song, one test image each). A
(image, song) pair is relevant when a test triplet joins them.

Rank convention: ranks are 1-based (1 = best). For a query, the rank is that of its *closest*
relevant candidate (the paper's "median rank of the closest correct retrieved item"): with ``s*`` the
highest score among the relevant candidates, ``rank = 1 + #{irrelevant candidates with score >= s*}``.
Ties are broken pessimistically (a tied irrelevant candidate counts as ranked above), so a constant
scorer gets the worst rank, never a lucky one. NaN scores count as -inf.

Metrics: ``R@K`` = percent of queries with rank <= K; ``MedR`` = median of the ranks (numpy median:
the mean of the two middle ranks for an even count). Chance figures are exact expectations under a
uniformly random ranking: with N candidates and m relevant ones, P(rank <= K) = 1 - C(N-m, K)/C(N, K)
(K/N for m = 1) averaged over queries; chance MedR is the median of the closest-rank distribution
pooled over queries, ``(N + 1) / 2`` for m = 1.

Confidence intervals: 95 % percentile bootstrap over queries (``BOOTSTRAP`` resamples, seeded), for
every R@K and MedR. Two models scored on the same queries are compared by a paired bootstrap of their
difference (``paired_difference``: each resample draws the same queries for both), which is tighter
than setting two separate intervals side by side; the hybrid is compared so with each of its parts.

The evaluation is model-agnostic: ``evaluate_models`` scores every model of a trained experiment
(``harness.training.train_models``) through the same ``score(image_probs, song_ids, song_texts)`` on
the split's test part and writes ``evaluation.json`` and ``per_song.csv`` beside the models.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 3, 5, 10, 20, 50, 100)


# ---------------------------------------------------------------- metrics on score matrices
def closest_relevant_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's best-scored relevant candidate, ties pessimistic.

    ``scores`` [Q, C] (higher = better), ``relevant`` bool [Q, C] with at least one True per row.
    """
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} differ in shape")
    if not relevant.any(axis=1).all():
        raise ValueError("every query needs at least one relevant candidate")
    best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
    # A relevant item at -inf (NaN score) still ranks after every irrelevant one.
    return 1 + ((scores >= best) & ~relevant).sum(axis=1)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(ranks) <= k) * 100.0)


def median_rank(ranks: np.ndarray) -> float:
    return float(np.median(np.asarray(ranks)))


def _chance_rank_cdf(n: int, m: int) -> np.ndarray:
    """P(closest relevant rank <= k) for k = 1..N - m + 1 under a random order."""
    k = np.arange(1, n - m + 2)
    return np.array([1.0 - math.comb(n - kk, m) / math.comb(n, m) for kk in k])


def chance_metrics(n_candidates: int, n_relevant: Sequence[int], ks: Sequence[int]) -> dict:
    """Expected R@K and the median closest rank for a random ranking (see the module docstring)."""
    n = int(n_candidates)
    counts: dict[int, int] = {}
    for m in n_relevant:
        counts[int(m)] = counts.get(int(m), 0) + 1
    q = sum(counts.values())
    out = {}
    for k in ks:
        out[f"R@{k}"] = 100.0 * sum(c * (1.0 - math.comb(n - m, k) / math.comb(n, k)) for m, c in counts.items()) / q
    # Pooled CDF over ranks 1..n, median with the midpoint convention at an exact 0.5.
    cdf = np.zeros(n)
    for m, c in counts.items():
        part = _chance_rank_cdf(n, m)
        cdf[: len(part)] += c * part
        cdf[len(part):] += c
    cdf /= q
    j = int(np.searchsorted(cdf, 0.5 - 1e-12))  # first index with cdf >= 0.5
    medr = float(j + 1)
    if abs(cdf[j] - 0.5) < 1e-12 and j + 1 < n:
        medr = j + 1.5
    out["MedR"] = medr
    return out


def retrieval_metrics(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] | None = None) -> dict:
    """R@K, MedR (model) and their chance values for one direction; K >= N are left out."""
    scores = np.asarray(scores)
    n = scores.shape[1]
    ks = [k for k in (ks or DEFAULT_KS) if k < n] or [1]
    ranks = closest_relevant_rank(scores, relevant)
    model = {f"R@{k}": recall_at_k(ranks, k) for k in ks}
    model["MedR"] = median_rank(ranks)
    return {
        "n_queries": int(scores.shape[0]),
        "n_candidates": int(n),
        "model": model,
        "chance": chance_metrics(n, np.asarray(relevant).sum(axis=1), ks),
        "ranks": ranks.tolist(),
    }


# ---------------------------------------------------------------- test sets
@dataclass
class TestSet:
    """Images x songs of a split's test part; ``relevant[i, s]`` when a test triplet joins them."""

    split: str
    image_sha256: list[str]
    image_probs: np.ndarray  # [I, T]
    song_ids: list[str]
    song_texts: list[str]  # modeling_text
    relevant: np.ndarray  # bool [I, S]
    tag_names: list[str]
    n_untagged: int = 0


def evaluate_scores(scores: np.ndarray, test_set: TestSet, ks: Sequence[int] | None = None) -> dict:
    """Both directions from one [I, S] score matrix (song -> image uses its transpose)."""
    scores = np.asarray(scores, dtype=np.float64)
    expected = test_set.relevant.shape
    if scores.shape != expected:
        raise ValueError(f"scorer returned {scores.shape}, expected [images, songs] = {expected}")
    rel = test_set.relevant
    has_img = rel.any(axis=0)  # songs whose test images are all untagged cannot be song queries
    return {
        "image_to_song": retrieval_metrics(scores, rel, ks),
        "song_to_image": retrieval_metrics(scores.T[has_img], rel.T[has_img], ks),
    }


def pairs_test_set(pairs, candidates: Sequence[str], texts: Sequence[str], split: str, tag_names: Sequence[str]) -> TestSet:
    """Test queries from (image, song) ``pairs`` (``harness.data.Pairs``) against ``candidates`` songs."""
    images = sorted(set(pairs.image_sha256))
    ii = {s: i for i, s in enumerate(images)}
    si = {s: i for i, s in enumerate(candidates)}
    relevant = np.zeros((len(images), len(candidates)), dtype=bool)
    probs = np.zeros((len(images), pairs.probs.shape[1]), dtype=np.float32)
    for sha, p, song in zip(pairs.image_sha256, pairs.probs, pairs.song_ids):
        probs[ii[sha]] = p
        if song in si:
            relevant[ii[sha], si[song]] = True
    keep = relevant.any(1)
    return TestSet(split=split, image_sha256=[s for s, k in zip(images, keep) if k], image_probs=probs[keep],
                   song_ids=list(candidates), song_texts=list(texts), relevant=relevant[keep], tag_names=list(tag_names))


BOOTSTRAP = 1000


def bootstrap_ci(ranks: Sequence[int], ks: Sequence[str], *, n: int = BOOTSTRAP, seed: int = 0) -> dict:
    """95 % percentile intervals over queries for each metric in ``ks`` (``"R@K"`` or ``"MedR"``)."""
    r = np.asarray(ranks)
    rng = np.random.default_rng(seed)
    sample = r[rng.integers(0, len(r), size=(n, len(r)))]
    out = {}
    for key in ks:
        vals = _metric(sample, key)
        out[key] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]
    return out


def _metric(sample: np.ndarray, key: str) -> np.ndarray:
    return np.median(sample, -1) if key == "MedR" else (sample <= int(key[2:])).mean(-1) * 100.0


def paired_difference(ranks_a: Sequence[int], ranks_b: Sequence[int], ks: Sequence[str] = ("R@10", "MedR"), *,
                      n: int = BOOTSTRAP, seed: int = 0) -> dict:
    """``a - b`` per metric over the same queries, with a 95 % paired-bootstrap interval: an interval
    that excludes 0 says the two differ (for MedR, lower is better, so a negative difference favours a)."""
    a, b = np.asarray(ranks_a), np.asarray(ranks_b)
    if a.shape != b.shape:
        raise ValueError(f"paired ranks must cover the same queries: {a.shape} against {b.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n, len(a)))
    out = {}
    for key in ks:
        diff = _metric(a[idx], key) - _metric(b[idx], key)
        out[key] = {"difference": float(_metric(a, key) - _metric(b, key)),
                    "ci95": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))]}
    return out


def direction_metrics(scores: np.ndarray, relevant: np.ndarray, ks=None, *, seed: int = 0) -> dict:
    d = retrieval_metrics(scores, relevant, ks)
    d["ci95"] = bootstrap_ci(d["ranks"], list(d["model"]), seed=seed)
    return d


NOT_APPLICABLE = {name: {"a": "no test song has training images in split A"} for name in ("control", "neighbours")}


def evaluate_models(run_dir: str | os.PathLike, *, device: str = "auto", ks: Sequence[int] | None = None, seed: int = 0) -> dict:
    """Score every model saved in ``run_dir`` (one split, one vocabulary) on the split's test part.

    Writes ``evaluation.json`` (both directions per model: R@K, MedR, bootstrap CIs, chance, per-query
    ranks) and ``per_song.csv``; returns a small summary (no ranks).
    """
    import pandas as pd

    from modeling.harness.data import load_split
    from modeling.models import load_scorer

    run_dir = Path(run_dir)
    training = json.loads((run_dir / "training.json").read_text())
    cfg = training["config"]
    data = load_split(cfg["snapshot"], cfg["tags_path"], cfg["split"], vocabulary=cfg["vocabulary"], seed=cfg["seed"])
    ts = pairs_test_set(data.test, data.test_songs, data.texts(data.test_songs), data.split, data.tag_names)
    if not ts.image_sha256 or not ts.song_ids:
        raise ValueError(f"split {data.split!r} has no tagged test images or no test songs")
    t0 = time.perf_counter()
    results, per_song = {}, []
    has_img = ts.relevant.any(0)
    for name in training["summary"]["models"]:
        why = NOT_APPLICABLE.get(name, {}).get(data.split)
        if why:
            results[name] = {"not_applicable": why}
            continue
        scorer = load_scorer(run_dir / f"{name}.pt", device=device)
        ts_ = time.perf_counter()
        scores = np.asarray(scorer.score(ts.image_probs, ts.song_ids, ts.song_texts), dtype=np.float64)
        if scores.shape != ts.relevant.shape:
            raise ValueError(f"{name} returned {scores.shape}, expected [images, songs] = {ts.relevant.shape}")
        i2s = direction_metrics(scores, ts.relevant, ks, seed=seed)
        s2i = direction_metrics(scores.T[has_img], ts.relevant.T[has_img], ks, seed=seed)
        results[name] = {"image_to_song": i2s, "song_to_image": s2i, "seconds": round(time.perf_counter() - ts_, 2)}
        # Per song: its rank as a query, and the median rank it gets from its own test images.
        img_ranks = np.asarray(i2s["ranks"])
        song_query = dict(zip(np.asarray(ts.song_ids)[has_img], s2i["ranks"]))
        for j, song in enumerate(ts.song_ids):
            mine = img_ranks[ts.relevant[:, j]]
            per_song.append({"model": name, "song_id": song, "song_to_image_rank": song_query.get(song),
                             "image_to_song_median_rank": float(np.median(mine)) if len(mine) else None,
                             "n_test_images": int(len(mine))})
    # The hybrid against each of its parts and the lyric-free scorers, query by query.
    hybrid_lyric = training["models"].get("hybrid", {}).get("lyric_model")
    hybrid_versus = {other: {d: paired_difference(results["hybrid"][d]["ranks"], results[other][d]["ranks"], seed=seed)
                             for d in ("image_to_song", "song_to_image")}
                     for other in (hybrid_lyric, "control", "neighbours")
                     if "hybrid" in results and other in results and "not_applicable" not in results[other]}
    evaluation = {"split": data.split, "vocabulary": data.vocabulary, "n_images": len(ts.image_sha256),
                  "n_songs": len(ts.song_ids), "n_untagged": data.n_untagged, "config": cfg,
                  "hybrid_weight": training["models"].get("hybrid", {}).get("weight"),
                  "hybrid_lyric_model": hybrid_lyric, "hybrid_versus": hybrid_versus,
                  "training": {k: {kk: v.get(kk) for kk in ("best_epoch", "best_validation_mrr", "seconds", "loss")}
                               for k, v in training["models"].items() if "history" in v},
                  "models": results, "seconds": round(time.perf_counter() - t0, 2)}
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation, default=float))
    songs = data.songs.reindex(ts.song_ids)[["title", "artist"]].reset_index()
    pd.DataFrame(per_song).merge(songs, on="song_id", how="left").to_csv(run_dir / "per_song.csv", index=False)
    return summarize(evaluation)


def summarize(evaluation: dict) -> dict:
    """The loggable part of an evaluation: metrics, intervals and chance, no per-query ranks."""
    out = {k: v for k, v in evaluation.items() if k not in ("models", "config")}
    out["models"] = {}
    for name, r in evaluation["models"].items():
        if "not_applicable" in r:
            out["models"][name] = r
            continue
        out["models"][name] = {d: {k: r[d][k] for k in ("n_queries", "n_candidates", "model", "chance", "ci95")}
                               for d in ("image_to_song", "song_to_image")}
    return out
