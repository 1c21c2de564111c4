"""Popularity: every image gets the same ranking, the most popular songs first (the song's number of
posts in the snapshot, ties broken by its posts' total favorite count). It uses post metadata only,
no image and no lyric: a model has to beat it to show that it reads either."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class PopularityScorer:
    name = "popularity"

    def __init__(self, popularity: dict[str, float]):
        self.popularity = popularity

    @classmethod
    def build(cls, song_ids: Sequence[str], favorites: Sequence[float]) -> "PopularityScorer":
        """``song_ids``/``favorites``: one entry per post of the snapshot."""
        posts: dict[str, float] = {}
        favs: dict[str, float] = {}
        for s, f in zip(song_ids, favorites):
            posts[s] = posts.get(s, 0) + 1
            favs[s] = favs.get(s, 0.0) + float(f or 0)
        top = max(favs.values(), default=0.0) + 1.0
        return cls({s: posts[s] + favs[s] / top for s in posts})

    def score(self, image_probs: np.ndarray, song_ids: Sequence[str], song_texts: Sequence[str] | None = None) -> np.ndarray:
        row = np.array([self.popularity.get(s, 0.0) for s in song_ids], dtype=np.float32)
        return np.tile(row, (len(image_probs), 1))
