"""Snapshots: immutable, versioned Parquet datasets built from approved catalog rows.

The default recipe is the paper's protocol (``recipe.Recipe``): songs with at least 5 posts,
per song the 5 posts with the highest favorite counts; split A holds out 100 songs (with all their
images) for test; split B holds out one of each song's images. Membership is seeded and deterministic.

A build selects inside the database (``select``: window functions, rows streamed in chunks),
assigns the splits, checks for leakage (no image, nor a near duplicate by perceptual hash, in both train
and test: the build fails otherwise), writes the Parquet files with explicit Arrow schemas, a manifest
and a datasheet into a staging folder, and publishes atomically (``store``), locally or on any
fsspec URL. When the data files come out byte-identical to the latest snapshot's, nothing is published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from curation.catalog import SnapshotRecord, session_scope
from curation.crawl_store import image_key
from curation.snapshots.datasheet import write_datasheet
from curation.lyrics.text import modeling_tokens
from curation.snapshots.leakage import cross_matches
from curation.snapshots.reader import read_manifest, read_table
from curation.snapshots.recipe import Recipe, SnapshotError, assign_splits
from curation.snapshots.select import CHUNK_ROWS, catalog_state, eligible_figures, read_kept, song_rows
from curation.snapshots.store import MANIFEST, SnapshotStore

log = logging.getLogger(__name__)

FORMAT = "image2song-snapshot/2"
SPLIT = pa.dictionary(pa.int8(), pa.string())
TRIPLETS_SCHEMA = pa.schema([
    pa.field("post_id", pa.string(), nullable=False),
    pa.field("source", pa.dictionary(pa.int16(), pa.string())),
    pa.field("external_id", pa.string()),
    pa.field("post_url", pa.string()),
    pa.field("image_sha256", pa.string(), nullable=False),
    pa.field("image_path", pa.string(), nullable=False),
    pa.field("image_phash", pa.string()),
    pa.field("song_id", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("artist", pa.string()),
    pa.field("mood", pa.dictionary(pa.int16(), pa.string())),
    pa.field("favorite_count", pa.int64(), nullable=False),
    pa.field("lyric_candidate_id", pa.int64(), nullable=False),
    pa.field("split_a", SPLIT, nullable=False),
    pa.field("split_b", SPLIT, nullable=False),
], metadata={"image2song.table": "triplets", "image2song.format": FORMAT})
SONGS_SCHEMA = pa.schema([
    pa.field("song_id", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("artist", pa.string()),
    pa.field("lyric", pa.string()),
    pa.field("modeling_text", pa.string()),
    pa.field("lyric_provider", pa.dictionary(pa.int16(), pa.string())),
    pa.field("lyric_candidate_id", pa.int64(), nullable=False),
    pa.field("lyric_decided_by", pa.string()),
    pa.field("match_score", pa.float64()),
], metadata={"image2song.table": "songs", "image2song.format": FORMAT})

# Parquet layout: dictionary encoding where values repeat (5 triplets per song, few moods and sources),
# plain for unique keys and long texts; statistics on the columns readers filter on, none on long texts
# (their min/max would bloat every page header and prune nothing); row groups of about 128k triplets
# (a few MB) so readers can parallelize and skip, one file per table (a snapshot holds at most
# posts_per_song rows per song: a paper-scale snapshot is well under a megabyte).
WRITE_OPTIONS = {
    "triplets": {
        "row_group_size": 128 * 1024,
        "use_dictionary": ["source", "song_id", "title", "artist", "mood", "split_a", "split_b"],
        "write_statistics": ["post_id", "song_id", "favorite_count", "mood", "lyric_candidate_id",
                             "split_a", "split_b", "source"],
    },
    "songs": {
        "row_group_size": 16 * 1024,
        "use_dictionary": ["artist", "lyric_provider", "lyric_decided_by"],
        "write_statistics": ["song_id", "lyric_candidate_id", "match_score", "lyric_provider"],
    },
}
DATA_FILES = ("triplets.parquet", "songs.parquet")

__all__ = ["Recipe", "SnapshotError", "TRIPLETS_SCHEMA", "SONGS_SCHEMA", "build_snapshot", "check_leakage",
           "diff_snapshots", "latest_snapshot", "list_snapshots", "show_snapshot"]


# --- leakage -----------------------------------------------------------------------------------

def check_leakage(triplets: pd.DataFrame, near_duplicate_bits: int | None) -> dict:
    """Fail (SnapshotError) when an image is in both train and test of a split: the same bytes
    (sha256), or perceptual hashes within ``near_duplicate_bits``. Returns what was checked."""
    problems = []
    for split in ("split_a", "split_b"):
        train = triplets[triplets[split] == "train"]
        test = triplets[triplets[split] == "test"]
        same = sorted(set(train["image_sha256"]) & set(test["image_sha256"]))
        if same:
            problems.append(f"{split}: {len(same)} images are in both train and test (e.g. {same[0][:12]}…)")
        if near_duplicate_bits is not None:
            hits = cross_matches(train["image_phash"].tolist(), test["image_phash"].tolist(), near_duplicate_bits,
                                 limit=5)
            if hits:
                examples = "; ".join(
                    f"train post {train['post_id'].iloc[i]} ~ test post {test['post_id'].iloc[j]} ({d} bits)"
                    for i, j, d in hits)
                problems.append(f"{split}: near-duplicate images in train and test: {examples}")
    if problems:
        raise SnapshotError("leakage: " + " | ".join(problems))
    return {"near_duplicate_bits": near_duplicate_bits, "result": "no image in both train and test"}


# --- building ----------------------------------------------------------------------------------

def _tables(kept: pd.DataFrame, songs: list[tuple]) -> tuple[pa.Table, pa.Table]:
    song_frame = pd.DataFrame(songs, columns=["song", "title", "artist", "lyric", "provider", "candidate_id",
                                              "decided_by", "match_score"])
    titles = dict(zip(song_frame["song"], zip(song_frame["title"], song_frame["artist"])))
    triplets = pa.table({
        "post_id": kept["post_id"].astype(str),
        "source": kept["source"], "external_id": kept["external_id"], "post_url": kept["post_url"],
        "image_sha256": kept["image_sha256"],
        "image_path": [image_key(s, c) for s, c in zip(kept["image_sha256"], kept["content_type"])],
        "image_phash": kept["image_phash"],
        "song_id": "s" + kept["song_id"].astype(str),
        "title": [titles[s][0] for s in kept["song_id"]], "artist": [titles[s][1] for s in kept["song_id"]],
        "mood": kept["mood"], "favorite_count": kept["favorite_count"].astype("int64"),
        "lyric_candidate_id": kept["lyric_candidate_id"].astype("int64"),
        "split_a": kept["split_a"], "split_b": kept["split_b"],
    }, schema=TRIPLETS_SCHEMA)
    songs_table = pa.table({
        "song_id": "s" + song_frame["song"].astype(str), "title": song_frame["title"],
        "artist": song_frame["artist"], "lyric": song_frame["lyric"],
        "modeling_text": [" ".join(modeling_tokens(text or "")) for text in song_frame["lyric"]],
        "lyric_provider": song_frame["provider"], "lyric_candidate_id": song_frame["candidate_id"].astype("int64"),
        "lyric_decided_by": song_frame["decided_by"], "match_score": song_frame["match_score"].astype("float64"),
    }, schema=SONGS_SCHEMA)
    return triplets, songs_table


def _write_parquet(table: pa.Table, path: Path, name: str) -> dict:
    pq.write_table(table, path, compression="zstd", **WRITE_OPTIONS[name])
    return {"rows": table.num_rows, "row_groups": pq.ParquetFile(path).num_row_groups}


def _file_entry(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _counts(kept: pd.DataFrame, triplets: pa.Table, songs: pa.Table) -> dict:
    counts = {"triplets": triplets.num_rows, "songs": songs.num_rows}
    for split in ("split_a", "split_b"):
        for part in ("train", "test"):
            rows = kept[split] == part
            counts[f"{split}_{part}"] = int(rows.sum())
            counts[f"{split}_{part}_songs"] = int(kept.loc[rows, "song_id"].nunique())
    return counts


def _snapshot_figures(kept: pd.DataFrame) -> dict:
    if kept.empty:
        return {"triplets": 0, "songs": 0, "with_mood": 0, "favorite_count": None}
    return {"triplets": len(kept), "songs": int(kept["song_id"].nunique()),
            "with_mood": int(kept["mood"].notna().sum()),
            "favorite_count": [int(kept["favorite_count"].min()), int(kept["favorite_count"].max())]}


def _schema_doc(schema: pa.Schema) -> list[dict]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def build_snapshot(db_url: str, snapshots_root: str | os.PathLike, recipe: Recipe = Recipe(), *,
                   chunk_rows: int = CHUNK_ROWS) -> dict:
    """Build and publish a snapshot under ``snapshots_root`` (a folder or an fsspec URL). When the data
    files are byte-identical to the latest snapshot's, publish nothing and return the latest (so
    re-running the task is harmless). Raises SnapshotError when the recipe cannot be met or leaks."""
    started = datetime.now(timezone.utc)
    kept = read_kept(db_url, recipe, chunk_rows).to_pandas()
    kept, notes = assign_splits(kept, recipe)
    leakage = check_leakage(kept.assign(post_id=kept["post_id"].astype(str)), recipe.near_duplicate_bits)
    pairs = kept[["song_id", "lyric_candidate_id"]].drop_duplicates("song_id")
    songs = song_rows(db_url, list(zip(pairs["song_id"].tolist(), pairs["lyric_candidate_id"].tolist())))
    triplets, songs_table = _tables(kept, songs)
    counts = _counts(kept, triplets, songs_table)

    store = SnapshotStore(snapshots_root)
    version = started.strftime("%Y%m%dT%H%M%S%fZ")
    staging = store.staging(version)
    try:
        details = {}
        for name, table in (("triplets", triplets), ("songs", songs_table)):
            path = staging / f"{name}.parquet"
            layout = _write_parquet(table, path, name)
            details[path.name] = {**_file_entry(path), **layout}
        files = {name: details[name]["sha256"] for name in DATA_FILES}
        latest = latest_snapshot(db_url)
        if latest and latest["files"] == files:
            store.discard(staging)
            log.info("approved data unchanged since snapshot %s: nothing new published", latest["version"])
            return {**latest, "published": False}
        state = catalog_state(db_url, sorted(set(kept["lyric_candidate_id"].tolist())))
        manifest = {
            "format": FORMAT, "version": version, "created_at": started.isoformat(),
            "recipe": recipe.to_dict(), "seed": recipe.seed, "notes": notes, "counts": counts,
            "files": files, "schema": {"triplets": _schema_doc(TRIPLETS_SCHEMA), "songs": _schema_doc(SONGS_SCHEMA)},
            "catalog": state, "leakage": leakage,
            "figures": {"eligible": eligible_figures(db_url), "snapshot": _snapshot_figures(kept)},
            "code_version": _code_version(),
        }
        for name in write_datasheet(staging, manifest):
            details[name] = _file_entry(staging / name)
        manifest["file_details"] = details
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        manifest_hash = _file_entry(staging / MANIFEST)["sha256"]
        uri = store.publish(staging, version)
    except BaseException:
        store.discard(staging)
        raise
    with session_scope(db_url) as session:
        session.add(SnapshotRecord(version=version, uri=uri, recipe=recipe.to_dict(), counts=counts,
                                   manifest_sha256=manifest_hash))
    log.info("published snapshot %s: %s", version, counts)
    return {"version": version, "path": uri, "counts": counts, "files": files,
            "datasheet": f"{uri}/datasheet.md", "pending_reviews": state["pending_reviews"], "published": True}


# --- listing, showing, comparing ------------------------------------------------------------------

def latest_snapshot(db_url: str) -> dict | None:
    with session_scope(db_url) as session:
        record = session.scalar(select(SnapshotRecord).order_by(SnapshotRecord.id.desc()).limit(1))
        if record is None:
            return None
        version, uri, counts = record.version, record.uri, record.counts
    manifest = read_manifest(uri)
    files = manifest["files"]
    if files and isinstance(next(iter(files.values())), dict):  # tolerate richer entries
        files = {name: entry["sha256"] for name, entry in files.items()}
    return {"version": version, "path": uri, "counts": counts,
            "files": {name: files[name] for name in DATA_FILES if name in files},
            "datasheet": f"{uri}/datasheet.md",
            "pending_reviews": manifest["catalog"]["pending_reviews"]}


def list_snapshots(db_url: str) -> list[dict]:
    with session_scope(db_url) as session:
        return [{"version": r.version, "path": r.uri, "counts": r.counts, "created_at": r.created_at.isoformat()}
                for r in session.scalars(select(SnapshotRecord).order_by(SnapshotRecord.id))]


def show_snapshot(path: str | os.PathLike) -> dict:
    """The headline of a snapshot: version, recipe, counts, files, leakage, catalog state in brief."""
    manifest = read_manifest(path)
    catalog = manifest.get("catalog", {})
    return {"version": manifest["version"], "path": str(path), "created_at": manifest.get("created_at"),
            "recipe": manifest.get("recipe"), "counts": manifest.get("counts"), "notes": manifest.get("notes"),
            "files": manifest.get("file_details", manifest.get("files")), "leakage": manifest.get("leakage"),
            "catalog": {k: v for k, v in catalog.items() if k != "review_decisions_included"}
            | {"review_decisions_included": len(catalog.get("review_decisions_included", []))},
            "code_version": manifest.get("code_version")}


def diff_snapshots(old: str | os.PathLike, new: str | os.PathLike) -> dict:
    """What changed from snapshot ``old`` to ``new``: per split and part, triplets (posts) added and
    removed (a post that changed sides counts as removed from one part and added to the other), and
    songs gained and lost."""
    columns = ["post_id", "song_id", "split_a", "split_b"]
    a, b = read_table(old, "triplets", columns), read_table(new, "triplets", columns)
    out = {"old": read_manifest(old)["version"], "new": read_manifest(new)["version"], "splits": {}}
    for split in ("split_a", "split_b"):
        for part in ("train", "test"):
            before = set(a.loc[a[split] == part, "post_id"])
            after = set(b.loc[b[split] == part, "post_id"])
            out["splits"][f"{split}_{part}"] = {"old": len(before), "new": len(after),
                                                "added": len(after - before), "removed": len(before - after)}
    songs_a, songs_b = set(a["song_id"]), set(b["song_id"])
    gained, lost = sorted(songs_b - songs_a), sorted(songs_a - songs_b)
    out["songs"] = {"old": len(songs_a), "new": len(songs_b), "gained": len(gained), "lost": len(lost),
                    "gained_ids": gained[:50], "lost_ids": lost[:50]}
    out["triplets"] = {"old": len(a), "new": len(b), "added": len(set(b["post_id"]) - set(a["post_id"])),
                       "removed": len(set(a["post_id"]) - set(b["post_id"]))}
    return out


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("image2song")
    except PackageNotFoundError:
        package = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{package}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return package

