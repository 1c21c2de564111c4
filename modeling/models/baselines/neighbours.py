"""Image-history neighbours: a lyric-free scorer that keeps every training image of a song instead of
their mean (the ``control``).

An image scores a song by a kernel density over that song's training images ``H(s)``:
``score(i, s) = log mean_{h in H(s)} exp(cos(i, h) / bandwidth)``, in an ``ImageSpace`` like the paper's
model's. A small bandwidth is the nearest neighbour (a song whose posts reuse one picture is found from
that picture even when its other posts look different); a large one approaches the mean cosine. The
mean, not the sum, keeps it free of a song's post count: a popularity prior belongs to ``popularity``
(and split B holds out one test image per song, whatever its popularity).
The image space (one of ``validated_spaces``: a tag space, or the discriminant space learned from the
training songs' images) and the bandwidth are fitted on the validation part (``fit_neighbours``). Like the
control it never reads a lyric and scores NaN for a song without training images (split A)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from modeling.models import unit_rows
from modeling.models.paper import ImageSpace

BANDWIDTH_GRID = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
DEFAULT_BANDWIDTH = 0.1


class ImageHistoryNeighbours:
    name = "neighbours"

    def __init__(self, space: ImageSpace, songs: Sequence[str], vectors: np.ndarray, starts: np.ndarray,
                 bandwidth: float = DEFAULT_BANDWIDTH):
        # ``vectors`` [N, D] unit rows grouped by song; song k owns rows starts[k]:starts[k + 1].
        self.space, self.songs, self.vectors, self.starts = space, list(songs), vectors, starts
        self.bandwidth = float(bandwidth)

    @classmethod
    def build(cls, probs: np.ndarray, song_ids: Sequence[str], space: ImageSpace,
              bandwidth: float = DEFAULT_BANDWIDTH) -> "ImageHistoryNeighbours":
        ids = np.asarray(song_ids)
        order = np.argsort(ids, kind="stable")
        songs, starts = np.unique(ids[order], return_index=True)
        vectors = unit_rows(space.transform(np.asarray(probs)[order])) if len(order) else np.zeros((0, 0), np.float32)
        return cls(space, songs.tolist(), vectors, np.append(starts, len(order)), bandwidth)

    def similarities(self, image_probs: np.ndarray) -> np.ndarray:
        """Cosine [I, N] between the images and every history image (computed once per bandwidth fit)."""
        return unit_rows(self.space.transform(np.asarray(image_probs))) @ self.vectors.T

    def score_from(self, sims: np.ndarray, song_ids: Sequence[str], bandwidth: float | None = None) -> np.ndarray:
        b = self.bandwidth if bandwidth is None else float(bandwidth)
        out = np.full((sims.shape[0], len(song_ids)), np.nan, dtype=np.float64)
        if sims.shape[1] == 0:
            return out
        z = sims.astype(np.float64) / b
        top = z.max(1, keepdims=True)  # log-sum-exp, stable
        sums = np.add.reduceat(np.exp(z - top), self.starts[:-1], axis=1)
        per_song = np.log(sums / np.diff(self.starts)) + top  # [I, songs]
        col = {s: k for k, s in enumerate(self.songs)}
        for j, s in enumerate(song_ids):
            if s in col:
                out[:, j] = per_song[:, col[s]]
        return out

    def score(self, image_probs: np.ndarray, song_ids: Sequence[str], song_texts: Sequence[str] | None = None) -> np.ndarray:
        return self.score_from(self.similarities(image_probs), song_ids)


def setting_key(space: ImageSpace, bandwidth: float) -> str:
    """How a grid setting is named in results: ``"<space label> b=<bandwidth>"``."""
    return f"{space.label} b={bandwidth}"


def history_grid(spaces: Sequence[ImageSpace], train_probs: np.ndarray, train_ids: Sequence[str],
                 val_probs: np.ndarray, val_song_ids: Sequence[str], bandwidths: Sequence[float] = BANDWIDTH_GRID):
    """Yield ``(space, bandwidth, validation scores)`` of the neighbours over every setting of the grid, the
    history being the training images; in tie-break order: the earlier space, the larger (smoother)
    bandwidth first. The similarities are computed once per space."""
    for space in spaces:
        history = ImageHistoryNeighbours.build(train_probs, train_ids, space)
        sims = history.similarities(val_probs)
        for b in sorted(bandwidths, reverse=True):
            yield space, b, history.score_from(sims, val_song_ids, b)


def fit_neighbours(spaces: Sequence[ImageSpace], train_probs: np.ndarray, train_ids: Sequence[str],
                   val_probs: np.ndarray, val_song_ids: Sequence[str], objective: Callable[[np.ndarray], float],
                   bandwidths: Sequence[float] = BANDWIDTH_GRID) -> tuple[ImageSpace, float, dict]:
    """The image space and bandwidth with the highest ``objective(validation scores)`` (ties: the first in
    ``history_grid`` order); and every grid score, keyed by ``setting_key``."""
    best, grid = None, {}
    for space, b, scores in history_grid(spaces, train_probs, train_ids, val_probs, val_song_ids, bandwidths):
        value = grid[setting_key(space, b)] = float(objective(scores))
        if best is None or value > best[0]:
            best = (value, space, b)
    return best[1], best[2], grid
