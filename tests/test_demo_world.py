"""The demo world: corpus building from packaged material, and the site + lyric API over real HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import requests
from bs4 import BeautifulSoup
from PIL import Image

from image2song.demo import DemoWorld, MaterialMissingError, build_corpus
from image2song.demo.corpus import PLACEHOLDERS, SCALES
from image2song.demo.material import (
    ALL_ENGLISH_FORTUNE_FILES,
    FORTUNES_DIR,
    STAMPS_DIR,
    content_stems,
    load_kjv_verse,
    load_stamps,
    theme_vocabularies,
)

pytestmark = pytest.mark.skipif(
    not (FORTUNES_DIR / "songs-poems").exists() or not STAMPS_DIR.exists(),
    reason="needs Debian packages fortunes and tuxpaint-stamps-default",
)

TINY_POSTS = 400
PAGE_SIZE = 25


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "corpus"
    summary = build_corpus(out, seed=7, n_posts=TINY_POSTS, image_size=128, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def posts(corpus):
    return _read_jsonl(corpus[0] / "posts.jsonl")


@pytest.fixture(scope="module")
def records(corpus):
    return _read_jsonl(corpus[0] / "lyrics.jsonl")


@pytest.fixture(scope="module")
def truth(corpus):
    return json.loads((corpus[0] / "truth.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def world(corpus):
    with DemoWorld(corpus[0], page_size=PAGE_SIZE) as w:
        yield w


@pytest.fixture()
def http():
    s = requests.Session()
    s.trust_env = False  # never route loopback through a proxy from the environment
    yield s
    s.close()


# ----------------------------------------------------------------------------------------------- corpus
def test_corpus_files_and_summary(corpus, posts, records, truth):
    out, summary = corpus
    assert summary.n_posts == len(posts) == TINY_POSTS
    assert summary.n_songs == len(truth["songs"])
    assert summary.n_lyric_records == len(records)
    assert summary.images_written == TINY_POSTS
    assert "songs with >= 5 visible posts" in str(summary)
    keys = ["post_id", "image_file", "title", "artist", "album", "duration", "mood", "favorite_count", "hidden"]
    for p in posts:
        assert list(p)[: len(keys)] == keys
        assert re.fullmatch(r"p\d{6}", p["post_id"]) and p["image_file"] == f"images/{p['post_id']}.jpg"
        assert isinstance(p["duration"], int) and 60 <= p["duration"] <= 600
        assert 1 <= p["favorite_count"] <= 9000
        assert (out / p["image_file"]).is_file()
    assert len({p["post_id"] for p in posts}) == len(posts)
    assert 0 < sum(p["hidden"] for p in posts) < 0.05 * len(posts)
    for r in records:
        assert set(r) == {"id", "trackName", "artistName", "albumName", "duration", "instrumental",
                          "plainLyrics", "syncedLyrics"}
        assert isinstance(r["id"], int) and isinstance(r["duration"], float)
        if r["syncedLyrics"]:
            assert all(re.match(r"^\[\d\d:\d\d\.\d\d\] ", ln) for ln in r["syncedLyrics"].splitlines())


def test_images_are_distinct_jpegs(corpus, posts):
    out, _ = corpus
    digests = set()
    for p in posts:
        data = (out / p["image_file"]).read_bytes()
        digests.add(hashlib.sha1(data).hexdigest())
    assert len(digests) == len(posts)
    with Image.open(out / posts[0]["image_file"]) as im:
        assert im.format == "JPEG" and im.size == (128, 128)


def test_lyric_kinds_are_what_truth_says(posts, records, truth):
    by_name = {(r["trackName"].lower(), r["artistName"].lower()): r for r in records}
    by_id = {r["id"]: r for r in records}
    songs = truth["songs"]
    seen = Counter()
    for key, s in songs.items():
        seen[s["kind"]] += 1
        rec = by_name.get((s["title"].lower(), s["artist"].lower()))
        if s["kind"] == "missing":
            assert rec is None and s["lyric_id"] is None
            continue
        assert rec is not None and by_id[s["lyric_id"]] is rec
        assert abs(rec["duration"] - s["duration"]) <= 1
        if s["kind"] == "instrumental":
            assert rec["instrumental"] and rec["plainLyrics"] is None and rec["syncedLyrics"] is None
        elif s["kind"] == "placeholder":
            assert rec["plainLyrics"] in PLACEHOLDERS
        elif s["kind"] == "mismatched":
            other = songs[s["mismatch_of"]]
            assert rec["plainLyrics"] == by_id[other["lyric_id"]]["plainLyrics"] and other["kind"] == "ok"
        elif s["kind"] == "non_english":
            assert s["language"] in ("de", "es", "it") and rec["plainLyrics"]
        else:
            assert s["language"] == "en" and len(rec["plainLyrics"].split()) >= 12
    assert seen["ok"] > 0.7 * len(songs)
    assert all(seen[k] > 0 for k in ("non_english", "missing", "mismatched", "instrumental", "placeholder"))
    # posts carry decorated titles the matcher must strip; the API holds the clean one
    decorated = [s for s in songs.values() if s["post_title"] != s["title"]]
    assert decorated and all(s["post_title"].startswith(s["title"] + " ") for s in decorated)
    post_titles = {(p["title"], p["artist"]) for p in posts}
    assert any((s["post_title"], s["artist"]) in post_titles for s in decorated)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = build_corpus(tmp_path / "a", seed=3, n_posts=60, image_size=64, progress=False)
    build_corpus(tmp_path / "b", seed=3, n_posts=60, image_size=64, progress=False)
    c = build_corpus(tmp_path / "c", seed=4, n_posts=60, image_size=64, progress=False, write_images=False)
    assert a.images_written == 60 and c.images_written == 0
    for name in ("posts.jsonl", "lyrics.jsonl", "truth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for img in sorted((tmp_path / "a" / "images").iterdir()):
        assert img.read_bytes() == (tmp_path / "b" / "images" / img.name).read_bytes()
    assert (tmp_path / "a" / "posts.jsonl").read_bytes() != (tmp_path / "c" / "posts.jsonl").read_bytes()
    assert not (tmp_path / "c" / "images").exists()


def test_default_corpus_popularity_keeps_enough_ok_songs(tmp_path):
    summary = build_corpus(tmp_path / "full", progress=False, write_images=False)
    posts = _read_jsonl(tmp_path / "full" / "posts.jsonl")
    truth = json.loads((tmp_path / "full" / "truth.json").read_text(encoding="utf-8"))
    assert len(posts) == 3000
    # what a robots-obeying crawler sees, counted from the files rather than from the summary
    visible = Counter(truth["posts"][p["post_id"]]["song"] for p in posts if not p["hidden"])
    kept = [k for k, n in visible.items() if n >= 5]
    kept_ok = [k for k in kept if truth["songs"][k]["kind"] == "ok"]
    assert len(kept_ok) >= 160, f"only {len(kept_ok)} ok songs with >= 5 posts"
    assert summary.kinds_with_5_plus["ok"] == len(kept_ok) and summary.songs_with_5_plus == len(kept)
    # Zipf-like: most songs once, a few in many posts
    counts = Counter(visible.values())
    assert counts[1] > 0.4 * len(visible) and max(visible.values()) >= 15
    # kinds near their shares
    kinds = Counter(s["kind"] for s in truth["songs"].values())
    n = len(truth["songs"])
    for kind, share in {"non_english": 0.06, "missing": 0.05, "mismatched": 0.04, "instrumental": 0.02,
                        "placeholder": 0.02}.items():
        assert abs(kinds[kind] / n - share) < 0.01, kind
    # favourites heavy-tailed, moods on about a fifth of the posts
    favs = sorted(p["favorite_count"] for p in posts)
    assert favs[0] >= 1 and favs[-1] <= 9000 and favs[len(favs) // 2] < 50 and favs[-1] >= 1000
    assert 0.15 < sum(p["mood"] is not None for p in posts) / len(posts) < 0.25
    # titles/artists identify songs: no two songs share a clean title and artist
    assert len({(s["title"].lower(), s["artist"].lower()) for s in truth["songs"].values()}) == n


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    """The research-scale corpus description (no images: the counts and the pairing are what matter)."""
    if shutil.which("bible") is None:
        pytest.skip("the research scale needs the Debian package bible-kjv")
    out = tmp_path_factory.mktemp("research") / "corpus"
    summary = build_corpus(out, scale="research", progress=False, write_images=False)
    truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    return summary, truth, _read_jsonl(out / "lyrics.jsonl"), _read_jsonl(out / "posts.jsonl")


def test_research_scale_has_2000_songs_from_all_english_text(research):
    summary, truth, records, posts = research
    assert summary.scale == "research" and summary.n_posts == len(posts) == SCALES["research"].n_posts
    assert not summary.images_written
    visible = Counter(truth["posts"][p["post_id"]]["song"] for p in posts if not p["hidden"])
    kept = [k for k, n in visible.items() if n >= 5]
    kept_ok = [k for k in kept if truth["songs"][k]["kind"] == "ok"]
    assert len(kept) >= 2000 and len(kept_ok) >= 2000, (len(kept), len(kept_ok))
    assert summary.songs_with_5_plus == len(kept)
    # the English lyrics come from every English fortunes file (not only songs-poems) and from KJV verse
    sources = Counter(s["source"].split("#")[0].split(":")[0] for s in truth["songs"].values()
                      if s["language"] == "en" and s["source"])
    assert sources["kjv"] >= 500 and sources["songs-poems"] >= 500
    readable = [f for f in ALL_ENGLISH_FORTUNE_FILES if (FORTUNES_DIR / f).exists()]
    assert len(set(sources) & set(readable)) >= 0.9 * len(readable), sorted(set(readable) - set(sources))
    # one text, one song: only the mismatched kind reuses another song's lyric
    texts = Counter(r["plainLyrics"] for r in records if r["plainLyrics"] and r["plainLyrics"] not in PLACEHOLDERS)
    reused = sum(n - 1 for n in texts.values())
    assert reused == sum(s["kind"] == "mismatched" for s in truth["songs"].values())
    # a flat head: the posts spread over many songs, the most popular has tens of posts, not hundreds
    assert max(visible.values()) <= 40
    assert json.loads((Path(summary.out_dir) / "corpus.json").read_text())["scale"] == "research"


@pytest.fixture(params=["demo", "research"])
def any_scale(request):
    """(truth, lyric records) of the tiny demo corpus and of the research-scale one."""
    if request.param == "demo":
        return request.getfixturevalue("truth"), request.getfixturevalue("records")
    _, truth, records, _ = request.getfixturevalue("research")
    return truth, records


def test_images_follow_the_song_theme(any_scale):
    truth, _ = any_scale
    posts_by_song: dict[str, list[str]] = {}
    for pid, p in truth["posts"].items():
        posts_by_song.setdefault(p["song"], []).append(p["image_theme"])
    same = total = 0
    for themes in posts_by_song.values():
        for i in range(len(themes)):
            for j in range(i + 1, len(themes)):
                same += themes[i] == themes[j]
                total += 1
    within = same / total
    freq = Counter(p["image_theme"] for p in truth["posts"].values())
    n = sum(freq.values())
    chance = sum((c / n) ** 2 for c in freq.values())
    assert within > 0.4 and within > 5 * chance, (within, chance)
    on_theme = sum(p["image_theme"] == truth["songs"][p["song"]]["theme"] for p in truth["posts"].values()) / n
    assert 0.65 < on_theme < 0.9
    preferred = sum(p["stamps"][0] in truth["songs"][p["song"]]["preferred_stamps"] for p in truth["posts"].values())
    assert preferred / n > 0.4


def test_theme_overlaps_the_lyric_words(any_scale):
    truth, records = any_scale
    vocab = theme_vocabularies(load_stamps())
    by_id = {r["id"]: r for r in records}
    checked = 0
    for s in truth["songs"].values():
        if s["kind"] == "ok" and s["theme_by"] == "overlap":
            assert content_stems(by_id[s["lyric_id"]]["plainLyrics"]) & vocab[s["theme"]], s["title"]
            checked += 1
    assert checked > 0.6 * sum(s["kind"] == "ok" for s in truth["songs"].values())


def test_a_corpus_is_reused_only_at_its_own_scale(tmp_path):
    from image2song.demo.run import ensure_corpus
    from image2song.settings import Settings

    settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path)})
    settings.demo_corpus.mkdir(parents=True)
    (settings.demo_corpus / "posts.jsonl").write_text("")
    (settings.demo_corpus / "corpus.json").write_text(json.dumps({"scale": "demo", "n_posts": 3000}))
    ensure_corpus(settings, None, "demo")  # the same build: reused as it is
    assert (settings.demo_corpus / "posts.jsonl").read_text() == ""
    with pytest.raises(RuntimeError, match="scale 'demo' with 3000 posts, not 'research' with 40000"):
        ensure_corpus(settings, None, "research")


def test_unknown_scale_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        build_corpus(tmp_path, scale="huge", progress=False, write_images=False)


def test_missing_material_says_which_package(tmp_path):
    with pytest.raises(MaterialMissingError, match="fortunes"):
        build_corpus(tmp_path / "x", n_posts=50, progress=False, fortunes_dir=tmp_path / "no-fortunes")
    with pytest.raises(MaterialMissingError, match="tuxpaint-stamps-default"):
        build_corpus(tmp_path / "y", n_posts=50, progress=False, stamps_dir=tmp_path / "no-stamps")
    with pytest.raises(MaterialMissingError, match="bible-kjv"):
        load_kjv_verse(bible_command=str(tmp_path / "no-bible"))


# ------------------------------------------------------------------------------------------ sharing site
def test_robots_and_root(world, http):
    r = http.get(world.site_url + "/robots.txt")
    assert r.status_code == 200 and r.text == "User-agent: *\nDisallow: /private/\n"
    assert r.headers["Content-Type"].startswith("text/plain")
    r = http.get(world.site_url + "/", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/posts?page=1"


def test_pagination_walks_every_post_once(world, http, posts):
    url, seen, pages = world.site_url + "/posts?page=1", [], 0
    while url:
        r = http.get(url)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        soup = BeautifulSoup(r.text, "html.parser")
        links = [a["href"] for a in soup.select("a.post-link")]
        assert 0 < len(links) <= PAGE_SIZE
        seen += links
        pages += 1
        nxt = soup.select_one('a[rel="next"]')
        url = world.site_url + nxt["href"] if nxt else None
    assert pages == math.ceil(len(posts) / PAGE_SIZE)
    assert len(seen) == len(set(seen)) == len(posts)
    visible = {p["post_id"] for p in posts if not p["hidden"]}
    hidden = {p["post_id"] for p in posts if p["hidden"]}
    assert {h.removeprefix("/post/") for h in seen if h.startswith("/post/")} == visible
    assert {h.removeprefix("/private/post/") for h in seen if h.startswith("/private/")} == hidden
    # newest first
    order = [h.rsplit("/", 1)[1] for h in seen]
    assert order == sorted(order, reverse=True)
    assert http.get(world.site_url + f"/posts?page={pages + 1}").status_code == 404
    assert http.get(world.site_url + "/posts?page=0").status_code in (400, 404)


def _parse_post(html_text: str) -> dict:
    art = BeautifulSoup(html_text, "html.parser").select_one("article.post[data-post-id]")
    mood = art.select_one("span.mood")
    return {
        "post_id": art["data-post-id"],
        "image_file": art.select_one("img.post-image")["src"].lstrip("/"),
        "title": art.select_one("span.song-title").get_text(),
        "artist": art.select_one("span.song-artist").get_text(),
        "album": art.select_one("span.song-album").get_text(),
        "duration": int(art.select_one("span.song-duration").get_text()),
        "mood": mood.get_text() if mood else None,
        "favorite_count": int(art.select_one("span.favorites").get_text()),
    }


def test_post_pages_match_posts_jsonl(world, http, posts):
    sample = [p for p in posts if p["hidden"]][:3] + [p for p in posts if p["mood"]][:10] + posts[::17]
    for p in sample:
        url = world.site_url + ("/private/post/" if p["hidden"] else "/post/") + p["post_id"]
        r = http.get(url)
        assert r.status_code == 200 and "ETag" in r.headers
        got = _parse_post(r.text)
        assert got == {k: p[k] for k in got}


def test_not_found(world, http, posts):
    visible = next(p for p in posts if not p["hidden"])
    hidden = next(p for p in posts if p["hidden"])
    for path in ("/post/p999999", f"/post/{hidden['post_id']}", f"/private/post/{visible['post_id']}",
                 "/images/p999999.jpg", "/images/..%2Fposts.jsonl", "/nothing"):
        assert http.get(world.site_url + path).status_code == 404, path


def test_image_and_conditional_requests(world, http, posts):
    url = world.site_url + "/" + posts[5]["image_file"]
    r = http.get(url)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.content)) as im:
        im.verify()
        assert im.format == "JPEG"
    etag, last_modified = r.headers["ETag"], r.headers["Last-Modified"]
    r2 = http.get(url, headers={"If-None-Match": etag})
    assert r2.status_code == 304 and not r2.content and r2.headers["ETag"] == etag
    assert http.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    assert http.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200
    page = http.get(world.site_url + "/posts?page=2")
    assert http.get(world.site_url + "/posts?page=2", headers={"If-None-Match": page.headers["ETag"]}).status_code == 304


def test_text_is_escaped(tmp_path, http):
    post = {"post_id": "p000001", "image_file": "images/p000001.jpg", "title": 'Rock <b>&</b> "Roll"',
            "artist": "A&B <script>", "album": "X > Y", "duration": 200, "mood": "<happy>",
            "favorite_count": 3, "hidden": False}
    (tmp_path / "posts.jsonl").write_text(json.dumps(post) + "\n", encoding="utf-8")
    (tmp_path / "lyrics.jsonl").write_text("", encoding="utf-8")
    with DemoWorld(tmp_path) as w:
        r = http.get(w.site_url + "/post/p000001")
        assert "<script>" not in r.text and "<b>" not in r.text
        got = _parse_post(r.text)
        assert got == {k: post[k] for k in got}
        assert http.get(w.site_url + "/posts?page=2").status_code == 404
        url = w.site_url
    with pytest.raises(requests.ConnectionError):
        http.get(url + "/robots.txt", timeout=2)


# --------------------------------------------------------------------------------------------- lyric API
def _song_record(truth, records, kind="ok"):
    by_id = {r["id"]: r for r in records}
    s = next(s for s in truth["songs"].values() if s["kind"] == kind)
    return s, by_id[s["lyric_id"]]


def test_lyrics_get(world, http, truth, records):
    s, rec = _song_record(truth, records)
    api = world.lyrics_url + "/api/get"
    r = http.get(api, params={"track_name": s["title"].upper(), "artist_name": s["artist"].lower(),
                              "album_name": s["album"], "duration": s["duration"]})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.json() == rec
    assert http.get(api, params={"track_name": s["title"], "artist_name": s["artist"],
                                 "duration": rec["duration"] + 2}).status_code == 200
    r = http.get(api, params={"track_name": s["title"], "artist_name": s["artist"], "duration": rec["duration"] + 3})
    assert r.status_code == 404
    missing = next(m for m in truth["songs"].values() if m["kind"] == "missing")
    r = http.get(api, params={"track_name": missing["title"], "artist_name": missing["artist"]})
    assert r.status_code == 404
    assert r.json() == {"code": 404, "name": "TrackNotFound", "message": "Failed to find specified track"}
    r = http.get(api, params={"track_name": s["title"]})
    assert r.status_code == 400 and r.json()["code"] == 400
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert http.get(f"{world.lyrics_url}/api/get/{rec['id']}").json() == rec
    assert http.get(f"{world.lyrics_url}/api/get/{max(x['id'] for x in records) + 1}").status_code == 404


def test_lyrics_search(world, http, truth, records):
    s, rec = _song_record(truth, records)
    api = world.lyrics_url + "/api/search"
    r = http.get(api, params={"q": f"{s['title']} {s['artist']}"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json; charset=utf-8"
    found = r.json()
    assert isinstance(found, list) and 0 < len(found) <= 20 and found[0] == rec
    found = http.get(api, params={"track_name": s["title"], "artist_name": s["artist"]}).json()
    assert found[0] == rec
    assert len(http.get(api, params={"q": "the love of my life you"}).json()) <= 20
    assert http.get(api, params={"q": "zzqxv wqpzz"}).json() == []
    assert http.get(api).status_code == 400
    # non-ASCII lyrics come back intact
    ne, ne_rec = _song_record(truth, records, "non_english")
    assert http.get(f"{world.lyrics_url}/api/get/{ne_rec['id']}").json()["plainLyrics"] == ne_rec["plainLyrics"]


def test_build_does_not_depend_on_hash_seed(tmp_path):
    """Same seed in another process with another PYTHONHASHSEED: the same files (no use of hash())."""
    import os
    import subprocess
    import sys

    code = ("import sys; from image2song.demo import build_corpus; "
            "build_corpus(sys.argv[1], seed=5, n_posts=80, progress=False, write_images=False)")
    for name, hs in (("a", "1"), ("b", "2")):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True, env=env,
                       cwd=Path(__file__).resolve().parents[1])
    for name in ("posts.jsonl", "lyrics.jsonl", "truth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
