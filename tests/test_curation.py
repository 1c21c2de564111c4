"""Curation: crawl state, lyric cleaning and filters, the review queue (both databases); snapshots are in
test_snapshots.py."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from catalog_factory import fill_catalog
from crawlers.sharing_site import PostRecord
from curation.catalog import LyricCandidate, Post, ReviewEvent, session_scope
from curation.crawl_store import CatalogCrawlState, ensure_source, store_posts
from curation.lyrics.filters import judge
from curation.lyrics.text import clean_lyric, modeling_tokens
from curation.review.queue import decide, enqueue_reviews, pending_items

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


# --- a small catalog (tests/catalog_factory.py) ---------------------------------------------

def test_crawl_state_resumes_without_duplicates(db_url):
    source = ensure_source(db_url, "site", "html_site", "http://site")
    state = CatalogCrawlState(db_url, source)
    assert state.add("post", ["http://site/post/1", "http://site/post/2"]) == ["http://site/post/1", "http://site/post/2"]
    assert state.add("post", ["http://site/post/2", "http://site/post/3"]) == ["http://site/post/3"]
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
