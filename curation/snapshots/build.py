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

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from curation.catalog import SnapshotRecord, session_scope
from curation.crawl_store import image_key
from curation.snapshots.datasheet import write_datasheet
from curation.lyrics.text import modeling_tokens
from curation.snapshots.leakage import cross_matches
from curation.snapshots.reader import (
    SnapshotIntegrityError, check_snapshot, load_snapshot, manifest_content_hash, read_manifest,
)
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

def _tables(kept: pd.DataFrame, songs: list[tuple], modeling: dict) -> tuple[pa.Table, pa.Table]:
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
        "modeling_text": [modeling[song] for song in song_frame["song"]],
        "lyric_provider": song_frame["provider"], "lyric_candidate_id": song_frame["candidate_id"].astype("int64"),
        "lyric_decided_by": song_frame["decided_by"], "match_score": song_frame["match_score"].astype("float64"),
    }, schema=SONGS_SCHEMA)
    return triplets, songs_table


def _write_parquet(table: pa.Table, path: Path, name: str) -> dict:
    # Page checksums (CRC32 per page): readers that check them (ours always does) raise on a flipped bit.
    pq.write_table(table, path, compression="zstd", write_page_checksum=True, **WRITE_OPTIONS[name])
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
                   chunk_rows: int = CHUNK_ROWS, dataset: dict | None = None) -> dict:
    """Build and publish a snapshot under ``snapshots_root`` (a folder or an fsspec URL). When the data
    files are byte-identical to the latest snapshot's and that snapshot is whole, publish nothing and
    return the latest (so re-running the task is harmless); a damaged latest snapshot is republished.
    Staging left by killed builds is removed first, and a snapshot published by a build killed before
    its catalog write is adopted into the catalog rather than duplicated. Raises SnapshotError when the
    recipe cannot be met or leaks. ``dataset``: what the datasheet states of the dataset as a whole
    (``license``, ``maintainer``, ``retention``, ``sources``, ``lyrics_provider``; from the settings)."""
    started = datetime.now(timezone.utc)
    store = SnapshotStore(snapshots_root)
    store.clean_staging()
    adopt_published(db_url, store)
    kept = read_kept(db_url, recipe, chunk_rows).to_pandas()
    pairs = kept[["song_id", "lyric_candidate_id"]].drop_duplicates("song_id")
    songs = song_rows(db_url, list(zip(pairs["song_id"].tolist(), pairs["lyric_candidate_id"].tolist())))
    # An approved lyric with nothing left for modeling (only stop words and symbols) never reaches a
    # snapshot: its song is left out and named in the manifest, for a curator to fix.
    modeling = {song: " ".join(modeling_tokens(lyric or "")) for song, _, _, lyric, *_ in songs}
    empty = sorted(song for song, text in modeling.items() if not text)
    if empty:
        kept = kept[~kept["song_id"].isin(empty)]
        songs_left_out = {row[0]: row[5] for row in songs if row[0] in set(empty)}  # song -> candidate id
        songs = [row for row in songs if row[0] not in set(empty)]
        send_back_to_review(db_url, sorted(songs_left_out.values()))
        log.warning("%d song(s) left out and sent back to review: their approved lyric has an empty modeling "
                    "text (%s)", len(empty), ", ".join(f"s{song}" for song in empty[:10]))
    kept, notes = assign_splits(kept, recipe, linked_songs=same_lyric_songs(modeling))
    if empty:
        notes["left_out_empty_modeling_text"] = [f"s{song}" for song in empty]
    leakage = check_leakage(kept.assign(post_id=kept["post_id"].astype(str)), recipe.near_duplicate_bits)
    leakage["lyrics"] = check_lyric_leakage(kept, modeling)
    triplets, songs_table = _tables(kept, songs, modeling)
    counts = _counts(kept, triplets, songs_table)

    version = started.strftime("%Y%m%dT%H%M%S%fZ")
    staging = store.staging(version)
    try:
        details = {}
        for name, table in (("triplets", triplets), ("songs", songs_table)):
            path = staging / f"{name}.parquet"
            layout = _write_parquet(table, path, name)
            details[path.name] = {**_file_entry(path), **layout}
        files = {name: details[name]["sha256"] for name in DATA_FILES}
        try:
            latest = latest_snapshot(db_url, snapshots_root)
        except (FileNotFoundError, SnapshotIntegrityError) as error:  # gone or unreadable here: publish
            log.warning("the catalog's latest snapshot cannot be read under %s (%s): publishing", snapshots_root,
                        error)
            latest = None
        if latest and latest["files"] == files:
            problems = latest_problems(db_url, snapshots_root)
            if not problems:
                store.discard(staging)
                log.info("approved data unchanged since snapshot %s: nothing new published", latest["version"])
                return {**latest, "published": False}
            log.warning("the latest snapshot %s is damaged (%s): publishing the same data anew",
                        latest["version"], "; ".join(problems))
            notes["republished_over_damaged"] = {"version": latest["version"], "problems": problems}
        state = catalog_state(db_url, sorted(set(kept["lyric_candidate_id"].tolist())))
        manifest = {
            "format": FORMAT, "version": version, "created_at": started.isoformat(),
            "recipe": recipe.to_dict(), "seed": recipe.seed, "notes": notes, "counts": counts,
            "files": files, "schema": {"triplets": _schema_doc(TRIPLETS_SCHEMA), "songs": _schema_doc(SONGS_SCHEMA)},
            "catalog": state, "leakage": leakage,
            "figures": {"eligible": eligible_figures(db_url), "snapshot": _snapshot_figures(kept)},
            "code_version": _code_version(), "dataset": dataset or {},
        }
        for name in write_datasheet(staging, manifest):
            details[name] = _file_entry(staging / name)
        manifest["file_details"] = details
        # Hashed as readers will see it: JSON turns integer keys into strings, which sort otherwise.
        manifest = json.loads(json.dumps(manifest, default=str))
        manifest["manifest_sha256"] = manifest_content_hash(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        manifest_hash = _file_entry(staging / MANIFEST)["sha256"]
        uri = store.publish(staging, version)
    except BaseException:
        store.discard(staging)
        raise
    record_snapshot(db_url, store, version, manifest, manifest_hash)
    log.info("published snapshot %s: %s", version, counts)
    return {"version": version, "path": uri, "counts": counts, "files": files,
            "datasheet": f"{uri}/datasheet.md", "pending_reviews": state["pending_reviews"], "published": True}


EMPTY_MODELING_TEXT = "empty modeling text: nothing is left once stop words and symbols are removed"


def send_back_to_review(db_url: str, candidate_ids: list[int]) -> None:
    """Approved lyrics that cannot be modeled go back to a curator: a decided review item is reopened
    (with the reason as its comment), a lyric never reviewed becomes a review candidate."""
    from curation.catalog import LyricCandidate, ReviewItem
    from curation.review.queue import reopen

    if not candidate_ids:
        return
    with session_scope(db_url) as session:
        items = dict(session.execute(select(ReviewItem.candidate_id, ReviewItem.id)
                                     .where(ReviewItem.candidate_id.in_(candidate_ids))).all())
        for candidate in session.scalars(select(LyricCandidate).where(LyricCandidate.id.in_(candidate_ids))):
            if candidate.id not in items:
                candidate.verdict, candidate.reason, candidate.decided_by = "review", EMPTY_MODELING_TEXT, "snapshot"
    for item_id in items.values():
        try:
            reopen(db_url, item_id, "snapshot build", comment=EMPTY_MODELING_TEXT)
        except ValueError:  # already back in the queue
            pass


def _catalog_uri(store: SnapshotStore, version: str) -> str:
    """What the catalog keeps of where a snapshot is: on a local root only the version (relative to the
    snapshots root, so a moved state folder still finds it), else the full URL."""
    return version if store.local else store.uri(version)


def record_snapshot(db_url: str, store: SnapshotStore, version: str, manifest: dict, manifest_hash: str) -> bool:
    """Write a published snapshot into the catalog, once: a second write of the same version is a no-op
    (returns False)."""
    from sqlalchemy.exc import IntegrityError

    try:
        with session_scope(db_url) as session:
            if session.scalar(select(SnapshotRecord.id).where(SnapshotRecord.version == version)) is not None:
                return False
            session.add(SnapshotRecord(version=version, uri=_catalog_uri(store, version),
                                       recipe=manifest.get("recipe") or {}, counts=manifest.get("counts") or {},
                                       manifest_sha256=manifest_hash))
        return True
    except IntegrityError:  # another build recorded it at the same moment
        return False


def adopt_published(db_url: str, store: SnapshotStore) -> list[str]:
    """Snapshots published in the store but missing from the catalog (a build killed between publishing
    and its catalog write) are recorded now, when whole; returns the versions adopted."""
    with session_scope(db_url) as session:
        known = set(session.scalars(select(SnapshotRecord.version)))
    adopted = []
    for version in store.versions():
        if version in known:
            continue
        path = store.uri(version)
        problems = check_snapshot(path)
        if problems:
            log.warning("published snapshot %s is not in the catalog and is damaged, left alone: %s", version,
                        "; ".join(problems))
            continue
        fs, root = fsspec.core.url_to_fs(str(path))
        with fs.open(f"{root.rstrip('/')}/{MANIFEST}", "rb") as handle:
            data = handle.read()
        if record_snapshot(db_url, store, version, json.loads(data), hashlib.sha256(data).hexdigest()):
            log.info("adopted snapshot %s, published by a build that stopped before its catalog write", version)
            adopted.append(version)
    return adopted


def same_lyric_songs(modeling: dict) -> list[tuple]:
    """Pairs of songs whose modeling texts are identical or near-identical (the same set of words)."""
    groups: dict = {}
    for song, text in modeling.items():
        if text:
            groups.setdefault(_lyric_signature(text), []).append(song)
    return [(members[0], other) for members in groups.values() for other in members[1:]]


def _lyric_signature(text: str) -> str:
    # The set of words: a reordered, repeated or re-punctuated copy of a lyric has the same set.
    return hashlib.sha256(" ".join(sorted(set(text.split()))).encode()).hexdigest()


def check_lyric_leakage(kept: pd.DataFrame, modeling: dict) -> dict:
    """Fail (SnapshotError) when two songs with identical or near-identical modeling text (the same set
    of words) sit on different sides of split A (split B holds every song on both sides by design)."""
    sides = kept.drop_duplicates("song_id").set_index("song_id")["split_a"].to_dict()
    by_signature: dict = {}
    for song, side in sides.items():
        if modeling.get(song):
            by_signature.setdefault(_lyric_signature(modeling[song]), []).append((song, side))
    problems = []
    for members in by_signature.values():
        if len({side for _, side in members}) > 1:
            problems.append(" ~ ".join(f"s{song} ({side})" for song, side in members))
    if problems:
        raise SnapshotError(f"leakage: {len(problems)} lyric(s) in both train and test of split_a: "
                            + "; ".join(problems[:5]))
    return {"result": "no modeling text (or its set of words) in both train and test of split_a",
            "shared_texts": sum(len(members) > 1 for members in by_signature.values())}


# --- listing, showing, comparing ------------------------------------------------------------------

def resolve_uri(uri: str, version: str, snapshots_root: str | os.PathLike | None = None) -> str:
    """Where a catalog's snapshot is now: a relative entry under ``snapshots_root``; an absolute one as
    recorded, unless it is gone and the root holds the version (the state folder moved)."""
    if "://" in uri:
        return uri
    if snapshots_root is not None and "://" not in str(snapshots_root):
        here = Path(snapshots_root) / version
        if not Path(uri).is_absolute() or (not Path(uri).exists() and here.exists()):
            return str(here)
    return uri


def _latest_record(db_url: str):
    with session_scope(db_url) as session:
        record = session.scalar(select(SnapshotRecord).order_by(SnapshotRecord.version.desc()).limit(1))
        if record is None:
            return None
        return record.version, record.uri, record.counts, record.manifest_sha256


def latest_snapshot(db_url: str, snapshots_root: str | os.PathLike | None = None) -> dict | None:
    found = _latest_record(db_url)
    if found is None:
        return None
    version, uri, counts, manifest_hash = found
    uri = resolve_uri(uri, version, snapshots_root)
    manifest = read_manifest(uri)
    files = manifest["files"]
    if files and isinstance(next(iter(files.values())), dict):  # tolerate richer entries
        files = {name: entry["sha256"] for name, entry in files.items()}
    return {"version": version, "path": uri, "counts": counts,
            "files": {name: files[name] for name in DATA_FILES if name in files},
            "datasheet": f"{uri}/datasheet.md", "manifest_sha256": manifest_hash,
            "pending_reviews": manifest["catalog"]["pending_reviews"]}


def latest_problems(db_url: str, snapshots_root: str | os.PathLike | None = None) -> list[str]:
    """What is wrong with the latest snapshot (empty when it is whole), its manifest checked against
    the catalog's record."""
    found = _latest_record(db_url)
    if found is None:
        return []
    version, uri, _, manifest_hash = found
    try:
        return check_snapshot(resolve_uri(uri, version, snapshots_root), manifest_sha256=manifest_hash)
    except FileNotFoundError as error:
        return [str(error)]


def list_snapshots(db_url: str, snapshots_root: str | os.PathLike | None = None) -> list[dict]:
    with session_scope(db_url) as session:
        return [{"version": r.version, "path": resolve_uri(r.uri, r.version, snapshots_root), "counts": r.counts,
                 "created_at": r.created_at.isoformat()}
                for r in session.scalars(select(SnapshotRecord).order_by(SnapshotRecord.version))]


def verify_snapshots(db_url: str, snapshots_root: str | os.PathLike, version: str | None = None) -> list[dict]:
    """``snapshot verify``: each snapshot of the catalog (or only ``version``) checked whole: manifest
    against the catalog and itself, files against the manifest, row counts, every Parquet page's CRC.
    Returns one entry per snapshot: version, path, ok, problems."""
    with session_scope(db_url) as session:
        query = select(SnapshotRecord).order_by(SnapshotRecord.version)
        if version:
            query = query.where(SnapshotRecord.version == version)
        records = [(r.version, r.uri, r.manifest_sha256) for r in session.scalars(query)]
    if version and not records:
        raise LookupError(f"no snapshot {version!r} in the catalog")
    report = []
    for name, uri, manifest_hash in records:
        path = resolve_uri(uri, name, snapshots_root)
        try:
            problems = check_snapshot(path, manifest_sha256=manifest_hash, pages=True)
        except FileNotFoundError as error:
            problems = [str(error)]
        report.append({"version": name, "path": path, "ok": not problems, "problems": problems})
    return report


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


CONTENT_COLUMNS = ("source", "external_id", "post_url", "image_sha256", "image_path", "image_phash", "song_id",
                   "title", "artist", "mood", "favorite_count", "lyric_candidate_id")


def diff_snapshots(old: str | os.PathLike, new: str | os.PathLike, *, limit: int = 50) -> dict:
    """What changed from snapshot ``old`` to ``new``, at content level (both are verified first):

    - per split and part: rows (posts) added, removed, and changed (the same post with other content:
      image, song, mood, favorites, lyric candidate …); a post that changed sides counts as removed from
      one part and added to the other;
    - songs gained and lost; songs whose lyric or modeling text changed;
    - per split, songs that moved side (train → test or test → train; in split B, songs whose held-out
      images changed).
    Id lists are cut at ``limit``; the counts are whole."""
    a, b = load_snapshot(old), load_snapshot(new)
    ta, tb = a.triplets.set_index("post_id"), b.triplets.set_index("post_id")
    common = ta.index.intersection(tb.index)
    differs = pd.Series(False, index=common)
    for column in CONTENT_COLUMNS:
        x, y = ta.loc[common, column].astype(object), tb.loc[common, column].astype(object)
        differs |= (x != y) & ~(x.isna() & y.isna())
    changed_posts = set(common[differs.to_numpy()])
    out = {"old": a.version, "new": b.version, "splits": {}}
    for split in ("split_a", "split_b"):
        for part in ("train", "test"):
            before = set(ta.index[ta[split] == part])
            after = set(tb.index[tb[split] == part])
            changed = sorted((before & after) & changed_posts)
            out["splits"][f"{split}_{part}"] = {"old": len(before), "new": len(after),
                                                "added": len(after - before), "removed": len(before - after),
                                                "changed": len(changed), "changed_ids": changed[:limit]}
    songs_a, songs_b = set(ta["song_id"]), set(tb["song_id"])
    gained, lost = sorted(songs_b - songs_a), sorted(songs_a - songs_b)
    out["songs"] = {"old": len(songs_a), "new": len(songs_b), "gained": len(gained), "lost": len(lost),
                    "gained_ids": gained[:limit], "lost_ids": lost[:limit]}
    sa, sb = a.songs.set_index("song_id"), b.songs.set_index("song_id")
    both = sa.index.intersection(sb.index)
    text = {}
    for column in ("lyric", "modeling_text"):
        differs = sa.loc[both, column].fillna("") != sb.loc[both, column].fillna("")
        text[column] = sorted(both[differs.to_numpy()])
    out["songs"].update(lyric_changed=len(text["lyric"]), lyric_changed_ids=text["lyric"][:limit],
                        modeling_text_changed=len(text["modeling_text"]),
                        modeling_text_changed_ids=text["modeling_text"][:limit])
    moved = {}
    for split in ("split_a", "split_b"):
        if split == "split_a":
            side_a = ta.groupby("song_id")[split].agg(lambda v: "test" if (v == "test").any() else "train")
            side_b = tb.groupby("song_id")[split].agg(lambda v: "test" if (v == "test").any() else "train")
            keep = side_a.index.intersection(side_b.index)
            to_test = sorted(keep[((side_a[keep] == "train") & (side_b[keep] == "test")).to_numpy()])
            to_train = sorted(keep[((side_a[keep] == "test") & (side_b[keep] == "train")).to_numpy()])
            moved[split] = {"train_to_test": len(to_test), "train_to_test_ids": to_test[:limit],
                            "test_to_train": len(to_train), "test_to_train_ids": to_train[:limit]}
        else:
            held_a = ta[ta[split] == "test"].groupby("song_id")["image_sha256"].agg(frozenset)
            held_b = tb[tb[split] == "test"].groupby("song_id")["image_sha256"].agg(frozenset)
            keep = sorted(songs_a & songs_b)
            other = [s for s in keep if held_a.get(s, frozenset()) != held_b.get(s, frozenset())]
            moved[split] = {"held_out_images_changed": len(other), "held_out_images_changed_ids": other[:limit]}
    out["moved"] = moved
    out["triplets"] = {"old": len(ta), "new": len(tb), "added": len(set(tb.index) - set(ta.index)),
                       "removed": len(set(ta.index) - set(tb.index)), "changed": len(changed_posts)}
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

