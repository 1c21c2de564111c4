"""What one experiment reads: a snapshot split's train, validation and test parts for one tag vocabulary.

- **train** / **test**: the snapshot's split parts, (image, song) pairs whose image has ``ok`` tags.
- **validation**: carved out of train the way the split carves test out of the whole, seeded
  (BLAKE2b of the seed and the key, as snapshots draw membership): split A holds out
  ``validation_fraction`` of the training songs with all their images; split B holds out one image of
  every training song that has at least two (at most ``max_validation`` images). Early stopping and
  the hybrid's weight are chosen on it; the test part is never looked at before evaluation.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Pairs:
    """(image, song) pairs: ``probs[i]`` is image ``image_sha256[i]``'s tag vector, paired with ``song_ids[i]``."""

    image_sha256: list[str]
    probs: np.ndarray  # [N, T] float32
    song_ids: list[str]

    def __len__(self) -> int:
        return len(self.song_ids)

    def subset(self, mask: np.ndarray) -> "Pairs":
        idx = np.flatnonzero(mask)
        return Pairs([self.image_sha256[i] for i in idx], self.probs[idx], [self.song_ids[i] for i in idx])


@dataclass
class SplitData:
    split: str
    vocabulary: str
    tag_names: list[str]
    songs: pd.DataFrame  # every song of the snapshot: index song_id; modeling_text
    posts: pd.DataFrame  # every triplet of the snapshot: song_id, favorite_count (popularity)
    train: Pairs
    validation: Pairs
    test: Pairs
    test_songs: list[str]  # the test part's candidate songs (every test song, tagged image or not)
    n_untagged: dict

    def texts(self, song_ids) -> list[str]:
        return self.songs["modeling_text"].reindex(list(song_ids)).fillna("").tolist()

    @property
    def validation_songs(self) -> list[str]:
        """Candidates of the validation queries: split A the held-out songs, split B every training song."""
        if self.split == "a":
            return sorted(set(self.validation.song_ids))
        return sorted(set(self.train.song_ids) | set(self.validation.song_ids))


def _draw(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")


def tag_table(tags_path: str | os.PathLike) -> tuple[dict[str, int], np.ndarray, list[str]]:
    """-> (image_sha256 -> row, probs [N, T], tag_names) for the ``ok`` rows of a tags file."""
    from modeling.tags import load_tags

    names, probs, shas = load_tags(tags_path)
    return {s: i for i, s in enumerate(shas)}, probs, list(names)


def _pairs(df: pd.DataFrame, sha_index: dict[str, int], probs: np.ndarray) -> tuple[Pairs, int]:
    keep = df["image_sha256"].isin(sha_index.keys()).to_numpy()
    kept = df[keep]
    rows = [sha_index[s] for s in kept["image_sha256"]]
    return Pairs(kept["image_sha256"].tolist(), probs[rows] if rows else np.zeros((0, probs.shape[1]), np.float32),
                 kept["song_id"].tolist()), int((~keep).sum())


def validation_mask(train: Pairs, split: str, *, seed: int, fraction: float = 0.1, max_validation: int = 300) -> np.ndarray:
    """Which training pairs form the validation part (see the module docstring)."""
    ids = np.asarray(train.song_ids)
    if split == "a":
        songs = sorted(set(train.song_ids), key=lambda s: _draw(seed, s))
        n = min(len(songs) - 1, max(2, round(fraction * len(songs))))
        held = set(songs[:n])
        mask = np.array([s in held for s in ids], dtype=bool)
        if mask.sum() > max_validation:  # keep whole songs, cap the query count roughly
            kept, total = set(), 0
            for s in songs[:n]:
                c = int((ids == s).sum())
                if total and total + c > max_validation:
                    break
                kept.add(s)
                total += c
            mask = np.array([s in kept for s in ids], dtype=bool)
        return mask
    mask = np.zeros(len(ids), dtype=bool)
    order = sorted(range(len(ids)), key=lambda i: _draw(seed, train.image_sha256[i]))
    seen: dict[str, int] = {}
    for s in ids:
        seen[s] = seen.get(s, 0) + 1
    held: set[str] = set()
    songs_by_draw = sorted((s for s, c in seen.items() if c >= 2), key=lambda s: _draw(seed, "song:" + s))[:max_validation]
    eligible = set(songs_by_draw)
    for i in order:
        s = ids[i]
        if s in eligible and s not in held:
            held.add(s)
            mask[i] = True
    return mask


def load_split(snapshot_dir: str | os.PathLike, tags_path: str | os.PathLike, split: str, *, vocabulary: str = "imagenet",
               seed: int = 0, validation_fraction: float = 0.1, max_validation: int = 300) -> SplitData:
    from curation.snapshots.reader import load_snapshot

    if split not in ("a", "b"):
        raise ValueError(f"split must be 'a' or 'b', not {split!r}")
    snap = load_snapshot(snapshot_dir)
    sha_index, probs, tag_names = tag_table(tags_path)
    train_all, n_train_untagged = _pairs(snap.split(split, "train"), sha_index, probs)
    test_df = snap.split(split, "test")
    test, n_test_untagged = _pairs(test_df, sha_index, probs)
    if not len(train_all):
        raise ValueError(f"split {split!r} has no tagged training pairs ({n_train_untagged} untagged)")
    songs = snap.songs.set_index("song_id")
    missing = sorted(set(train_all.song_ids) - set(songs.index))
    if missing:
        raise ValueError(f"{len(missing)} training songs are not in songs.parquet, e.g. {missing[:3]}")
    mask = validation_mask(train_all, split, seed=seed, fraction=validation_fraction, max_validation=max_validation)
    return SplitData(
        split=split, vocabulary=vocabulary, tag_names=tag_names, songs=songs,
        posts=snap.triplets[["song_id", "favorite_count"]].copy(),
        train=train_all.subset(~mask), validation=train_all.subset(mask), test=test,
        test_songs=sorted(set(test_df["song_id"])),
        n_untagged={"train": n_train_untagged, "test_images": int(test_df["image_sha256"].nunique() - len(set(test.image_sha256)))},
    )
