"""The lyric-free control: a song is the mean of its training images' tag vectors (in the same
``ImageSpace`` as the paper's model); an image scores each song by cosine similarity to that mean.
It never reads a lyric, so it only works for songs with training images (split B); a song without
any scores NaN (ranked last; the hybrid falls back to the lyrics for it)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from modeling.models import unit_rows
from modeling.models.paper import ImageSpace


class ImageHistoryControl:
    name = "control"

    def __init__(self, space: ImageSpace, history: dict[str, np.ndarray]):
        self.space, self.history = space, history

    @classmethod
    def build(cls, probs: np.ndarray, song_ids: Sequence[str], space: ImageSpace) -> "ImageHistoryControl":
        vecs = space.transform(probs)
        ids = np.asarray(song_ids)
        return cls(space, {s: vecs[ids == s].mean(0) for s in sorted(set(song_ids))})

    def score(self, image_probs: np.ndarray, song_ids: Sequence[str], song_texts: Sequence[str] | None = None) -> np.ndarray:
        img = self.space.transform(image_probs)
        img = unit_rows(img)
        songs = np.full((len(song_ids), img.shape[1]), np.nan, dtype=np.float32)
        for j, s in enumerate(song_ids):
            if s in self.history:
                v = self.history[s]
                songs[j] = v / max(float(np.linalg.norm(v)), 1e-12)
        return img @ songs.T
