"""Beyond the paper: fuse the lyric model with the song's image history.

``score = w * z(lyric) + (1 - w) * z(history)``, where ``z`` standardises each image's scores over the
candidate songs, ``lyric`` is a lyric model (the harness tries each one it trained and keeps the one
whose fusion is best on validation) and ``history`` a lyric-free image-history scorer (the harness uses ``neighbours``, a kernel density over
the song's training images). A song without training images (a new song, split A) has no history score:
its history term is the average, 0, so it is scored by ``w * z(lyric)``, the lyrics alone (where every
song is new the ranking is the lyric model's; beside songs with a history, a new song needs stronger
lyric evidence). ``w``, the history's image space and its bandwidth are fitted together on the validation
part of train (``fit_hybrid``)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from modeling.models import rowwise_standardize
from modeling.models.baselines.neighbours import BANDWIDTH_GRID, history_grid, setting_key
from modeling.models.paper import ImageSpace

WEIGHT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


def fuse(lyric: np.ndarray, history: np.ndarray, weight: float) -> np.ndarray:
    zl = rowwise_standardize(lyric)
    c = np.asarray(history, dtype=np.float64)
    known = ~np.isnan(c)
    if not known.any():
        return zl
    cols = known.all(0)
    zc = np.zeros_like(zl)
    if cols.any():
        zc[:, cols] = rowwise_standardize(c[:, cols])
    # A song without history has no history evidence: its history term is the average, 0.
    return np.where(cols[None, :], weight * zl + (1.0 - weight) * zc, weight * zl)


def fit_weight(lyric: np.ndarray, history: np.ndarray, objective: Callable[[np.ndarray], float]) -> tuple[float, dict]:
    """The grid weight with the highest ``objective(fused scores)`` (ties: the larger lyric weight)."""
    results = {float(w): float(objective(fuse(lyric, history, float(w)))) for w in WEIGHT_GRID}
    best = max(results, key=lambda w: (results[w], w))
    return best, results


def fit_hybrid(lyric_val: np.ndarray, spaces: Sequence[ImageSpace], train_probs: np.ndarray, train_ids: Sequence[str],
               val_probs: np.ndarray, val_song_ids: Sequence[str], objective: Callable[[np.ndarray], float],
               bandwidths: Sequence[float] = BANDWIDTH_GRID) -> tuple[ImageSpace, float, float, dict]:
    """The history side's image space and bandwidth, and the weight, with the highest ``objective`` of the
    fused validation scores (the history being the training images); and the best objective per space and
    bandwidth, keyed by ``setting_key``."""
    best, grid = None, {}
    for space, b, history in history_grid(spaces, train_probs, train_ids, val_probs, val_song_ids, bandwidths):
        weight, by_weight = fit_weight(lyric_val, history, objective)
        value = grid[setting_key(space, b)] = by_weight[weight]
        if best is None or value > best[0]:
            best = (value, space, b, weight)
    return best[1], best[2], best[3], grid


class HybridScorer:
    name = "hybrid"

    def __init__(self, lyric, history, weight: float):
        self.lyric, self.history, self.weight = lyric, history, float(weight)

    def score(self, image_probs: np.ndarray, song_ids: Sequence[str], song_texts: Sequence[str]) -> np.ndarray:
        return fuse(self.lyric.score(image_probs, song_ids, song_texts),
                    self.history.score(image_probs, song_ids, song_texts), self.weight)
