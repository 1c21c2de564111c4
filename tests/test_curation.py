"""Curation: crawl state, lyric cleaning and filters, the review queue and snapshots (both databases)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image
from sqlalchemy import func, select

from crawlers.images import validate_image
from crawlers.lyrics import LyricHit
from crawlers.sharing_site import PostRecord
from curation.catalog import LyricCandidate, Post, ReviewEvent, session_scope
from curation.crawl_store import (
    CatalogCrawlState, ensure_source, images_to_fetch, record_image, songs_without_lyrics, store_lyric, store_posts,
)
from curation.lyric_filters import filter_pending, judge
from curation.lyric_text import clean_lyric, modeling_tokens
from curation.review_queue import decide, enqueue_reviews, pending_items
from curation.snapshot_reader import load_snapshot
from curation.snapshots import Recipe, SnapshotError, build_snapshot

ENGLISH = ("I walked along the river in the morning light, the water singing softly to the sky, "
           "and every bird was calling out your name across the silver fields of home tonight.")
GERMAN = ("Ich ging am Fluss entlang im Morgenlicht, das Wasser sang leise zum Himmel hinauf, "
          "und jeder Vogel rief deinen Namen über die silbernen Felder der Heimat heute Nacht.")


# --- text and filters -------------------------------------------------------------------------

def test_clean_lyric_drops_markers_timestamps_and_markup():
    raw = "[Chorus]\n[00:12.34] Hello   <b>world</b>\n\n(Verse 2)\nagain"
    assert clean_lyric(raw) == "Hello world\nagain"


def test_modeling_tokens_follow_the_paper():
    assert modeling_tokens("Don't stop the Music! It's 1999, baby's love") == ["stop", "music", "1999", "babys", "love"]


@pytest.mark.parametrize("text, instrumental, score, verdict, reason", [
    (ENGLISH, False, 1.0, "approved", "English"),
    (GERMAN, False, 1.0, "rejected", "non-English: de"),
    ("Oh yeah", False, 1.0, "review", "too short"),
    ("Lyrics not available", False, 1.0, "rejected", "placeholder"),
    (None, True, 1.0, "rejected", "instrumental"),
    ("", False, 1.0, "rejected", "not found"),
    (ENGLISH, False, 0.3, "rejected", "mismatch"),
    (ENGLISH, False, 0.7, "review", "uncertain match"),
])
def test_filters_give_a_verdict_and_a_reason(text, instrumental, score, verdict, reason):
    result = judge(text, instrumental=instrumental, match_score=score)
    assert result.verdict == verdict
    assert reason in result.reason


def test_hostile_lyric_is_judged_not_executed():
    result = judge("<script>alert(1)</script>" + ENGLISH, instrumental=False, match_score=1.0)
    assert result.verdict == "approved"


# --- a small catalog ------------------------------------------------------------------------

def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (64, 64), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    for x in range(0, 64, 8):  # a pattern per seed, so perceptual hashes differ too
        image.paste((seed * x % 256, x * 4, 255 - x), (x, (seed * 7 + x) % 56, x + 8, (seed * 7 + x) % 56 + 8))
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def fill_catalog(db_url: str, songs: int = 12, posts_per_song: int = 6, german: tuple[int, ...] = (0,)) -> None:
    """Posts, stored images and filtered lyrics, as the refresh stages would leave them."""
    source = ensure_source(db_url, "test", "html_site", "http://site")
    records = [PostRecord(f"p{s}-{p}", f"http://site/post/p{s}-{p}", f"http://site/img/{s}-{p}.jpg",
                          f"Song {s}", f"Artist {s % 3}", None, 200, "happy" if p == 0 else None, (p * 13 + s) % 50)
               for s in range(songs) for p in range(posts_per_song)]
    store_posts(db_url, source, records)
    for index, url in enumerate(images_to_fetch(db_url)):
        record_image(db_url, url, fetched=validate_image(_jpeg(index), declared_type="image/jpeg"))
    for song in songs_without_lyrics(db_url, "lrclib"):
        number = int(song["title"].split()[1])
        text = GERMAN if number in german else ENGLISH + f" verse {number}"
        store_lyric(db_url, song["id"], "lrclib", LyricHit("lrclib", str(number), song["title"], song["artist"],
                                                           200, False, text, None, 1.0, "exact"))
    filter_pending(db_url)


def test_crawl_state_resumes_without_duplicates(db_url):
    source = ensure_source(db_url, "site", "html_site", "http://site")
    state = CatalogCrawlState(db_url, source)
    assert state.add("post", ["http://site/post/1", "http://site/post/2"]) == 2
    assert state.add("post", ["http://site/post/2", "http://site/post/3"]) == 1
    state.record("http://site/post/1", "done", http_status=200, etag='"e1"')
    state.record("http://site/post/2", "error", error="HTTP 500")
    assert state.pending("post") == ["http://site/post/2", "http://site/post/3"]
    assert state.validators("http://site/post/1") == ('"e1"', None)
    state.record("http://site/post/1", "done", http_status=304)  # a 304 keeps the validators
    assert state.validators("http://site/post/1") == ('"e1"', None)


def test_storing_posts_twice_duplicates_nothing(db_url):
    fill_catalog(db_url, songs=3, posts_per_song=2)
    source = ensure_source(db_url, "test", "html_site", "http://site")
    again = PostRecord("p0-0", "http://site/post/p0-0", "http://site/img/0-0.jpg", "Song 0", "Artist 0",
                       None, 200, None, 999)
    assert store_posts(db_url, source, [again]) == 0
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Post)) == 6
        assert session.scalar(select(Post.favorite_count).where(Post.external_id == "p0-0")) == 999


def test_filter_verdicts_are_stored_with_reasons(db_url):
    fill_catalog(db_url, songs=4, posts_per_song=1, german=(1,))
    with session_scope(db_url) as session:
        rows = {c.song.title: (c.verdict, c.reason, c.scores.get("language"))
                for c in session.scalars(select(LyricCandidate))}
    assert rows["Song 1"][0] == "rejected" and rows["Song 1"][1].startswith("non-English")
    assert rows["Song 0"] == ("approved", rows["Song 0"][1], "en")


def test_review_decision_is_audited_and_applied(db_url):
    fill_catalog(db_url, songs=2, posts_per_song=1)
    with session_scope(db_url) as session:
        candidate = session.scalar(select(LyricCandidate).limit(1))
        candidate.verdict, candidate.reason = "review", "uncertain match"
    assert enqueue_reviews(db_url) == {"enqueued": 1, "pending": 1}
    assert enqueue_reviews(db_url) == {"enqueued": 0, "pending": 1}  # idempotent
    item = pending_items(db_url)[0]
    with pytest.raises(ValueError, match="corrected lyric"):
        decide(db_url, item["item"], "edit", "ann")
    decide(db_url, item["item"], "edit", "ann", corrected_text="the right words")
    with session_scope(db_url) as session:
        event = session.scalar(select(ReviewEvent))
        assert (event.actor, event.before["verdict"], event.after["verdict"]) == ("ann", "review", "approved")
        assert session.get(LyricCandidate, candidate.id).text == "the right words"
    assert pending_items(db_url) == []


# --- snapshots --------------------------------------------------------------------------------

def test_snapshot_follows_the_papers_protocol(db_url, tmp_path):
    fill_catalog(db_url, songs=12, posts_per_song=6, german=(0,))
    result = build_snapshot(db_url, tmp_path / "snaps", Recipe(test_songs=4, seed=1))
    snap = load_snapshot(result["path"])
    t = snap.triplets
    assert t["song_id"].nunique() == 11  # the German song is rejected
    assert (t.groupby("song_id").size() == 5).all()  # 5 posts per song, not 6
    test_a = t[t["split_a"] == "test"]
    assert test_a["song_id"].nunique() == 4 and len(test_a) == 20
    assert set(test_a["song_id"]).isdisjoint(t.loc[t["split_a"] == "train", "song_id"])
    assert (t[t["split_b"] == "test"].groupby("song_id").size() == 1).all()
    assert set(snap.songs["song_id"]) == set(t["song_id"])
    assert result["counts"]["split_b_test"] == 11


def test_snapshot_keeps_the_top_favorites(db_url, tmp_path):
    fill_catalog(db_url, songs=3, posts_per_song=7)
    snap = load_snapshot(build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=1))["path"])
    with session_scope(db_url) as session:
        for song_id, group in snap.triplets.groupby("song_id"):
            favorites = sorted(session.scalars(select(Post.favorite_count).where(Post.song_id == int(song_id[1:]))),
                               reverse=True)
            assert sorted(group["favorite_count"], reverse=True) == favorites[:5]


def test_snapshot_is_deterministic_and_unchanged_data_publish_nothing(db_url, tmp_path):
    fill_catalog(db_url)
    first = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=7))
    again = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=7))
    assert again["published"] is False and again["version"] == first["version"]
    other_root = build_snapshot(db_url, tmp_path / "elsewhere", Recipe(test_songs=3, seed=7))
    assert other_root["files"] == first["files"]
    reseeded = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=8))
    assert reseeded["published"] and reseeded["files"] != first["files"]


def test_snapshot_files_read_with_pandas_pyarrow_and_duckdb(db_url, tmp_path):
    import duckdb
    import pyarrow.dataset as ds

    fill_catalog(db_url)
    path = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))["path"]
    frame = pd.read_parquet(f"{path}/triplets.parquet")
    assert ds.dataset(f"{path}/triplets.parquet").count_rows() == len(frame)
    count = duckdb.sql(f"select count(*) from '{path}/triplets.parquet' where split_a = 'test'").fetchall()[0][0]
    assert count == 15
    manifest = json.loads(open(f"{path}/manifest.json").read())
    assert manifest["counts"]["split_a_test"] == 15 and manifest["recipe"]["test_songs"] == 3


def test_snapshot_without_enough_songs_is_a_clear_error(db_url, tmp_path):
    fill_catalog(db_url, songs=3, posts_per_song=2)
    with pytest.raises(SnapshotError, match="at least 5 approved posts"):
        build_snapshot(db_url, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_failed_build_leaves_no_half_snapshot(db_url, tmp_path, monkeypatch):
    import curation.snapshots as snapshots

    fill_catalog(db_url)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(snapshots, "_code_version", crash)
    with pytest.raises(OSError, match="disk full"):
        build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))
    assert list((tmp_path / "s").iterdir()) == []
