"""Find songs for an image: tag it with EfficientNet-Lite0, score every song of a snapshot."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _model_file(model: str | os.PathLike) -> Path:
    """A model file (``paper.pt``), or an experiment folder holding one."""
    path = Path(model)
    return path / "paper.pt" if path.is_dir() else path


class SongSearcher:
    """Keeps the model, the tagger and the snapshot's songs loaded for repeated queries."""

    def __init__(self, model: str | os.PathLike, snapshot_dir: str | os.PathLike, *, tags_model=None, device: str = "auto"):
        from curation.snapshots.reader import load_snapshot
        from modeling.models import load_scorer
        from modeling.tagging import Tagger

        self.model = load_scorer(_model_file(model), device=device)
        self.tagger = tags_model if tags_model is not None else Tagger(device)
        if list(self.tagger.tag_names) != list(self.model.tag_names):
            raise ValueError("the tagger's tag names differ from the ones the model was trained with")
        songs = load_snapshot(snapshot_dir).songs
        self.songs = songs[["song_id", "title", "artist"]].reset_index(drop=True)
        self.texts = songs["modeling_text"].fillna("").tolist()

    def search_probs(self, probs: np.ndarray, top_k: int = 10) -> list[dict]:
        probs = np.asarray(probs, dtype=np.float32).reshape(1, -1)
        scores = self.model.score(probs, self.songs.song_id.tolist(), self.texts)[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [
            {"rank": r + 1, "song_id": str(self.songs.song_id[i]), "title": self.songs.title[i],
             "artist": self.songs.artist[i], "score": float(scores[i])}
            for r, i in enumerate(order)
        ]

    def search(self, image_path: str | os.PathLike, top_k: int = 10) -> list[dict]:
        return self.search_probs(self.tagger.tag_file(Path(image_path)), top_k)


def search_songs(
    model: str | os.PathLike,
    snapshot_dir: str | os.PathLike,
    image_path: str | os.PathLike,
    *,
    top_k: int = 10,
    tags_model=None,
    device: str = "auto",
) -> list[dict]:
    """Top-``top_k`` songs of the snapshot for one image file, best first.

    ``model``: a trained ``paper.pt`` or the experiment folder holding it. Each result: rank, song_id,
    title, artist, score (cosine similarity in the model's tag space). ``tags_model``: a loaded
    ``modeling.tagging.Tagger`` to reuse (else one is loaded). For many queries keep a ``SongSearcher``.
    """
    if not Path(image_path).is_file():
        raise FileNotFoundError(f"no image file at {image_path}")
    return SongSearcher(model, snapshot_dir, tags_model=tags_model, device=device).search(image_path, top_k)
