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

The evaluation is model-agnostic: ``evaluate_scorer`` takes any ``scorer(test_set) -> [I, S]``
score matrix (higher = more relevant), so baselines slot in beside ``evaluate`` (the trained model).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10, 50, 100)


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


Scorer = Callable[[TestSet], np.ndarray]


def build_test_set(snapshot_dir: str | os.PathLike, tags_path: str | os.PathLike, split: str) -> TestSet:
    from curation.snapshots.reader import load_snapshot
    from modeling.training import split_pairs, tag_lookup

    snap = load_snapshot(snapshot_dir)
    sha_index, probs, tag_names = tag_lookup(tags_path)
    all_test = snap.split(split, "test")
    pairs, n_untagged = split_pairs(snap, split, "test", sha_index)
    song_ids = sorted(set(all_test["song_id"]))  # candidates: every test song, tagged image or not
    images = sorted(set(pairs["image_sha256"]))
    si = {s: i for i, s in enumerate(song_ids)}
    ii = {s: i for i, s in enumerate(images)}
    relevant = np.zeros((len(images), len(song_ids)), dtype=bool)
    relevant[[ii[s] for s in pairs["image_sha256"]], [si[s] for s in pairs["song_id"]]] = True
    texts = snap.songs.set_index("song_id")["modeling_text"].reindex(song_ids).fillna("").tolist()
    return TestSet(
        split=split,
        image_sha256=images,
        image_probs=probs[[sha_index[s] for s in images]] if images else np.zeros((0, len(tag_names)), np.float32),
        song_ids=song_ids,
        song_texts=texts,
        relevant=relevant,
        tag_names=tag_names,
        n_untagged=int(all_test["image_sha256"].nunique() - len(images)),
    )


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


# ---------------------------------------------------------------- reports
def _fmt(v: float) -> str:
    return f"{v:.2f}"


def report_markdown(report: dict) -> str:
    lines = [f"# Retrieval report: {report.get('name', 'model')}, split {report['split'].upper()}", ""]
    for key, title in (("image_to_song", "Image -> song"), ("song_to_image", "Song -> image")):
        d = report[key]
        lines += [f"## {title} ({d['n_queries']} queries, {d['n_candidates']} candidates)", "",
                  "| metric | model | chance |", "| --- | ---: | ---: |"]
        for metric, value in d["model"].items():
            lines.append(f"| {metric} | {_fmt(value)} | {_fmt(d['chance'][metric])} |")
        lines.append("")
    lines.append("Ranks are 1-based; ties are broken pessimistically; MedR is the median rank of the closest relevant item.")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slim = json.loads(json.dumps(report))
    for key in ("image_to_song", "song_to_image"):
        slim[key].pop("ranks", None)
    jp, mp = out_dir / "report.json", out_dir / "report.md"
    jp.write_text(json.dumps(slim, indent=2))
    mp.write_text(report_markdown(report))
    return jp, mp


def evaluate_scorer(
    snapshot_dir: str | os.PathLike,
    tags_path: str | os.PathLike,
    scorer: Scorer,
    *,
    split: str,
    out_dir: str | os.PathLike | None = None,
    name: str = "model",
    ks: Sequence[int] | None = None,
    extra: dict | None = None,
) -> dict:
    """Evaluate any ``scorer(test_set) -> [I, S]`` on the split's test part; write reports if ``out_dir``."""
    t0 = time.perf_counter()
    ts = build_test_set(snapshot_dir, tags_path, split)
    if not ts.image_sha256 or not ts.song_ids:
        raise ValueError(f"split {split!r} has no tagged test images or no test songs")
    scores = scorer(ts)
    report = {"name": name, "split": split, "n_untagged_test_images": ts.n_untagged, **(extra or {}),
              **evaluate_scores(scores, ts, ks)}
    report["seconds"] = round(time.perf_counter() - t0, 3)
    if out_dir is not None:
        jp, mp = write_report(report, out_dir)
        report["report_json"], report["report_md"] = str(jp), str(mp)
    return report


def summarize(report: dict) -> dict:
    """The small, loggable part of a report (no per-query ranks)."""
    out = {k: v for k, v in report.items() if k not in ("image_to_song", "song_to_image")}
    for key in ("image_to_song", "song_to_image"):
        d = report[key]
        out[key] = {"n_queries": d["n_queries"], "n_candidates": d["n_candidates"], "model": d["model"], "chance": d["chance"]}
    return out


def evaluate(
    model_dir: str | os.PathLike,
    snapshot_dir: str | os.PathLike,
    tags_path: str | os.PathLike,
    *,
    split: str | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    ks: Sequence[int] | None = None,
) -> dict:
    """Evaluate a trained model (``model_dir/model.pt``) on the test part of ``split`` (default: the
    split it was trained on); writes ``report.json`` + ``report.md`` to ``out_dir`` (default
    ``model_dir``) and returns the summary (metrics for both directions, model and chance).
    """
    from modeling.model import load_model

    lm = load_model(model_dir, device=device)
    split = split or lm.config["split"]
    if split != lm.config["split"]:
        log.warning("evaluating a model trained on split %s on split %s: test images may have been trained on",
                    lm.config["split"], split)

    def scorer(ts: TestSet) -> np.ndarray:
        if ts.tag_names != lm.tag_names:
            raise ValueError("the tags file uses other tag names than the model was trained with")
        return lm.score(ts.image_probs, ts.song_texts, progress=progress)

    report = evaluate_scorer(
        snapshot_dir, tags_path, scorer, split=split,
        out_dir=Path(model_dir) if out_dir is None else out_dir, name=f"image2song{'-attention' if lm.model.attention else ''}",
        ks=ks, extra={"model_dir": str(model_dir), "config": lm.config},
    )
    summary = summarize(report)
    i2s = summary["image_to_song"]
    log.info("evaluation: split %s image->song %s (chance %s)", split, i2s["model"], i2s["chance"])
    return summary
