"""Read a published snapshot: the only way modeling sees the data.

A snapshot is a folder ``<snapshots root>/<version>/`` holding

``triplets.parquet``  one row per kept post: post_id, image_sha256, image_path (inside the object
                      store), song_id, title, artist, mood (nullable), favorite_count,
                      split_a and split_b (each "train" or "test")
``songs.parquet``     one row per kept song: song_id, title, artist, lyric (original text, for
                      people), modeling_text (lower-case tokens joined by spaces: non-alphanumerics
                      and stop words removed, as the paper does)
``manifest.json``     version, recipe, seed, row counts per split, file hashes, review decisions
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SPLITS = ("a", "b")


@dataclass(frozen=True)
class Snapshot:
    path: Path
    triplets: pd.DataFrame
    songs: pd.DataFrame
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def split(self, name: str, part: str) -> pd.DataFrame:
        """Triplets of split ``name`` ("a" or "b"), ``part`` "train" or "test"."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        column = f"split_{name}"
        return self.triplets[self.triplets[column] == part].reset_index(drop=True)


def load_snapshot(path: str | Path) -> Snapshot:
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.exists():
        raise FileNotFoundError(f"{path} is not a snapshot: it has no manifest.json")
    return Snapshot(
        path=path,
        triplets=pd.read_parquet(path / "triplets.parquet"),
        songs=pd.read_parquet(path / "songs.parquet"),
        manifest=json.loads(manifest_file.read_text()),
    )
