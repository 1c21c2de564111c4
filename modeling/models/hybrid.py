"""Beyond the paper: fuse the lyric model with the song's image history.

``score = w * z(lyric) + (1 - w) * z(control)``, where ``z`` standardises each image's scores over the
candidate songs and ``control`` is the lyric-free control (cosine to the mean tag vector of the song's
training images). A song without training images (a new song, split A) has no control score and is
scored by ``z(lyric)`` alone. ``w`` is fitted on the validation part of train (``fit_weight``)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from modeling.models import rowwise_standardize

WEIGHT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


def fuse(lyric: np.ndarray, control: np.ndarray, weight: float) -> np.ndarray:
    zl = rowwise_standardize(lyric)
    c = np.asarray(control, dtype=np.float64)
    known = ~np.isnan(c)
    if not known.any():
        return zl
    cols = known.all(0)
    zc = np.zeros_like(zl)
    if cols.any():
        zc[:, cols] = rowwise_standardize(c[:, cols])
    return np.where(cols[None, :], weight * zl + (1.0 - weight) * zc, zl)


def fit_weight(lyric: np.ndarray, control: np.ndarray, objective: Callable[[np.ndarray], float]) -> tuple[float, dict]:
    """The grid weight with the highest ``objective(fused scores)`` (ties: the larger lyric weight)."""
    results = {float(w): float(objective(fuse(lyric, control, float(w)))) for w in WEIGHT_GRID}
    best = max(results, key=lambda w: (results[w], w))
    return best, results


class HybridScorer:
    name = "hybrid"

    def __init__(self, lyric, control, weight: float):
        self.lyric, self.control, self.weight = lyric, control, float(weight)

    def score(self, image_probs: np.ndarray, song_ids: Sequence[str], song_texts: Sequence[str]) -> np.ndarray:
        return fuse(self.lyric.score(image_probs, song_ids, song_texts),
                    self.control.score(image_probs, song_ids, song_texts), self.weight)
