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

Integrity (on by default, ``verify=True``): the manifest's own hash (``manifest_sha256`` inside it, over
its other keys; and the catalog's hash of the file when the caller passes it), each file's size and
SHA-256 against the manifest, the row counts against the manifest's counts, and every Parquet page
against its CRC (written with ``write_page_checksum``; pyarrow checks them while reading). A damaged
snapshot raises ``SnapshotIntegrityError`` naming what is wrong; it is never read silently.
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
    """A snapshot is damaged: a file does not match its manifest, or the manifest was altered."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


def manifest_content_hash(manifest: dict) -> str:
    """SHA-256 of the manifest's content without its own ``manifest_sha256`` key (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


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


def _manifest_bytes(path: str | os.PathLike) -> bytes:
    fs, root = _fs(path)
    try:
        with fs.open(f"{root}/manifest.json", "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a snapshot: it has no manifest.json") from None


def _parse_manifest(data: bytes, path) -> dict:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SnapshotIntegrityError(f"manifest.json of {path} is damaged: {error}") from None


def read_manifest(path: str | os.PathLike) -> dict:
    return _parse_manifest(_manifest_bytes(path), path)


def read_table(path: str | os.PathLike, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One table of a snapshot (``triplets`` or ``songs``), optionally only some columns; every page is
    checked against its CRC while it is read (a flipped bit raises instead of being read)."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; expected one of {TABLES}")
    fs, root = _fs(path)
    try:
        table = pq.read_table(f"{root}/{name}.parquet", filesystem=fs, columns=columns,
                              page_checksum_verification=True)
    except OSError as error:
        raise SnapshotIntegrityError(f"{name}.parquet of {path} is damaged: {error}") from None
    return table.to_pandas()


def _file_problems(fs, root: str, manifest: dict) -> list[str]:
    problems = []
    for name, entry in sorted(manifest.get("file_details", {}).items()):
        digest, size = hashlib.sha256(), 0
        try:
            with fs.open(f"{root}/{name}", "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    size += len(block)
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        if size != entry["bytes"]:
            problems.append(f"{name}: {size} bytes, the manifest says {entry['bytes']}")
        elif digest.hexdigest() != entry["sha256"]:
            problems.append(f"{name}: SHA-256 differs from the manifest's (the file was changed or damaged)")
    return problems


def _page_problems(fs, root: str, name: str) -> list[str]:
    """Which columns of a Parquet file hold a page that fails its CRC (or cannot be decoded)."""
    try:
        parquet = pq.ParquetFile(f"{root}/{name}", filesystem=fs, page_checksum_verification=True)
        columns = parquet.schema_arrow.names
    except Exception as error:  # noqa: BLE001 - a footer that does not parse is the finding
        return [f"{name}: unreadable ({type(error).__name__}: {error})"]
    problems = []
    for column in columns:
        try:
            parquet.read(columns=[column])
        except Exception as error:  # noqa: BLE001 - any decoding failure names the column
            problems.append(f"{name}: column {column!r} is damaged ({error})")
    return problems


def _count_problems(fs, root: str, manifest: dict) -> list[str]:
    counts = manifest.get("counts") or {}
    problems = []
    for table, key in (("triplets.parquet", "triplets"), ("songs.parquet", "songs")):
        if key not in counts:
            continue
        try:
            rows = pq.ParquetFile(f"{root}/{table}", filesystem=fs).metadata.num_rows
        except Exception:  # noqa: BLE001 - reported by the file and page checks
            continue
        if rows != counts[key]:
            problems.append(f"manifest counts {key}={counts[key]}, {table} holds {rows} rows")
    return problems


def check_snapshot(path: str | os.PathLike, *, manifest_sha256: str | None = None, pages: bool = False) -> list[str]:
    """Everything wrong with a snapshot, as sentences (empty when it is whole): the manifest against
    its own hash and ``manifest_sha256`` (the catalog's record of the file), the files against the
    manifest, the row counts against the manifest's counts, and with ``pages`` every Parquet page
    against its CRC, column by column (slower: it decodes every page)."""
    fs, root = _fs(path)
    data = _manifest_bytes(path)
    problems = []
    if manifest_sha256 and hashlib.sha256(data).hexdigest() != manifest_sha256:
        problems.append("manifest.json: SHA-256 differs from the catalog's record (the manifest was changed)")
    try:
        manifest = _parse_manifest(data, path)
    except SnapshotIntegrityError as error:
        return problems + [str(error)]
    if "manifest_sha256" in manifest and manifest_content_hash(manifest) != manifest["manifest_sha256"]:
        problems.append("manifest.json: its content does not match its own manifest_sha256 (edited or damaged)")
    problems += _file_problems(fs, root, manifest)
    problems += _count_problems(fs, root, manifest)
    if pages:
        for name in sorted(manifest.get("file_details", {})):
            if name.endswith(".parquet"):
                problems += _page_problems(fs, root, name)
    return problems


def verify_snapshot(path: str | os.PathLike, manifest: dict | None = None, *,
                    manifest_sha256: str | None = None) -> None:
    """Raise ``SnapshotIntegrityError`` (listing every problem) unless the snapshot is whole."""
    problems = check_snapshot(path, manifest_sha256=manifest_sha256)
    if problems:
        version = (manifest or {}).get("version") or Path(str(path)).name
        raise SnapshotIntegrityError(f"snapshot {version} is damaged: " + "; ".join(problems), problems)


def load_snapshot(path: str | os.PathLike, *, verify: bool = True, manifest_sha256: str | None = None) -> Snapshot:
    """A published snapshot, read whole (a snapshot holds at most ``posts_per_song`` rows per song).

    ``verify`` (the default) checks the manifest, each file's hash and the row counts first, and the
    split counts after reading; pages are always checked against their CRCs while read. Pass the
    catalog's ``manifest_sha256`` when you have it. ``verify=False`` skips the hashing only."""
    fs, root = _fs(path)
    if verify:
        verify_snapshot(path, manifest_sha256=manifest_sha256)
    manifest = read_manifest(path)
    snapshot = Snapshot(
        path=Path(root) if isinstance(fs, LocalFileSystem) else str(path),
        triplets=read_table(path, "triplets"),
        songs=read_table(path, "songs"),
        manifest=manifest,
    )
    if verify:
        counts, problems = manifest.get("counts") or {}, []
        for split in ("split_a", "split_b"):
            for part in ("train", "test"):
                key = f"{split}_{part}"
                found = int((snapshot.triplets[split] == part).sum())
                if key in counts and counts[key] != found:
                    problems.append(f"{key}: {found} rows, the manifest says {counts[key]}")
        if problems:
            raise SnapshotIntegrityError(f"snapshot {manifest.get('version')} is damaged: " + "; ".join(problems),
                                         problems)
    return snapshot
