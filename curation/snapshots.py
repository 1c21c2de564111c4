"""Snapshots: immutable, versioned Parquet datasets built from approved catalog rows.

The default recipe is the paper's protocol: keep songs with at least 5 posts, per song the 5 posts
with the highest favorite counts; split A holds out 100 songs (with all their images) for test;
split B holds out one of each song's 5 images. Membership is seeded and deterministic. A snapshot
is written to a temporary folder and renamed into place, so no reader ever sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select

from curation.catalog import Image, LyricCandidate, Post, ReviewItem, SnapshotRecord, Song, session_scope
from curation.crawl_store import image_key
from curation.lyric_text import modeling_tokens

log = logging.getLogger(__name__)

TRIPLETS_SCHEMA = pa.schema([
    ("post_id", pa.string()), ("image_sha256", pa.string()), ("image_path", pa.string()),
    ("song_id", pa.string()), ("title", pa.string()), ("artist", pa.string()),
    ("mood", pa.dictionary(pa.int16(), pa.string())), ("favorite_count", pa.int64()),
    ("split_a", pa.dictionary(pa.int8(), pa.string())), ("split_b", pa.dictionary(pa.int8(), pa.string())),
])
SONGS_SCHEMA = pa.schema([
    ("song_id", pa.string()), ("title", pa.string()), ("artist", pa.string()),
    ("lyric", pa.string()), ("modeling_text", pa.string()),
])


class SnapshotError(RuntimeError):
    """The catalog cannot give a valid snapshot with this recipe; the message says why."""


@dataclass(frozen=True)
class Recipe:
    min_posts: int = 5         # songs with fewer posts are left out
    posts_per_song: int = 5    # the posts with the highest favorite counts are kept
    test_songs: int = 100      # split A: songs held out, with all their images
    seed: int = 0


def approved_posts(db_url: str) -> tuple[pd.DataFrame, dict]:
    """Posts whose image is stored and whose song has an approved lyric, plus catalog figures."""
    with session_scope(db_url) as session:
        rows = session.execute(
            select(Post.id, Post.favorite_count, Post.mood, Image.sha256, Image.content_type,
                   Song.id.label("song"), Song.title, Song.artist, LyricCandidate.text,
                   LyricCandidate.decided_by)
            .join(Image, Post.image_id == Image.id).join(Song, Post.song_id == Song.id)
            .join(LyricCandidate, LyricCandidate.song_id == Song.id)
            .where(Image.status == "stored", LyricCandidate.verdict == "approved")
            .order_by(Post.id)).all()
        state = {
            "posts": session.scalar(select(func.count()).select_from(Post)),
            "songs": session.scalar(select(func.count()).select_from(Song)),
            "approved_lyrics": session.scalar(select(func.count()).select_from(LyricCandidate)
                                              .where(LyricCandidate.verdict == "approved")),
            "pending_reviews": session.scalar(select(func.count()).select_from(ReviewItem)
                                              .where(ReviewItem.state != "decided")),
            "review_decisions_included": sorted(session.scalars(
                select(ReviewItem.id).join(LyricCandidate, ReviewItem.candidate_id == LyricCandidate.id)
                .where(ReviewItem.state == "decided", LyricCandidate.verdict == "approved"))),
        }
    frame = pd.DataFrame(rows, columns=["post", "favorite_count", "mood", "sha256", "content_type",
                                        "song", "title", "artist", "lyric", "decided_by"])
    return frame, state


def select_triplets(posts: pd.DataFrame, recipe: Recipe) -> tuple[pd.DataFrame, dict]:
    """Apply the recipe: popular songs, top posts by favorites, splits A and B (seeded)."""
    # One post per image: the same bytes in two posts would leak across a split.
    posts = posts.sort_values(["favorite_count", "post"], ascending=[False, True]).drop_duplicates("sha256")
    counts = posts.groupby("song")["post"].transform("size")
    kept = posts[counts >= recipe.min_posts]
    kept = kept.groupby("song", sort=True).head(recipe.posts_per_song).sort_values(["song", "post"])
    songs = np.array(sorted(kept["song"].unique()))
    notes = {}
    if len(songs) < 2:
        raise SnapshotError(f"only {len(songs)} songs have at least {recipe.min_posts} approved posts; "
                            "crawl more or lower min_posts")
    test_songs = recipe.test_songs
    if test_songs >= len(songs):
        test_songs = len(songs) // 2
        notes["test_songs"] = f"lowered from {recipe.test_songs} to {test_songs}: only {len(songs)} songs"
        log.warning("split A: %s", notes["test_songs"])
    rng = np.random.default_rng(recipe.seed)
    held_out = set(rng.choice(songs, size=test_songs, replace=False).tolist())
    kept = kept.assign(split_a=np.where(kept["song"].isin(held_out), "test", "train"))
    test_rank = {song: int(rng.integers(len(group))) for song, group in kept.groupby("song", sort=True)}
    position = kept.groupby("song").cumcount()
    kept = kept.assign(split_b=np.where(position == kept["song"].map(test_rank), "test", "train"))
    _check_leakage(kept)
    return kept.reset_index(drop=True), notes


def _check_leakage(kept: pd.DataFrame) -> None:
    for split in ("split_a", "split_b"):
        train = set(kept.loc[kept[split] == "train", "sha256"])
        leaked = train & set(kept.loc[kept[split] == "test", "sha256"])
        if leaked:
            raise SnapshotError(f"{split}: {len(leaked)} images are in both train and test")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_snapshot(db_url: str, snapshots_root: str | Path, recipe: Recipe = Recipe()) -> dict:
    """Build and publish a snapshot; when the approved data are unchanged since the latest
    snapshot, publish nothing and return the latest (so re-running the task is harmless)."""
    root = Path(snapshots_root)
    posts, state = approved_posts(db_url)
    kept, notes = select_triplets(posts, recipe)
    triplets = pa.table({
        "post_id": kept["post"].astype(str), "image_sha256": kept["sha256"],
        "image_path": [image_key(s, c) for s, c in zip(kept["sha256"], kept["content_type"])],
        "song_id": "s" + kept["song"].astype(str), "title": kept["title"], "artist": kept["artist"],
        "mood": kept["mood"], "favorite_count": kept["favorite_count"].astype("int64"),
        "split_a": kept["split_a"], "split_b": kept["split_b"],
    }, schema=TRIPLETS_SCHEMA)
    songs_frame = kept.drop_duplicates("song")[["song", "title", "artist", "lyric"]]
    songs = pa.table({
        "song_id": "s" + songs_frame["song"].astype(str), "title": songs_frame["title"],
        "artist": songs_frame["artist"], "lyric": songs_frame["lyric"],
        "modeling_text": [" ".join(modeling_tokens(text)) for text in songs_frame["lyric"]],
    }, schema=SONGS_SCHEMA)

    root.mkdir(parents=True, exist_ok=True)
    version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    staging = root / f".staging-{version}"
    staging.mkdir()
    try:
        for name, table in (("triplets", triplets), ("songs", songs)):
            pq.write_table(table, staging / f"{name}.parquet", compression="zstd", write_statistics=True)
        files = {p.name: _sha256(p) for p in sorted(staging.glob("*.parquet"))}
        latest = latest_snapshot(db_url)
        if latest and latest["files"] == files:
            shutil.rmtree(staging)
            log.info("approved data unchanged since snapshot %s: nothing new published", latest["version"])
            return {**latest, "pending_reviews": state["pending_reviews"], "published": False}
        counts = {"triplets": triplets.num_rows, "songs": songs.num_rows}
        for split in ("split_a", "split_b"):
            for part in ("train", "test"):
                counts[f"{split}_{part}"] = int((kept[split] == part).sum())
        counts["split_a_test_songs"] = int(kept.loc[kept["split_a"] == "test", "song"].nunique())
        manifest = {
            "version": version, "created_at": datetime.now(timezone.utc).isoformat(),
            "recipe": asdict(recipe), "notes": notes, "counts": counts, "files": files,
            "schema": {"triplets": TRIPLETS_SCHEMA.to_string(), "songs": SONGS_SCHEMA.to_string()},
            "catalog": state, "code_version": _code_version(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = root / version
        os.replace(staging, final)  # the atomic publish
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest_hash = _sha256(final / "manifest.json")
    with session_scope(db_url) as session:
        session.add(SnapshotRecord(version=version, uri=str(final), recipe=asdict(recipe), counts=counts,
                                   manifest_sha256=manifest_hash))
    log.info("published snapshot %s: %s", version, counts)
    return {"version": version, "path": str(final), "counts": counts, "files": files,
            "pending_reviews": state["pending_reviews"], "published": True}


def latest_snapshot(db_url: str) -> dict | None:
    with session_scope(db_url) as session:
        record = session.scalar(select(SnapshotRecord).order_by(SnapshotRecord.id.desc()).limit(1))
        if record is None:
            return None
        manifest = json.loads((Path(record.uri) / "manifest.json").read_text())
        return {"version": record.version, "path": record.uri, "counts": record.counts,
                "files": manifest["files"], "pending_reviews": manifest["catalog"]["pending_reviews"]}


def list_snapshots(db_url: str) -> list[dict]:
    with session_scope(db_url) as session:
        return [{"version": r.version, "path": r.uri, "counts": r.counts, "created_at": r.created_at.isoformat()}
                for r in session.scalars(select(SnapshotRecord).order_by(SnapshotRecord.id))]


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("image2song")
    except PackageNotFoundError:
        return "unknown"
