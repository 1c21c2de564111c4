"""Read a published snapshot: the only way modeling sees the data.

A snapshot is a folder (or object-store prefix) ``<snapshots root>/<version>/`` holding

``triplets.parquet``  one row per kept post: post_id, provenance (source, external_id, post_url),
                      image_sha256, image_path (inside the object store), image_phash,
                      song_id, title, artist, mood (nullable), favorite_count, lyric_candidate_id,
                      split_a and split_b (each "train" or "test")
``songs.parquet``     one row per kept song: song_id, title, artist, lyric (original text, for
                      people), modeling_text (lower-case tokens joined by spaces: non-alphanumerics
                      and stop words removed, as the paper does), and where the lyric came from
``manifest.json``     version, recipe, seed, schema, row counts per split, file hashes, catalog state,
                      review decisions included, code version; written last, so it marks a whole snapshot
``datasheet.md``      the datasheet, with ``song_occurrences.png``

``path`` is a local folder or any fsspec URL (``s3://bucket/snapshots/<version>``). The Parquet files
also read as they are with pandas, ``pyarrow.dataset`` and DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

SPLITS = ("a", "b")
TABLES = ("triplets", "songs")


class SnapshotIntegrityError(RuntimeError):
    """A snapshot's file does not match its manifest."""


@dataclass(frozen=True)
class Snapshot:
    path: Path | str
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


def _fs(path: str | os.PathLike):
    fs, root = fsspec.core.url_to_fs(str(path))
    return fs, root.rstrip("/")


def read_manifest(path: str | os.PathLike) -> dict:
    fs, root = _fs(path)
    try:
        with fs.open(f"{root}/manifest.json", "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a snapshot: it has no manifest.json") from None


def read_table(path: str | os.PathLike, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One table of a snapshot (``triplets`` or ``songs``), optionally only some columns."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; expected one of {TABLES}")
    fs, root = _fs(path)
    return pq.read_table(f"{root}/{name}.parquet", filesystem=fs, columns=columns).to_pandas()


def verify_snapshot(path: str | os.PathLike, manifest: dict | None = None) -> None:
    """Check every file the manifest lists against its size and sha256; raise on the first mismatch."""
    fs, root = _fs(path)
    manifest = manifest or read_manifest(path)
    for name, entry in manifest.get("file_details", {}).items():
        digest, size = hashlib.sha256(), 0
        with fs.open(f"{root}/{name}", "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
                size += len(block)
        if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
            raise SnapshotIntegrityError(f"{name} of snapshot {manifest.get('version')} does not match its manifest")


def load_snapshot(path: str | os.PathLike, *, verify: bool = False) -> Snapshot:
    """A published snapshot, read whole (a snapshot holds at most ``posts_per_song`` rows per song).
    ``verify`` checks the files against the manifest's hashes first."""
    fs, root = _fs(path)
    manifest = read_manifest(path)
    if verify:
        verify_snapshot(path, manifest)
    return Snapshot(
        path=Path(root) if isinstance(fs, LocalFileSystem) else str(path),
        triplets=read_table(path, "triplets"),
        songs=read_table(path, "songs"),
        manifest=manifest,
    )
