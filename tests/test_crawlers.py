"""The HTTP layer, the sharing-site parser and image validation, against real loopback servers."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from crawlers.http import Disallowed, FetchError, PoliteClient
from crawlers.images import BadImage, fetch_image, validate_image
from crawlers.lyrics import LrclibProvider, normalize
from crawlers.sharing_site import ParseError, parse_list_page, parse_post_page

UA = "image2song-tests/0 (contact: tests@example.invalid)"


def client(**kwargs) -> PoliteClient:
    return PoliteClient(UA, backoff=0.01, **kwargs)


def jpeg(size=(32, 32), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def test_robots_disallowed_url_is_never_requested(http_server):
    base, routes = http_server
    routes["/private/secret"] = lambda h: h.reply(200, b"secret")
    with pytest.raises(Disallowed):
        client().get(base + "/private/secret")
    assert routes.hits.get("/private/secret") is None


def test_user_agent_is_sent(http_server):
    base, routes = http_server
    seen = []
    routes["/ua"] = lambda h: (seen.append(h.headers["User-Agent"]), h.reply(200, b"ok"))
    client().get(base + "/ua")
    assert seen == [UA]


def test_503_with_retry_after_is_retried_then_succeeds(http_server):
    base, routes = http_server
    calls = []

    def flaky(h):
        calls.append(time.monotonic())
        if len(calls) < 3:
            h.reply(503, b"busy", headers={"Retry-After": "0.2"})
        else:
            h.reply(200, b"fine")

    routes["/flaky"] = flaky
    assert client(retries=3).get(base + "/flaky").content == b"fine"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.19, "Retry-After was not honoured"


def test_persistent_500_fails_after_bounded_retries(http_server):
    base, routes = http_server
    routes["/down"] = lambda h: h.reply(500, b"oops")
    with pytest.raises(FetchError, match="HTTP 500"):
        client(retries=2).get(base + "/down")
    assert routes.hits["/down"] == 3


def test_404_is_returned_without_retry(http_server):
    base, routes = http_server
    assert client().get(base + "/missing").status == 404
    assert routes.hits["/missing"] == 1


def test_oversized_body_is_refused(http_server):
    base, routes = http_server
    routes["/big"] = lambda h: h.reply(200, b"x" * 5000)
    with pytest.raises(FetchError, match="exceeds the cap"):
        client(max_bytes=1000).get(base + "/big")


def test_truncated_body_is_an_error(http_server):
    base, routes = http_server

    def truncated(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"only a little")
        h.close_connection = True

    routes["/truncated"] = truncated
    with pytest.raises(FetchError):
        client(retries=0).get(base + "/truncated")


def test_redirect_loop_is_stopped(http_server):
    base, routes = http_server
    routes["/a"] = lambda h: h.reply(302, headers={"Location": "/b"})
    routes["/b"] = lambda h: h.reply(302, headers={"Location": "/a"})
    with pytest.raises(FetchError, match="redirects"):
        client().get(base + "/a")


def test_slow_response_times_out(http_server):
    base, routes = http_server
    routes["/slow"] = lambda h: (time.sleep(1.0), h.reply(200, b"late"))
    with pytest.raises(FetchError, match="Timeout"):
        client(read_timeout=0.2, retries=1).get(base + "/slow")


def test_conditional_request_gets_304(http_server):
    base, routes = http_server

    def page(h):
        if h.headers.get("If-None-Match") == '"v1"':
            h.reply(304)
        else:
            h.reply(200, b"<html></html>", headers={"ETag": '"v1"'})

    routes["/page"] = page
    first = client().get(base + "/page")
    assert first.status == 200 and first.headers["etag"] == '"v1"'
    assert client().get(base + "/page", etag='"v1"').not_modified


LIST_PAGE = """<html><body><a class="post-link" href="/post/p1">1</a><a class="post-link" href="/post/p2">2</a>
<a rel="next" href="/posts?page=2">Next</a></body></html>"""
POST_PAGE = """<html><body><article class="post" data-post-id="p1"><img class="post-image" src="/images/p1.jpg">
<span class="song-title">Blue &amp; Gold</span><span class="song-artist">The Tides</span>
<span class="song-album">Shore</span><span class="song-duration">215</span><span class="favorites">1,204</span>
</article></body></html>"""


def test_list_page_gives_post_links_and_next_page():
    links, next_url = parse_list_page(LIST_PAGE, "http://site/posts?page=1")
    assert links == ["http://site/post/p1", "http://site/post/p2"]
    assert next_url == "http://site/posts?page=2"


def test_post_page_fields():
    post = parse_post_page(POST_PAGE, "http://site/post/p1")
    assert (post.external_id, post.title, post.artist, post.duration, post.favorite_count, post.mood) == \
        ("p1", "Blue & Gold", "The Tides", 215, 1204, None)
    assert post.image_url == "http://site/images/p1.jpg"


def test_changed_layout_is_a_clear_parse_error():
    with pytest.raises(ParseError, match="layout changed"):
        parse_post_page("<html><body><div class='new-post'>…</div></body></html>", "http://site/post/p9")
    broken = POST_PAGE.replace('<span class="song-title">Blue &amp; Gold</span>', "")
    with pytest.raises(ParseError, match="song-title"):
        parse_post_page(broken, "http://site/post/p1")


def test_image_validation_accepts_a_real_jpeg():
    image = validate_image(jpeg(), declared_type="image/jpeg")
    assert (image.width, image.height, image.content_type) == (32, 32, "image/jpeg")
    assert len(image.sha256) == 64 and len(image.phash) == 16


@pytest.mark.parametrize("data, declared, reason", [
    (b"<html>not an image</html>", "text/html", "not an image"),
    (jpeg()[:200], "image/jpeg", "broken image"),
    (jpeg(), "text/html", "not an image"),
])
def test_bad_images_are_refused_with_a_reason(data, declared, reason):
    with pytest.raises(BadImage, match=reason):
        validate_image(data, declared_type=declared)


def test_decompression_bomb_is_refused():
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, "PNG")  # 64 Mpx, a few KB on disk
    with pytest.raises(BadImage, match="decompression bomb"):
        validate_image(buffer.getvalue(), declared_type="image/png")


def test_fetch_image_over_http(http_server):
    base, routes = http_server
    routes["/images/a.jpg"] = lambda h: h.reply(200, jpeg(), "image/jpeg")
    routes["/images/b.jpg"] = lambda h: h.reply(200, b"<html>", "image/jpeg")
    assert fetch_image(client(), base + "/images/a.jpg").content_type == "image/jpeg"
    with pytest.raises(BadImage):
        fetch_image(client(), base + "/images/b.jpg")


def test_normalize_strips_extras():
    assert normalize("Héllo World (Remastered 2011)") == "hello world"
    assert normalize("Song - Live at Wembley") == "song"
    assert normalize("Track feat. Somebody") == "track"
    assert normalize("  Rock & Roll!  ") == "rock roll"


def test_lrclib_client_exact_then_search(http_server):
    import json

    base, routes = http_server
    track = {"id": 7, "trackName": "blue gold", "artistName": "the tides", "albumName": "Shore",
             "duration": 216.0, "instrumental": False, "plainLyrics": "la la", "syncedLyrics": None}
    routes["/api/get"] = lambda h: h.reply(404, b'{"code":404}', "application/json")
    routes["/api/search"] = lambda h: h.reply(200, json.dumps([track]).encode(), "application/json")
    hit = LrclibProvider(base, client()).find("Blue & Gold (Live)", "The Tides", "Shore", 215)
    assert hit is not None and hit.plain == "la la" and hit.score > 0.9 and "fuzzy" in hit.reason
    # A duration 10 s away is not the same recording.
    assert LrclibProvider(base, client()).find("Blue & Gold", "The Tides", None, 205) is None


def test_lrclib_client_refuses_non_json(http_server):
    base, routes = http_server
    routes["/api/get"] = lambda h: h.reply(200, b"<html>maintenance</html>", "text/html")
    with pytest.raises(FetchError, match="not JSON"):
        LrclibProvider(base, client()).find("a", "b")


def test_unreachable_host_is_an_error_not_an_empty_crawl():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchError, match="unreachable"):
        client(connect_timeout=0.5).get(f"http://127.0.0.1:{port}/posts")
