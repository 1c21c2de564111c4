"""Serve a demo corpus over real HTTP on loopback: a sharing site and an LRCLIB-compatible lyric API.

The sharing site (a crawler is written against this contract):

* ``GET /robots.txt`` -> ``User-agent: *`` / ``Disallow: /private/``
* ``GET /`` -> 302 to ``/posts?page=1``
* ``GET /posts?page=N`` (N from 1): newest first, ``page_size`` posts per page, each as
  ``<a class="post-link" href="/post/p000123">`` (hidden posts: ``/private/post/<id>``), and
  ``<a rel="next" href="/posts?page=N+1">`` only when there is a next page; a page past the end is 404.
* ``GET /post/<id>`` (``/private/post/<id>`` for hidden posts): ``<article class="post" data-post-id=...>``
  holding ``img.post-image``, ``span.song-title``, ``span.song-artist``, ``span.song-album``,
  ``span.song-duration`` (seconds), ``span.mood`` (only when set) and ``span.favorites``.
* ``GET /images/<post_id>.jpg``: the JPEG with ``ETag`` and ``Last-Modified``; ``If-None-Match`` and
  ``If-Modified-Since`` answer 304. Pages send an ``ETag`` too (and honour ``If-None-Match``).

The lyric API (field names as https://lrclib.net/docs):

* ``GET /api/get?track_name=&artist_name=[&album_name=][&duration=]``: case-insensitive exact match on
  track and artist; with a duration, only records within +-2 s (the closest wins). 404
  ``{"code": 404, "name": "TrackNotFound", ...}``; 400 when track_name or artist_name is missing.
* ``GET /api/get/<id>``: one record or 404.
* ``GET /api/search?q=`` or ``?track_name=[&artist_name=][&album_name=]``: up to 20 records ranked by word
  overlap with the query; ``[]`` when nothing matches.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import socket
import threading
import time
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
SEARCH_LIMIT = 20
DURATION_TOLERANCE = 2.0
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9_-]+\.jpg$")
_POST_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def _tokens(text: str | None) -> set[str]:
    return {t.casefold() for t in _TOKEN.findall(text or "")}


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha1(data).hexdigest()[:20] + '"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip() for t in header.split(",")]
    return any(t.removeprefix("W/") == etag for t in tags)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "image2song-demo/1.0"
    world: "DemoWorld"  # set on the subclass

    timeout = 60  # drop idle keep-alive connections

    def setup(self):
        super().setup()
        try:  # headers and body go out in separate writes: without this, Nagle + delayed ACK cost 40 ms each
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        with self.world._lock:
            self.world._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.world._lock:
                self.world._connections.discard(self.connection)

    def log_message(self, format, *args):  # noqa: A002 - quiet: no per-request stderr
        log.debug("%s %s", self.address_string(), format % args)

    # -- responses
    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None,
              head_only: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head_only and self.command != "HEAD":
            self.wfile.write(body)

    def _not_modified(self, headers: dict) -> None:
        self.send_response(HTTPStatus.NOT_MODIFIED)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            self.route(url.path, query)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def route(self, path: str, query: dict) -> None:
        raise NotImplementedError


class _SiteHandler(_Handler):
    def _html(self, status: int, body: str) -> None:
        data = body.encode("utf-8")
        etag = _etag(data)
        if status == 200 and _etag_matches(self.headers.get("If-None-Match"), etag):
            return self._not_modified({"ETag": etag})
        self._send(status, data, "text/html; charset=utf-8", {"ETag": etag} if status == 200 else None)

    def _not_found(self, what: str = "Not found") -> None:
        self._html(404, _page("Not found", f"<h1>404</h1><p>{html.escape(what)}</p>"))

    def route(self, path: str, query: dict) -> None:
        w = self.world
        if path == "/robots.txt":
            return self._send(200, ROBOTS_TXT.encode(), "text/plain; charset=utf-8")
        if path in ("/", "/posts/"):
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/posts?page=1")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if path == "/posts":
            raw = (query.get("page") or ["1"])[0]
            if not raw.isdigit() or int(raw) < 1:
                return self._html(400, _page("Bad request", "<p>page must be a whole number from 1</p>"))
            body = w._list_page(int(raw))
            return self._not_found("no such page") if body is None else self._html(200, body)
        m = re.fullmatch(r"/(private/)?post/([^/]+)", path)
        if m:
            post = w._posts_by_id.get(m.group(2)) if _POST_ID.match(m.group(2)) else None
            if post is None or bool(m.group(1)) != bool(post["hidden"]):
                return self._not_found("no such post")
            return self._html(200, w._post_page(post))
        m = re.fullmatch(r"/images/([^/]+)", path)
        if m:
            return self._image(m.group(1))
        return self._not_found()

    def _image(self, name: str) -> None:
        w = self.world
        if not _IMAGE_NAME.match(name) or name not in w._image_names:
            return self._not_found("no such image")
        path = w.images_dir / name
        try:
            data, etag, mtime = w._image(path)
        except FileNotFoundError:
            return self._not_found("no such image")
        headers = {"ETag": etag, "Last-Modified": formatdate(mtime, usegmt=True), "Cache-Control": "max-age=3600"}
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            if _etag_matches(inm, etag):
                return self._not_modified(headers)
        elif self.headers.get("If-Modified-Since"):
            try:
                since = parsedate_to_datetime(self.headers["If-Modified-Since"]).timestamp()
            except (TypeError, ValueError, IndexError):
                since = None
            if since is not None and int(mtime) <= since:
                return self._not_modified(headers)
        self._send(200, data, "image/jpeg", headers)


class _LyricsHandler(_Handler):
    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, name: str, message: str) -> None:
        self._json(status, {"code": status, "name": name, "message": message})

    def route(self, path: str, query: dict) -> None:
        w = self.world
        q = {k: v[0].strip() for k, v in query.items() if v}
        if path == "/api/get":
            track, artist = q.get("track_name", ""), q.get("artist_name", "")
            if not track or not artist:
                return self._error(400, "ValidationError", "track_name and artist_name are required")
            duration = None
            if q.get("duration"):
                try:
                    duration = float(q["duration"])
                except ValueError:
                    return self._error(400, "ValidationError", "duration must be a number of seconds")
            rec = w._lookup(track, artist, duration)
            if rec is None:
                return self._error(404, "TrackNotFound", "Failed to find specified track")
            return self._json(200, rec)
        m = re.fullmatch(r"/api/get/(\d+)", path)
        if m:
            rec = w._records_by_id.get(int(m.group(1)))
            if rec is None:
                return self._error(404, "TrackNotFound", "Failed to find specified track")
            return self._json(200, rec)
        if path == "/api/search":
            if not q.get("q") and not q.get("track_name"):
                return self._error(400, "ValidationError", "q or track_name is required")
            return self._json(200, w._search(q))
        return self._error(404, "NotFound", "No such endpoint")


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


class DemoWorld:
    """Serve a corpus folder (from ``build_corpus``): a sharing site and a lyric API, each on its own port.

    Use as a context manager, or ``start()``/``stop()``; ``serve_forever()`` blocks until Ctrl-C.
    """

    def __init__(self, corpus_dir, host: str = "127.0.0.1", site_port: int = 0, lyrics_port: int = 0,
                 page_size: int = 20):
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.corpus_dir = Path(corpus_dir)
        self.images_dir = self.corpus_dir / "images"
        self.host, self.site_port, self.lyrics_port, self.page_size = host, site_port, lyrics_port, page_size
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._image_cache: dict = {}
        self._connections: set = set()
        self._lock = threading.Lock()

    # -- lifecycle
    def start(self) -> "DemoWorld":
        if self._servers:
            return self
        self._load()
        for handler_base, port in ((_SiteHandler, self.site_port), (_LyricsHandler, self.lyrics_port)):
            handler = type(handler_base.__name__, (handler_base,), {"world": self})
            server = ThreadingHTTPServer((self.host, port), handler)
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                      name=f"demo-{handler_base.__name__}", daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        log.info("demo site at %s, lyric API at %s", self.site_url, self.lyrics_url)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        with self._lock:  # close keep-alive connections too, so nothing answers after stop()
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> "DemoWorld":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        self.start()
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def _url(self, i: int) -> str:
        if not self._servers:
            raise RuntimeError("DemoWorld is not started")
        host, port = self._servers[i].server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    @property
    def site_url(self) -> str:
        return self._url(0)

    @property
    def lyrics_url(self) -> str:
        return self._url(1)

    # -- data
    def _load(self) -> None:
        posts_path, lyrics_path = self.corpus_dir / "posts.jsonl", self.corpus_dir / "lyrics.jsonl"
        for p in (posts_path, lyrics_path):
            if not p.exists():
                raise FileNotFoundError(f"{p} not found: build the corpus first (image2song.demo.build_corpus)")
        posts = [json.loads(ln) for ln in posts_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        # newest first: post ids grow with time
        self._posts = sorted(posts, key=lambda p: (p.get("created_at", ""), p["post_id"]), reverse=True)
        self._posts_by_id = {p["post_id"]: p for p in posts}
        self._image_names = {Path(p["image_file"]).name for p in posts}
        records = [json.loads(ln) for ln in lyrics_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        self._records = sorted(records, key=lambda r: r["id"])
        self._records_by_id = {r["id"]: r for r in records}
        self._by_name: dict[tuple[str, str], list[dict]] = {}
        for r in self._records:
            self._by_name.setdefault((r["trackName"].casefold(), r["artistName"].casefold()), []).append(r)
        self._record_tokens = [
            (r, _tokens(r["trackName"]), _tokens(r["artistName"]), _tokens(r.get("albumName"))) for r in self._records
        ]

    def _image(self, path: Path) -> tuple[bytes, str, float]:
        st = path.stat()
        key = (path.name, st.st_mtime_ns, st.st_size)
        hit = self._image_cache.get(path.name)
        if hit is None or hit[0] != key:
            data = path.read_bytes()
            hit = (key, data, _etag(data), st.st_mtime)
            with self._lock:
                if len(self._image_cache) > 4096:
                    self._image_cache.clear()
                self._image_cache[path.name] = hit
        return hit[1], hit[2], hit[3]

    # -- pages
    def _link(self, post: dict) -> str:
        return ("/private/post/" if post["hidden"] else "/post/") + post["post_id"]

    def _list_page(self, page: int) -> str | None:
        n_pages = max(1, -(-len(self._posts) // self.page_size))
        if page > n_pages:
            return None
        chunk = self._posts[(page - 1) * self.page_size: page * self.page_size]
        items = "\n".join(
            f'<li><a class="post-link" href="{html.escape(self._link(p))}">'
            f"{html.escape(p['title'])} \u2014 {html.escape(p['artist'])}</a></li>"
            for p in chunk
        )
        nav = []
        if page > 1:
            nav.append(f'<a rel="prev" href="/posts?page={page - 1}">Previous</a>')
        if page < n_pages:
            nav.append(f'<a rel="next" href="/posts?page={page + 1}">Next</a>')
        body = (
            f"<h1>Latest posts</h1>\n<p class=\"page\">Page {page} of {n_pages}</p>\n"
            f"<ul class=\"posts\">\n{items}\n</ul>\n<nav class=\"pagination\">{' '.join(nav)}</nav>"
        )
        return _page(f"Posts, page {page}", body)

    def _post_page(self, p: dict) -> str:
        e = html.escape
        mood = f'<p>Mood: <span class="mood">{e(p["mood"])}</span></p>\n' if p.get("mood") else ""
        album = p.get("album") or ""
        posted = p.get("created_at", "")
        body = (
            f'<article class="post" data-post-id="{e(p["post_id"])}">\n'
            f'<img class="post-image" src="/images/{e(Path(p["image_file"]).name)}" '
            f'alt="{e("Image shared with " + p["title"] + " by " + p["artist"])}">\n'
            f'<p class="song"><span class="song-title">{e(p["title"])}</span> by '
            f'<span class="song-artist">{e(p["artist"])}</span>, from '
            f'<span class="song-album">{e(album)}</span> '
            f'(<span class="song-duration">{int(p["duration"])}</span> s)</p>\n'
            f"{mood}"
            f'<p><span class="favorites">{int(p["favorite_count"])}</span> favorites</p>\n'
            + (f'<p>Posted <time class="posted" datetime="{e(posted)}">{e(posted)}</time></p>\n' if posted else "")
            + "</article>\n<p><a href=\"/posts?page=1\">All posts</a></p>"
        )
        return _page(f"{p['title']} \u2014 {p['artist']}", body)

    # -- lyric API
    def _lookup(self, track: str, artist: str, duration: float | None) -> dict | None:
        cands = self._by_name.get((track.casefold(), artist.casefold()), [])
        if duration is not None:
            cands = [r for r in cands if abs(float(r["duration"]) - duration) <= DURATION_TOLERANCE]
            cands.sort(key=lambda r: (abs(float(r["duration"]) - duration), r["id"]))
        return cands[0] if cands else None

    def _search(self, q: dict) -> list[dict]:
        scored = []
        if q.get("q"):
            words = _tokens(q["q"])
            for r, tt, at, alt in self._record_tokens:
                score = len(words & tt) * 2 + len(words & at) + 0.5 * len(words & alt)
                if score > 0:
                    scored.append((score, r))
        else:
            tw, aw, lw = _tokens(q.get("track_name")), _tokens(q.get("artist_name")), _tokens(q.get("album_name"))
            for r, tt, at, alt in self._record_tokens:
                t_hit = len(tw & tt)
                if t_hit == 0:
                    continue
                score = 2 * t_hit / max(len(tw | tt), 1) + len(aw & at) / max(len(aw | at), 1) + 0.5 * len(lw & alt)
                scored.append((score, r))
        scored.sort(key=lambda sr: (-sr[0], sr[1]["id"]))
        return [r for _, r in scored[:SEARCH_LIMIT]]
