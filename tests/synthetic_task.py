"""A tiny snapshot whose lyrics carry the signal, for the modeling tests (no images needed: tags are written
directly). Each song has a topic ImageNet class; its lyric holds the class name's words among fillers; its
5 images' tag vectors peak at that class."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from modeling.lyric_encoder import tag_name_words
from modeling.tags import write_view
from modeling.tags.vocabularies import imagenet_class_names

NUM_TAGS = 1000
FILLER = "love night heart baby dance time dream fire rain sky road summer home light river song".split()


def write_snapshot(path: Path, triplets: list[dict], songs: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    t = pd.DataFrame(triplets)
    for col, default in (("title", "t"), ("artist", "a"), ("mood", None), ("favorite_count", 0)):
        if col not in t:
            t[col] = default
    t = t[["post_id", "image_sha256", "image_path", "song_id", "title", "artist", "mood", "favorite_count", "split_a", "split_b"]]
    t.to_parquet(path / "triplets.parquet")
    s = pd.DataFrame(songs)
    if "lyric" not in s:
        s["lyric"] = s["modeling_text"]
    s[["song_id", "title", "artist", "lyric", "modeling_text"]].to_parquet(path / "songs.parquet")
    (path / "manifest.json").write_text(json.dumps({"version": path.name, "seed": 0}))
    return path


N_SONGS = 40


class SyntheticTask(NamedTuple):
    snapshot: Path
    tags: Path
    classes: list[int]  # song s's topic ImageNet class: classes[s]
    names: list[str]    # the ImageNet class names (the tag vocabulary)


def synthetic_task(root: Path, *, shuffle_train: bool = False, seed: int = 0, n_songs: int = N_SONGS,
                   test_a_every: int = 4, class_stride: int = 23, max_class_words: int = 2) -> SyntheticTask:
    """Each song has a topic ImageNet class (every ``class_stride``-th class whose name has at most
    ``max_class_words`` words); its lyric holds the class name's words among fillers; its 5 images' tag
    vectors peak at that class. Split B: 4 train + 1 test image per song; split A: every
    ``test_a_every``-th song held out."""
    rng = np.random.default_rng(seed)
    names = list(imagenet_class_names())
    classes = [c for c in range(0, NUM_TAGS, class_stride) if len(tag_name_words(names[c])) <= max_class_words][:n_songs]
    if len(classes) < n_songs:
        raise ValueError(f"only {len(classes)} classes fit (stride {class_stride}, at most {max_class_words} words), "
                         f"not {n_songs}")
    songs, rows, shas, probs = [], [], [], []
    test_a = set(range(0, n_songs, test_a_every))
    for s, c in enumerate(classes):
        words = " ".join(tag_name_words(names[c]))
        filler = " ".join(rng.choice(FILLER, 6))
        songs.append(dict(song_id=f"s{s:02d}", title=f"Song {s}", artist=f"Artist {s}", modeling_text=f"{filler} {words} {filler}"))
        for j in range(5):
            logits = rng.normal(size=NUM_TAGS)
            logits[c] += 7.0
            p = np.exp(logits - logits.max())
            sha = hashlib.sha256(f"{s}-{j}".encode()).hexdigest()
            shas.append(sha)
            probs.append(p / p.sum())
            rows.append(dict(post_id=f"p{s}-{j}", image_sha256=sha, image_path=f"{sha[:2]}/{sha}.jpg", song_id=f"s{s:02d}",
                             title=f"Song {s}", artist=f"Artist {s}",
                             split_a="test" if s in test_a else "train", split_b="test" if j == 0 else "train"))
    if shuffle_train:  # break the image-lyric link in the training part of split B
        train_rows = [r for r in rows if r["split_b"] == "train"]
        perm = rng.permutation(len(train_rows))
        ids = [train_rows[i]["song_id"] for i in perm]
        for r, sid in zip(train_rows, ids):
            r["song_id"] = sid
    snap = write_snapshot(root / ("shuffled" if shuffle_train else "snap"), rows, songs)
    tags = write_view(snap.parent / f"{snap.name}-tags.parquet", shas, np.array(probs, dtype=np.float32), names)
    return SyntheticTask(snap, tags, classes, names)
