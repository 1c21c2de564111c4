"""Songs for an image and images for a song, with a trained model over a snapshot.

The songs' vectors (the model's lyric side) and the snapshot's images' vectors (its image side, from
their tags) go into two ``VectorIndex`` es, kept beside the model in
``<model_dir>/search/<snapshot version>-<kind>/{songs,images}`` and reused while they are there. The
song index is calibrated on image vectors (the queries it will answer), the image index on song
vectors. A model with tag attention has no query-independent song vector: its songs are scored
exactly, pair by pair, and no index is built.

Why a match: the cosine of the image vector x and the song vector s (both unit length, in the model's
tag space) is the sum over tags of x_j * s_j; a match lists the tags with the largest terms, the tags
of the image that the song's lyric points to most.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .index import VectorIndex, normalize

log = logging.getLogger(__name__)

CALIBRATION_QUERIES = 500


def top_contributions(image_vector: np.ndarray, song_vector: np.ndarray, tag_names: list[str],
                      n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` tags with the largest positive terms x_j * s_j of the cosine (unit vectors)."""
    if len(tag_names) != len(image_vector):
        return []
    terms = normalize(image_vector[None])[0] * normalize(song_vector[None])[0]
    order = np.argsort(-terms, kind="stable")[:n]
    return [(tag_names[j], round(float(terms[j]), 4)) for j in order if terms[j] > 0]


class SongSearch:
    """Keeps the model, the snapshot's songs and images and both indexes loaded for repeated queries.

    ``kind``: ``"auto"`` (exact up to 50,000 vectors, faiss IVF above), ``"exact"`` or ``"ivf"``.
    ``tagger``: anything with ``tag_file(path) -> probs`` (default: ``modeling.tags.Tagger`` with the model's vocabulary),
    needed only to search with an image file.
    """

    def __init__(self, model_dir: str | os.PathLike, snapshot_dir: str | os.PathLike, tags_path: str | os.PathLike,
                 *, kind: str = "auto", tagger=None, device: str = "cpu", rebuild: bool = False):
        from curation.snapshots.reader import load_snapshot
        from modeling.models import load_scorer

        self.model = load_scorer(model_dir, device=device)
        self.tag_names = list(self.model.tag_names)
        self._tagger = tagger
        self._device = device
        snapshot = load_snapshot(snapshot_dir)
        songs = snapshot.songs.reset_index(drop=True)
        self.songs = songs[["song_id", "title", "artist"]].astype({"song_id": str})
        self._song_row = {sid: i for i, sid in enumerate(self.songs.song_id)}
        self._texts = songs["modeling_text"].fillna("").tolist()
        from modeling.tags import load_tags

        names, probs, shas = load_tags(tags_path)
        if list(names) != self.tag_names:
            raise ValueError(f"{tags_path} has other tags ({len(names)}) than the model was trained with "
                             f"({len(self.tag_names)}): tag the snapshot with the model's vocabulary")
        self.image_sha256 = [str(s) for s in shas]
        self._image_row = {s: i for i, s in enumerate(self.image_sha256)}
        self._image_vectors = self.model.image_vectors(probs)
        triplets = snapshot.triplets
        first = triplets.drop_duplicates("image_sha256").set_index("image_sha256")
        self._image_info = {s: {"image_path": str(first.image_path.get(s, "")), "post_id": str(first.post_id.get(s, ""))}
                            for s in self.image_sha256}
        self.attention = self.model.conditional
        self.song_index = self.image_index = None
        self._song_vectors = None
        if not self.attention:
            folder = Path(model_dir) / "search" / f"{Path(str(snapshot_dir).rstrip('/')).name}-{kind}"
            self._song_vectors = self.model.song_vectors(self._texts)
            self.song_index = self._index(folder / "songs", self._song_vectors, self.songs.song_id,
                                          self._image_vectors, kind, rebuild)
            self.image_index = self._index(folder / "images", self._image_vectors, self.image_sha256,
                                           self._song_vectors, kind, rebuild)

    @staticmethod
    def _index(folder: Path, vectors, ids, queries, kind: str, rebuild: bool) -> VectorIndex:
        if folder.exists() and not rebuild:
            index = VectorIndex.load(folder)
            if len(index) == len(vectors) and list(index.ids) == [str(i) for i in ids]:
                return index
            log.info("search index %s is out of date: rebuilding", folder)
        rng = np.random.default_rng(0)
        sample = queries[rng.choice(len(queries), size=min(CALIBRATION_QUERIES, len(queries)), replace=False)]
        index = VectorIndex.build(vectors, ids, kind=kind, calibration_queries=sample if len(sample) else None)
        index.save(folder)
        log.info("search index: %d vectors (%s) saved in %s", len(index), index.kind, folder)
        return index

    # ------------------------------------------------------------------ image -> songs
    def image_probs(self, image_path: str | os.PathLike) -> np.ndarray:
        if not Path(image_path).is_file():
            raise FileNotFoundError(f"no image file at {image_path}")
        if self._tagger is None:
            from modeling.tags import Tagger

            self._tagger = Tagger.for_tag_names(self.tag_names, device=self._device)
        return np.asarray(self._tagger.tag_file(Path(image_path)), dtype=np.float32).reshape(1, -1)

    def songs_for_image(self, image, top_k: int = 10, n_tags: int = 3) -> list[dict]:
        """``image``: a file path, or tag probabilities [T]. Best first: rank, song_id, title, artist,
        score (cosine), tags (the image's tags that drove the match, with their share of the cosine)."""
        probs = self.image_probs(image) if isinstance(image, (str, os.PathLike)) else np.asarray(image, np.float32).reshape(1, -1)
        x = self.model.image_vectors(probs)
        if self.song_index is None:
            scores = self.model.score(probs, list(self.songs.song_id), self._texts)[0]
            order = np.argsort(-scores, kind="stable")[:top_k]
            hits = [(self.songs.song_id[i], float(scores[i])) for i in order]
        else:
            scores, ids = self.song_index.search(x, top_k)
            hits = list(zip(ids[0], scores[0].tolist()))
        out = []
        for rank, (sid, score) in enumerate(hits, 1):
            row = self._song_row[sid]
            tags = top_contributions(x[0], self._song_vectors[row], self.tag_names, n_tags) \
                if self._song_vectors is not None else []
            out.append({"rank": rank, "song_id": sid, "title": self.songs.title[row], "artist": self.songs.artist[row],
                        "score": round(score, 6), "tags": tags})
        return out

    # ------------------------------------------------------------------ song -> images
    def find_song(self, query: str) -> str:
        """A song id from its id or its title (case-insensitive; "title — artist" when titles repeat)."""
        if query in self._song_row:
            return query
        q = query.casefold().strip()
        title, _, artist = q.partition(" — ")
        found = [sid for sid, t, a in zip(self.songs.song_id, self.songs.title, self.songs.artist)
                 if str(t).casefold() == title and (not artist or str(a).casefold() == artist)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise LookupError(f"no song {query!r} in the snapshot (give its song_id or exact title)")
        raise LookupError(f"{len(found)} songs are titled {query!r}: give 'title — artist' or the song_id")

    def images_for_song(self, song: str, top_k: int = 10, n_tags: int = 3) -> list[dict]:
        """Best first: rank, image_sha256, post_id, image_path, score, tags (as for songs_for_image)."""
        if self.image_index is None:
            raise ValueError("with tag attention a song has no vector of its own: search songs for an image instead")
        sid = self.find_song(song)
        s = self._song_vectors[self._song_row[sid]]
        scores, ids = self.image_index.search(s[None], top_k)
        return [{"rank": r, "image_sha256": sha, **self._image_info[sha], "score": round(float(sc), 6),
                 "tags": top_contributions(self._image_vectors[self._image_row[sha]], s, self.tag_names, n_tags)}
                for r, (sha, sc) in enumerate(zip(ids[0], scores[0].tolist()), 1)]
