"""A crawl that no page can stop or stall, against loopback sites that misbehave (issue 14): bounded list
walks, posts fetched while the walk goes on, bad values kept as data on both catalogs, a retry budget,
no local file from crawled content, robots.txt unavailability that decides nothing."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from crawlers.http import LOOPBACK, PoliteClient
from crawlers.sharing_site import HtmlSiteSource, parse_post_page
from crawlers.sources import ParseError, crawl_posts, parse_count
from curation.catalog import CrawlUrl, Image, Post, session_scope
from curation.crawl_store import CatalogCrawlState, ensure_source
from test_crawlers import MemoryState

UA = "image2song-tests/0 (+tests@example.invalid)"


def client(**kwargs) -> PoliteClient:
    return PoliteClient(UA, **{"backoff": 0.01, "allow": LOOPBACK, "retries": 0, **kwargs})


def post_html(i, *, title=None, favorites="1", extra="", charset_meta="") -> bytes:
    return (f"<html><head>{charset_meta}</head><body><article class='post' data-post-id='p{i}'>"
            f"<img class='post-image' src='/img/{i}.jpg'><span class='song-title'>{title or f'Song {i}'}</span>"
            f"<span class='song-artist'>Artist</span><span class='favorites'>{favorites}</span></article>{extra}"
            "</body></html>").encode()


def serve_posts(routes, ids, delay=0.0):
    for i in ids:
        routes[f"/post/p{i}"] = lambda h, i=i: (time.sleep(delay), h.reply(200, post_html(i)))


# --- bounded walks ----------------------------------------------------------------------------------

def test_a_pagination_cycle_is_walked_once(http_server):
    base, routes = http_server

    def page(h):
        n = int(h.path.split("page=")[1])
        nxt = n % 3 + 1  # 1 → 2 → 3 → 1
        h.reply(200, f"<html><body><a class='post-link' href='/post/p{n}'>p</a>"
                     f"<a rel='next' href='/posts?page={nxt}'>next</a></body></html>".encode())

    routes["/posts"] = page
    serve_posts(routes, [1, 2, 3])
    result = crawl_posts(HtmlSiteSource(base), client(), MemoryState())
    assert routes.hits["/posts"] == 3 and result["new_posts"] == 3


def test_an_endless_list_is_bounded_and_posts_are_fetched_while_it_is_walked(http_server):
    base, routes = http_server
    stamps = {"list": [], "post": []}

    def page(h):
        stamps["list"].append(time.monotonic())
        n = int(h.path.split("page=")[1])
        time.sleep(0.02)
        h.reply(200, f"<html><body><a class='post-link' href='/post/p{n}'>p</a>"
                     f"<a rel='next' href='/posts?page={n + 1}'>next</a></body></html>".encode())

    routes["/posts"] = page
    for i in range(1, 100):
        routes[f"/post/p{i}"] = lambda h, i=i: (stamps["post"].append(time.monotonic()), h.reply(200, post_html(i)))
    result = crawl_posts(HtmlSiteSource(base), client(), MemoryState(), max_pages=25)
    assert routes.hits["/posts"] == 25 and result["new_posts"] == 25
    assert min(stamps["post"]) < max(stamps["list"]), "no post page was fetched until the list walk ended"
    routes.hits.clear()
    crawl_posts(HtmlSiteSource(base), client(), MemoryState(), max_depth=4)
    assert routes.hits["/posts"] == 5  # the start page and four hops


# --- bad values are data ----------------------------------------------------------------------------

@pytest.mark.parametrize("shown, count", [("1204", 1204), ("1,204", 1204), ("1 204", 1204), ("1.2k", 1200),
                                          ("3M", 3_000_000), ("0", 0)])
def test_counts_as_sites_show_them(shown, count):
    assert parse_count(shown) == count


@pytest.mark.parametrize("shown", ["-5", "²", "12345678901234567890", "1.5", "many", "٣", "1e9", ""])
def test_bad_counts_are_refused(shown):
    with pytest.raises(ValueError):
        parse_count(shown)


def test_exactly_one_post_per_post_page():
    with pytest.raises(ParseError, match="2 article.post"):
        parse_post_page(post_html(1, extra="<article class='post' data-post-id='decoy'></article>").decode(),
                        "http://site/post/p1")


def test_odd_values_never_stop_the_stage_and_are_kept_on_the_record(http_server, db_url):
    """Each page one odd value; every one is stored on its record (the post kept when only an optional
    field was bad), the stage returns its counts, and a re-run does not crash either."""
    base, routes = http_server
    pages = {
        "huge": post_html(1, favorites="12345678901234567890"),
        "super": post_html(2, favorites="²"),
        "kilo": post_html(3, favorites="1.2k"),
        "negative": post_html(4, favorites="-5"),
        "long": post_html(5, title="T" * 5000),
        "nul": post_html(6, title="Bad\x00Title\x07"),
        "decoy": post_html(7, extra="<article class='post' data-post-id='decoy'></article>"),
        "latin": "<html><head><meta charset='iso-8859-1'></head><body><article class='post' data-post-id='p8'>"
                 "<img class='post-image' src='/i.jpg'><span class='song-title'>Café Déjà Vu</span>"
                 "<span class='song-artist'>Zoë</span></article></body></html>".encode("latin-1"),
        "longid": post_html(9).replace(b"data-post-id='p9'", b"data-post-id='" + b"x" * 300 + b"'"),
        "file": post_html(10).replace(b"src='/img/10.jpg'", b"src='file:///etc/passwd'"),
    }
    links = "".join(f"<a class='post-link' href='/post/{name}'>x</a>" for name in pages)
    routes["/posts"] = lambda h: h.reply(200, f"<html><body>{links}</body></html>".encode())
    for name, body in pages.items():
        content_type = "text/html; charset=no-such-charset" if name == "super" else "text/html"
        routes[f"/post/{name}"] = lambda h, body=body, ct=content_type: h.reply(200, body, ct)
    state = CatalogCrawlState(db_url, ensure_source(db_url, "odd", "html_site", base))
    result = crawl_posts(HtmlSiteSource(base), client(), state)
    assert (result["attempted"], result["failed"]) == (10, 3)
    assert {url.rsplit("/", 1)[1] for url, _ in result["failures"]} == {"decoy", "longid", "file"}
    with session_scope(db_url) as session:
        posts = {p.external_id: p for p in session.scalars(select(Post))}
        urls = {u.url.rsplit("/", 1)[1]: u for u in session.scalars(select(CrawlUrl).where(CrawlUrl.kind == "post"))}
        assert {k: posts[k].favorite_count for k in ("p1", "p2", "p3", "p4")} == {"p1": 0, "p2": 0, "p3": 1200, "p4": 0}
        assert "favorites dropped" in urls["huge"].error and "favorites dropped" in urls["negative"].error
        assert urls["huge"].status == "done"
        assert len(posts["p5"].song.title) == 500 and "title cut" in urls["long"].error
        assert posts["p6"].song.title == "BadTitle"
        assert (posts["p8"].song.title, posts["p8"].song.artist) == ("Café Déjà Vu", "Zoë")
        assert urls["decoy"].status == "error" and "2 article.post" in urls["decoy"].error
        assert urls["file"].status == "error" and "not an http(s) URL" in urls["file"].error
        assert "more than 200" in urls["longid"].error
    again = crawl_posts(HtmlSiteSource(base), client(), state)  # the three errors are tried again, calmly
    assert (again["attempted"], again["failed"]) == (3, 3)


def test_a_page_cut_short_without_a_length_is_not_stored_with_empty_fields(http_server):
    base, routes = http_server
    whole = post_html(1)

    def cut(h):  # no Content-Length, no chunking: the body ends when the connection closes
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(whole[:whole.index(b"<span class='song-artist'>") + 40])
        h.close_connection = True

    routes["/posts"] = lambda h: h.reply(200, b"<html><body><a class='post-link' href='/post/p1'>x</a></body></html>")
    routes["/post/p1"] = cut
    state = MemoryState()
    result = crawl_posts(HtmlSiteSource(base), client(), state)
    assert result["failed"] == 1 and not state.posts
    assert "cut short" in state.urls[base + "/post/p1"]["error"]


def test_a_failing_page_spends_its_retry_budget_then_fails_for_good(http_server, db_url):
    base, routes = http_server
    routes["/posts"] = lambda h: h.reply(200, b"<html><body><a class='post-link' href='/post/bad'>x</a></body></html>")
    routes["/post/bad"] = lambda h: h.reply(500, b"oops")
    state = CatalogCrawlState(db_url, ensure_source(db_url, "site", "html_site", base))
    for _ in range(4):
        crawl_posts(HtmlSiteSource(base), client(), state)
    assert routes.hits["/post/bad"] == 3
    with session_scope(db_url) as session:
        row = session.scalar(select(CrawlUrl).where(CrawlUrl.url == base + "/post/bad"))
        assert (row.status, row.attempts) == ("failed", 3) and "HTTP 500" in row.error


def test_a_refused_batch_is_written_record_by_record():
    """The catalog refusing one record (whatever the reason) costs that record only."""
    from crawlers.sources import _Recorder, outcome

    class Picky(MemoryState):
        def record_many(self, outcomes, posts=()):
            if any("poison" in o["url"] for o in outcomes) and any(o["status"] == "done" for o in outcomes):
                raise RuntimeError("value too long for type character varying(100)")
            return super().record_many(outcomes, posts)

    state = Picky()
    recorder = _Recorder(state, batch_size=10, flush_seconds=60)
    for name in ("a", "poison", "b"):
        recorder.add(outcome(f"http://s/{name}", "done"), None)
    recorder.flush()
    assert state.urls["http://s/a"]["status"] == state.urls["http://s/b"]["status"] == "done"
    assert state.urls["http://s/poison"]["status"] == "error" and "varying(100)" in state.urls["http://s/poison"]["error"]
    assert recorder.counts["failed"] == 1


# --- local files and robots.txt in the image stage ----------------------------------------------------

def jpeg() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 32), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_image_urls_never_read_local_files_outside_an_import(tmp_path):
    from crawlers.image_pipeline import fetch_images
    from curation.object_store import ObjectStore

    imports = tmp_path / "import"
    imports.mkdir()
    (imports / "ok.jpg").write_bytes(jpeg())
    (tmp_path / "outside.jpg").write_bytes(jpeg())
    tasks = [(1, "file:///etc/passwd"), (2, "file:///dev/zero"), (3, (imports / "ok.jpg").as_uri()),
             (4, (imports / ".." / "outside.jpg").as_uri().replace("%2E", ".")), (5, (tmp_path / "outside.jpg").as_uri())]
    records = []
    fetch_images(tasks, client=client(), store_factory=lambda: ObjectStore(str(tmp_path / "store")),
                 sink=records.extend, processes=0, local_roots=[imports])
    by_id = {r.image_id: r for r in records}
    assert by_id[3].status == "stored"
    for refused in (1, 2, 4, 5):
        assert by_id[refused].status == "rejected" and "Refused" in by_id[refused].error
        assert "root:" not in by_id[refused].error  # nothing of the file was read
    records.clear()
    fetch_images([(3, (imports / "ok.jpg").as_uri())], client=client(), sink=records.extend, processes=0,
                 store_factory=lambda: ObjectStore(str(tmp_path / "store")))  # no import: no local file at all
    assert records[0].status == "rejected"


def test_images_seen_while_robots_txt_is_down_stay_pending(http_server, db_url, tmp_path):
    """robots.txt answering 503 decides nothing: the images are not marked disallowed, they are fetched
    by the run after it recovers."""
    from crawlers.image_pipeline import fetch_images
    from curation.crawl_store import image_tasks, record_images
    from curation.object_store import ObjectStore

    base, routes = http_server
    robots = {"status": 503}
    routes["/robots.txt"] = lambda h: h.reply(robots["status"], b"User-agent: *\nDisallow:\n", "text/plain")
    routes["/a.jpg"] = lambda h: h.reply(200, jpeg(), "image/jpeg")
    with session_scope(db_url) as session:
        session.add(Image(url=base + "/a.jpg", status="pending", attempts=0))
    run = dict(store_factory=lambda: ObjectStore(str(tmp_path)), processes=0,
               sink=lambda results: record_images(db_url, results))
    counts = fetch_images(image_tasks(db_url), client=client(), **run)
    assert counts["deferred"] == 1 and routes.hits.get("/a.jpg") is None
    assert len(image_tasks(db_url)) == 1  # still pending, no attempt spent
    robots["status"] = 200
    assert fetch_images(image_tasks(db_url), client=client(), **run)["stored"] == 1
