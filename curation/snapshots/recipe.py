"""The recipe of a snapshot, and the seeded split assignment (splits A and B).

The default recipe is the paper's protocol: songs with at least 5 posts; per song the 5 posts with the
highest favorite counts (ties: the older post); split A holds out 100 songs with all their images;
split B holds out one of each song's images. Other recipes change these numbers.

Membership is drawn by a keyed hash (BLAKE2b of seed and key), not by a random stream: the same catalog
and seed give the same membership on any machine and NumPy version, and a song keeps its side of split
A when other songs join the catalog (it moves only if a newcomer takes its place among the held-out).

Near-duplicate images (perceptual hashes within ``near_duplicate_bits``, see ``leakage``) must
never sit on both sides of a split, so the assignment avoids it by construction: split A holds out
whole groups of songs linked by near-duplicate images; split B holds out only images with no near
duplicate among the kept ones. The leakage check in ``snapshots`` then verifies the result independently.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from curation.snapshots.leakage import MAX_BITS_LIMIT, components, near_duplicate_pairs


class SnapshotError(RuntimeError):
    """The catalog cannot give a valid snapshot with this recipe; the message says why."""


@dataclass(frozen=True)
class Recipe:
    min_posts: int = 5               # songs with fewer (distinct-image, approved) posts are left out
    posts_per_song: int = 5          # the posts with the highest favorite counts are kept
    test_songs: int = 100            # split A: songs held out, with all their images
    test_images_per_song: int = 1    # split B: images held out per song
    near_duplicate_bits: int | None = 4  # pHash Hamming distance that counts as the same image; None: exact only
    seed: int = 0

    def __post_init__(self):
        if self.min_posts < 1 or self.posts_per_song < 1:
            raise ValueError("min_posts and posts_per_song must be at least 1")
        if self.test_songs < 1 or self.test_images_per_song < 1:
            raise ValueError("test_songs and test_images_per_song must be at least 1")
        if self.near_duplicate_bits is not None and not 0 <= self.near_duplicate_bits <= MAX_BITS_LIMIT:
            raise ValueError(f"near_duplicate_bits must be between 0 and {MAX_BITS_LIMIT}, or None")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def draw(seed: int, tag: str, keys) -> np.ndarray:
    """A seeded, platform-independent 64-bit draw per key (smaller draws are held out first)."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}|{tag}|{key}".encode(), digest_size=8).digest(), "big")
                     for key in keys], dtype=np.uint64)


def assign_splits(kept: pd.DataFrame, recipe: Recipe, linked_songs=()) -> tuple[pd.DataFrame, dict]:
    """Add ``split_a`` and ``split_b`` ("train"/"test") to ``kept`` (one row per post: ``song_id``,
    ``image_sha256``, ``image_phash``), sorted by song then post. ``linked_songs``: pairs of songs that
    must sit on one side of split A (the same lyric). Returns the frame and notes."""
    notes: dict = {}
    kept = kept.reset_index(drop=True)
    songs = np.sort(kept["song_id"].unique())
    if len(songs) < 2:
        raise SnapshotError(f"only {len(songs)} songs have at least {recipe.min_posts} approved posts; "
                            "crawl more or lower min_posts")
    # near-duplicate groups among the kept images
    if recipe.near_duplicate_bits is None:
        pairs = np.empty((0, 2), dtype=np.int64)
    else:
        pairs = near_duplicate_pairs(kept["image_phash"].tolist(), recipe.near_duplicate_bits)
    group = components(len(kept), pairs)
    notes["near_duplicate_pairs"] = int(len(pairs))

    # split A: hold out whole song clusters (songs linked by near-duplicate images), in draw order
    song_index = {song: i for i, song in enumerate(songs)}
    song_rows = kept["song_id"].map(song_index).to_numpy()
    cluster_pairs = np.stack([song_rows[pairs[:, 0]], song_rows[pairs[:, 1]]], axis=1) if len(pairs) else pairs
    linked = [(song_index[a], song_index[b]) for a, b in linked_songs if a in song_index and b in song_index]
    if linked:  # songs sharing a lyric are held out together too
        cluster_pairs = np.concatenate([cluster_pairs.reshape(-1, 2), np.array(linked, dtype=np.int64)])
        notes["songs_linked_by_lyric"] = len(linked)
    cluster = components(len(songs), cluster_pairs)
    song_draw = draw(recipe.seed, "a", songs)
    clusters = pd.DataFrame({"cluster": cluster, "draw": song_draw}).groupby("cluster").agg(
        draw=("draw", "min"), size=("draw", "size")).sort_values(["draw"], kind="stable")
    target = recipe.test_songs
    if target >= len(songs):
        target = len(songs) // 2
        notes["test_songs"] = f"lowered from {recipe.test_songs} to {target}: only {len(songs)} songs"
    held, chosen = 0, []
    for label, size in zip(clusters.index, clusters["size"]):
        if held + size <= target:
            chosen.append(label)
            held += size
            if held == target:
                break
    if held < target:
        notes["test_songs_held_out"] = (f"{held} of {target}: songs linked by near-duplicate images are held "
                                        "out together and the rest did not fit")
    test_song_set = set(songs[np.isin(cluster, chosen)].tolist())
    kept["split_a"] = np.where(kept["song_id"].isin(test_song_set), "test", "train")

    # split B: per song, hold out the images with the smallest draws among those without a near duplicate
    sizes = np.bincount(group, minlength=len(kept))
    alone = sizes[group] == 1
    kept["_draw"] = draw(recipe.seed, "b", kept["image_sha256"])
    kept["_eligible"] = alone
    kept["_count"] = kept.groupby("song_id")["song_id"].transform("size")
    ranked = kept[kept["_eligible"]].sort_values(["song_id", "_draw"], kind="stable")
    ranked = ranked[ranked.groupby("song_id").cumcount() < np.minimum(recipe.test_images_per_song,
                                                                       ranked["_count"] - 1)]
    kept["split_b"] = np.where(kept.index.isin(ranked.index), "test", "train")
    without = int(len(songs) - ranked["song_id"].nunique())
    if without:
        notes["split_b_songs_without_test_image"] = without
    kept = kept.drop(columns=["_draw", "_eligible", "_count"])
    return kept.sort_values(["song_id", "post_id"], kind="stable").reset_index(drop=True), notes
