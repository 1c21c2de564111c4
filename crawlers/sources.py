"""Post sources behind one small interface, and the driver that crawls any of them resumably.

A source does two things:

- ``walk(client, state, max_pages=…, max_depth=…)`` walks what lists posts (list pages, feed pages, a
  file), puts post URLs on the frontier (``state.add("post", …)``) and yields ``(new post URLs, new
  posts)`` as it goes: the URLs to fetch at once; a source whose listing already holds the whole post
  (a JSON feed, a file) records those posts right away through ``state.record_many`` and yields how many
  were new, with no URL to fetch. A walk is bounded: a seen-set of
  list pages (a pagination cycle ends), at most ``max_pages`` pages and ``max_depth`` hops from the start.
- ``fetch_one(client, url, validators)`` fetches one post URL and returns ``(outcome, post | None)``; an
  outcome is a dict ``{"url", "kind", "status", "http_status", "error", "etag", "last_modified"}`` with
  status done | error | disallowed | deferred (robots.txt unavailable: left pending, asked again later).

``crawl_posts`` drives a source as a frontier, not in phases: post pages are fetched while the list walk
goes on, and outcomes are written as they complete (not in order), a small batch per transaction
(``state.record_many``), so a crash at any moment leaves every URL either done with its post stored, or
still pending: nothing lost, nothing duplicated, and a slow page holds back no other page's result.

Every field is checked on the way in (``checked_post``): required text present, lengths within the
catalog's columns, integers in range; a bad optional field is dropped with a note on the record (the
post is kept), a bad required one fails the post with the reason.

Sources here: ``HtmlSiteSource`` (the sharing site, ``crawlers.sharing_site``), ``JsonFeedSource`` and
``FileImportSource`` (CSV or JSONL of posts, with image URLs or local paths: the only way a local file
enters the crawl).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol
from urllib.parse import urljoin, urlsplit

from crawlers.http import Disallowed, FetchError, PoliteClient, RobotsUnavailable
from crawlers.state import CrawlState
from crawlers.text import safe_text

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 2000  # per source and walk, unless the caller says otherwise
MAX_LIST_DEPTH = 2000  # hops from the start page
MAX_INT = 2**31 - 1  # the catalog's integer columns (PostgreSQL int4)
# The catalog's column sizes (curation/catalog/models.py), so that no value fails a write on PostgreSQL.
MAX_CHARS = {"external_id": 200, "url": 2000, "image_url": 2000, "mood": 100, "title": 500, "artist": 500,
             "album": 500, "posted_at": 64, "etag": 400, "last_modified": 100, "error": 2000}
MAX_FAILURES = 10  # (key, reason) pairs a stage reports


class ParseError(ValueError):
    """A page or row that does not hold what it should (the layout changed, a field is missing…)."""


@dataclass(frozen=True)
class PostRecord:
    external_id: str
    url: str
    image_url: str  # http(s) URL, or file:// URI of a local image (file import only)
    title: str
    artist: str
    album: str | None
    duration: int | None
    mood: str | None
    favorite_count: int
    posted_at: str | None = None  # the site's time of the post (ISO 8601), when it shows one
    notes: str | None = None  # optional fields dropped or cut on the way in, and why


class PostSource(Protocol):
    kind: str  # html_site | json_feed | file_import
    base_url: str

    def walk(self, client: PoliteClient, state: CrawlState, *, max_pages: int | None = None,
             max_depth: int | None = None) -> Iterator[tuple[list[str], int]]:
        """Put the source's post URLs on the frontier (or record whole posts); yields (new post URLs to
        fetch, new posts recorded)."""

    def fetch_one(self, client: PoliteClient, url: str,
                  validators: tuple[str | None, str | None]) -> tuple[dict, PostRecord | None]:
        """Fetch one post URL: (outcome, post or None); never raises for a bad page."""


def outcome(url: str, status: str, *, kind: str = "post", http_status: int | None = None, error: str | None = None,
            etag: str | None = None, last_modified: str | None = None) -> dict:
    def fit(value, name):
        return safe_text(value, MAX_CHARS[name])[0] if value is not None else None

    if etag is not None and len(etag) > MAX_CHARS["etag"]:
        etag = None  # a cut validator would never match: better none
    if last_modified is not None and len(last_modified) > MAX_CHARS["last_modified"]:
        last_modified = None
    return {"url": url, "kind": kind, "status": status, "http_status": http_status, "error": fit(error, "error"),
            "etag": fit(etag, "etag"), "last_modified": fit(last_modified, "last_modified")}


# --- checking values -------------------------------------------------------------------------------

_COUNT = re.compile(r"^\s*(\d{1,3}(?:[ ,.\u00a0\u202f]\d{3})+|\d+(?:\.\d+)?)\s*([kKmM]?)\s*$", re.ASCII)
_CLOCK = re.compile(r"^\s*(?:(\d{1,2}):)?(\d{1,2}):(\d{2})\s*$", re.ASCII)


def parse_count(value: str) -> int:
    """A non-negative whole count as sites show it: "1204", "1,204", "1 204", "1.2k", "3M"; raises
    ValueError for anything else (negative, other digits than 0-9, beyond the catalog's integers)."""
    found = _COUNT.match(value)
    if not found:
        raise ValueError(f"{value!r} is not a count")
    number, suffix = found.groups()
    if suffix:
        amount = float(number.replace(",", "").replace(" ", "")) * (1000 if suffix in "kK" else 1_000_000)
    elif re.search(r"[ ,.\u00a0\u202f]\d{3}", number):
        amount = int(re.sub(r"\D", "", number))
    elif "." in number:
        raise ValueError(f"{value!r} is not a whole count")
    else:
        amount = int(number)
    if amount > MAX_INT:
        raise ValueError(f"{value!r} is beyond {MAX_INT}")
    return int(amount)


def parse_duration(value: str) -> int:
    """Seconds, from "215" or "3:35" or "1:02:03"; raises ValueError otherwise or beyond a day."""
    clock = _CLOCK.match(value)
    if clock:
        hours, minutes, seconds = (int(part or 0) for part in clock.groups())
        total = hours * 3600 + minutes * 60 + seconds
    else:
        total = parse_count(value)
    if total > 86400:
        raise ValueError(f"{value!r} is longer than a day")
    return total


def checked_post(*, where: str, external_id, url, image_url, title, artist, album=None, duration=None, mood=None,
                 favorites=None, posted_at=None, local_image: bool = False) -> PostRecord:
    """A PostRecord from raw values, each checked: required text present (after making it safe),
    identifiers within the catalog's columns (else ParseError: they cannot be cut), other text cut to
    its column, ``duration`` and ``favorites`` parsed as counts (a bad one is dropped with a note),
    the image an http(s) URL (a local file only when ``local_image``, for the file import)."""
    notes = []

    def text(value, name, *, required=False, cut=True):
        cleaned = safe_text(str(value), None)[0].strip() if value is not None else None
        cleaned = re.sub(r"\s+", " ", cleaned) if cleaned else None
        if not cleaned:
            if required:
                raise ParseError(f"{where}: no {name}")
            return None
        if len(cleaned) > MAX_CHARS[name]:
            if not cut:
                raise ParseError(f"{where}: {name} is {len(cleaned)} characters long, more than {MAX_CHARS[name]}")
            notes.append(f"{name} cut to {MAX_CHARS[name]} characters")
            cleaned = cleaned[:MAX_CHARS[name]]
        return cleaned

    def count(value, name, parse):
        if value is None or str(value).strip() == "":
            return None
        try:
            return parse(str(value))
        except ValueError as error:
            notes.append(f"{name} dropped: {error}")
            return None

    image = text(image_url, "image_url", required=True, cut=False)
    scheme = urlsplit(image).scheme.lower()
    if scheme not in ("http", "https") and not (local_image and scheme == "file"):
        raise ParseError(f"{where}: image {image[:200]!r} is not an http(s) URL")
    return PostRecord(
        external_id=text(external_id, "external_id", required=True, cut=False),
        url=text(url, "url", required=True, cut=False), image_url=image,
        title=text(title, "title", required=True), artist=text(artist, "artist", required=True),
        album=text(album, "album"), duration=count(duration, "duration", parse_duration), mood=text(mood, "mood"),
        favorite_count=count(favorites, "favorites", parse_count) or 0, posted_at=text(posted_at, "posted_at"),
        notes="; ".join(notes) or None)


# --- the driver --------------------------------------------------------------------------------------

class _Recorder:
    """Outcomes written as they complete, a small batch per transaction (or every ``flush_seconds``).
    A batch the catalog refuses is written one record at a time, and a record it still refuses is kept
    as an error with the catalog's reason: one bad record never stops the stage."""

    def __init__(self, state: CrawlState, batch_size: int, flush_seconds: float, progress=None):
        self.state, self.batch_size, self.flush_seconds, self.progress = state, batch_size, flush_seconds, progress
        self.pending: list[tuple[dict, PostRecord | None]] = []
        self.last = time.monotonic()
        self.counts = {"attempted": 0, "failed": 0, "deferred": 0, "new_posts": 0}
        self.failures: list[tuple[str, str]] = []

    def add(self, result: dict, post: PostRecord | None) -> None:
        if self.progress:
            self.progress(1)
        if result["status"] == "deferred":  # robots.txt unavailable: left pending, no verdict
            self.counts["deferred"] += 1
            return
        self.counts["attempted"] += 1
        if result["status"] == "done" and post is not None and post.notes:
            result = {**result, "error": outcome(result["url"], "done", error=post.notes)["error"]}
        if result["status"] == "error":
            self._failed(result["url"], result["error"])
        self.pending.append((result, post))
        if len(self.pending) >= self.batch_size or time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def _failed(self, key: str, reason: str | None) -> None:
        self.counts["failed"] += 1
        log.warning("post %s: %s", key, reason)
        if len(self.failures) < MAX_FAILURES:
            self.failures.append((key, reason or "unknown"))

    def tick(self) -> None:
        if self.pending and time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        batch, self.pending, self.last = self.pending, [], time.monotonic()
        if not batch:
            return
        try:
            self.counts["new_posts"] += self.state.record_many([o for o, _ in batch], [p for _, p in batch if p])
            return
        except Exception as error:  # noqa: BLE001 - find the record the catalog refuses, keep the rest
            log.warning("a batch of %d outcomes was refused (%s): writing them one by one", len(batch),
                        str(error).splitlines()[0][:200])
        for result, post in batch:
            try:
                self.counts["new_posts"] += self.state.record_many([result], [post] if post else [])
            except Exception as error:  # noqa: BLE001
                reason = f"the catalog refused this record: {type(error).__name__}: {str(error).splitlines()[0]}"
                if result["status"] != "error":
                    self._failed(result["url"], reason)
                try:
                    self.state.record_many([outcome(result["url"], "error", kind=result.get("kind", "post"),
                                                    http_status=result.get("http_status"), error=reason)])
                except Exception:  # noqa: BLE001 - not even the error fits: it stays pending, logged
                    log.exception("could not record %s", result["url"][:200])


def crawl_posts(source: PostSource, client: PoliteClient, state: CrawlState, *, discover: bool = True,
                max_pages: int | None = None, max_depth: int | None = None, workers: int = 8,
                batch_size: int = 20, flush_seconds: float = 1.0,
                progress: Callable[[int], None] | None = None,
                give_up: Callable[[int, int], bool] | None = None) -> dict:
    """Fetch this state's pending post URLs and, unless ``discover=False`` (a shard after the planning
    step), walk the source's listing at the same time, fetching each new post URL as soon as it is
    found. Returns counts: discovered, attempted, failed, deferred, new_posts, and ``failures`` (the
    first few (url, reason) pairs). ``give_up(failed, known)`` true: stop (the site is down); the URLs
    not fetched stay pending, ``given_up`` counts them."""
    recorder = _Recorder(state, batch_size, flush_seconds, progress)
    submitted: set[str] = set()
    running: set = set()
    discovered = 0

    with ThreadPoolExecutor(max(1, workers)) as pool:
        def submit(urls: list[str]) -> None:
            urls = [url for url in urls if url not in submitted]
            submitted.update(urls)
            validators = state.validators_many(urls) if urls else {}
            for url in urls:
                running.add(pool.submit(source.fetch_one, client, url, validators.get(url, (None, None))))

        stopped = []

        def collect(timeout: float | None) -> None:
            done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                running.discard(future)
                if not future.cancelled():
                    recorder.add(*future.result())
            recorder.tick()
            if give_up and not stopped and give_up(recorder.counts["failed"], len(submitted)):
                stopped.append(True)
                for future in list(running):
                    if future.cancel():
                        running.discard(future)

        try:
            submit(state.pending("post"))
            if discover:
                for new_urls, new_posts in source.walk(client, state, max_pages=max_pages, max_depth=max_depth):
                    discovered += len(new_urls) + new_posts
                    recorder.counts["new_posts"] += new_posts
                    if stopped:
                        break
                    submit(new_urls)
                    if running:
                        collect(0)
        finally:  # even when the walk fails, what was fetched is kept
            while running:
                collect(flush_seconds)
            recorder.flush()
    given_up = len(submitted) - recorder.counts["attempted"] - recorder.counts["deferred"]
    return {"discovered": discovered, **recorder.counts, "failures": recorder.failures, "given_up": given_up}


def discover_posts(source: PostSource, client: PoliteClient, state: CrawlState, *, max_pages: int | None = None,
                   max_depth: int | None = None) -> int:
    """Only walk the listing (the planning step of a sharded crawl); returns how many post URLs were new."""
    return sum(len(urls) + new for urls, new in source.walk(client, state, max_pages=max_pages, max_depth=max_depth))


def list_walk(start_url: str, read_page, state: CrawlState, *, max_pages: int | None, max_depth: int | None,
              what: str = "list page") -> Iterator[tuple[str, object]]:
    """The bounded walk every paginated source shares: from ``start_url``, ``read_page(url)`` gives
    (whatever the source needs, [next page URLs]); each page is read once (a seen-set, so a pagination
    cycle ends), at most ``max_pages`` pages and ``max_depth`` hops from the start. Yields (url, what
    the page gave). A page that fails is recorded with its error and its branch of the walk ends; the
    first page failing raises (the site is down or has changed: not an empty crawl)."""
    max_pages = MAX_LIST_PAGES if max_pages is None else max_pages
    max_depth = MAX_LIST_DEPTH if max_depth is None else max_depth
    frontier, seen, pages = [(start_url, 0)], {start_url.split("#", 1)[0]}, 0
    while frontier and pages < max_pages:
        url, depth = frontier.pop(0)
        try:
            found, next_urls = read_page(url)
        except Disallowed:
            state.record(url, "disallowed")
            continue
        except RobotsUnavailable as error:  # no verdict: the page is walked again next time
            if pages == 0:
                raise
            log.warning("%s skipped for now: %s", what, error)
            continue
        except (FetchError, ParseError) as error:
            state.record(url, "error", error=outcome(url, "error", error=str(error))["error"])
            if pages == 0:
                raise
            log.warning("%s failed, its branch of the walk stops: %s", what, error)
            continue
        pages += 1
        yield url, found
        for next_url in next_urls:
            key = next_url.split("#", 1)[0]
            if key in seen:
                continue
            seen.add(key)
            if depth + 1 > max_depth or len(key) > MAX_CHARS["url"]:
                log.warning("%s %s not walked: beyond the depth of %d or too long", what, key[:200], max_depth)
                continue
            frontier.append((key, depth + 1))
    if frontier:
        log.warning("the walk stopped at %d %ss (the bound); %d more were not read", pages, what, len(frontier))
    log.info("walked %d %ss", pages, what)


# --- JSON feed -----------------------------------------------------------------------------------

def post_from_dict(row: dict, *, where: str, base: str = "", image_base: Path | None = None) -> PostRecord:
    """A post from a feed item or an imported row. Keys: id, url (optional), image (URL or local path;
    also image_url), title, artist, album, duration, mood, favorites (also favorite_count), posted_at.
    Local image paths are taken only from a file import (``image_base``), never from a feed."""
    def first(*keys):
        for key in keys:
            value = row.get(key)
            if value not in (None, ""):
                return value
        return None

    external_id = first("id", "external_id")
    image = first("image", "image_url", "image_path")
    if isinstance(image, str) and image.strip() and "://" not in image:
        if image_base is None:  # a feed: relative to the feed page
            image = urljoin(base, image.strip())
        else:  # a file import: a local path, relative to the file's folder
            image = (image_base / image.strip()).resolve().as_uri()
    url = first("url")
    if url is None and external_id is not None:
        url = f"{base or where}#{safe_text(str(external_id), MAX_CHARS['external_id'])[0]}"
    return checked_post(where=where, external_id=external_id, url=url, image_url=image, title=first("title"),
                        artist=first("artist"), album=first("album"), duration=first("duration"),
                        mood=first("mood"), favorites=first("favorites", "favorite_count"),
                        posted_at=first("posted_at", "created_at"),
                        local_image=image_base is not None)


class JsonFeedSource:
    """A paginated JSON feed: ``{"posts": [{id, url, image, title, artist, …}], "next": url | null}``.
    Feed pages are fetched with conditional requests; an unchanged page (304) ends the walk (nothing
    new behind it either). Each item is a whole post, so there are no post pages to fetch; an item that
    does not parse is recorded with its error and the walk goes on."""

    kind = "json_feed"

    def __init__(self, feed_url: str):
        self.base_url = feed_url

    def walk(self, client: PoliteClient, state: CrawlState, *, max_pages: int | None = None,
             max_depth: int | None = None) -> Iterator[tuple[list[str], int]]:
        def read(url):
            etag, modified = state.validators(url)
            response = client.get(url, etag=etag, last_modified=modified)
            if response.not_modified:
                state.record(url, "done", http_status=304)
                return None, []
            if response.status >= 400:
                raise FetchError(url, f"HTTP {response.status}", response.status)
            try:
                page = json.loads(response.content)
                items, next_url = page["posts"], page.get("next")
                if not isinstance(items, list) or not (next_url is None or isinstance(next_url, str)):
                    raise TypeError("posts must be a list and next a URL or null")
            except (ValueError, KeyError, TypeError) as error:
                raise ParseError(f"{url}: not a feed page ({type(error).__name__}: {error})") from None
            return (response, items), [urljoin(url, next_url)] if next_url else []

        for url, found in list_walk(self.base_url, read, state, max_pages=max_pages, max_depth=max_depth,
                                    what="feed page"):
            if found is None:
                continue
            response, items = found
            outcomes, posts = [], []
            for i, item in enumerate(items):
                where = f"{url}#item-{i}"
                try:
                    if not isinstance(item, dict):
                        raise ParseError(f"{where}: not an object")
                    post = post_from_dict(item, where=where, base=url)
                    posts.append(post)
                    outcomes.append(outcome(post.url, "done", error=post.notes))
                except ParseError as error:
                    outcomes.append(outcome(where, "error", error=str(error)))
            outcomes.append(outcome(url, "done", kind="list", http_status=response.status,
                                    etag=response.headers.get("etag"),
                                    last_modified=response.headers.get("last-modified")))
            yield [], state.record_many(outcomes, posts)

    def fetch_one(self, client, url, validators):
        return outcome(url, "done"), None  # feed items are whole posts: nothing to fetch


# --- file import ---------------------------------------------------------------------------------

class FileImportSource:
    """Posts from a CSV (header row) or JSONL file someone exported; images as URLs or local paths
    (relative paths are relative to the file). Re-importing the same file changes nothing; a row that
    does not parse is recorded with its error (as ``<file>#line-N``) and the import goes on. The
    file's folder is the only place local images are read from (``local_root``)."""

    kind = "file_import"

    def __init__(self, path: str | Path, batch_size: int = 500):
        self.path = Path(path).resolve()
        self.base_url = self.path.as_uri()
        self.local_root = self.path.parent
        self.batch_size = batch_size

    def rows(self) -> Iterator[tuple[int, dict | None, str | None]]:
        with self.path.open(newline="", encoding="utf-8", errors="replace") as handle:
            if self.path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
                for line_number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        yield line_number, row if isinstance(row, dict) else None, None if isinstance(
                            row, dict) else "not a JSON object"
                    except ValueError as error:
                        yield line_number, None, f"invalid JSON: {error}"
            else:
                for line_number, row in enumerate(csv.DictReader(handle), 2):
                    yield line_number, row, None

    def walk(self, client: PoliteClient, state: CrawlState, *, max_pages: int | None = None,
             max_depth: int | None = None) -> Iterator[tuple[list[str], int]]:
        outcomes, posts = [], []
        for line_number, row, error in self.rows():
            where = f"{self.base_url}#line-{line_number}"
            if row is not None:
                try:
                    post = post_from_dict(row, where=where, base=self.base_url, image_base=self.path.parent)
                    posts.append(post)
                    outcomes.append(outcome(post.url, "done", error=post.notes))
                except ParseError as parse_error:
                    error = str(parse_error)
            if error:
                outcomes.append(outcome(where, "error", error=error))
            if len(outcomes) >= self.batch_size:
                yield [], state.record_many(outcomes, posts)
                outcomes, posts = [], []
        yield [], state.record_many(outcomes, posts)

    def fetch_one(self, client, url, validators):
        return outcome(url, "done"), None


def read_local(url: str, max_bytes: int, roots: Iterable[Path] = ()) -> bytes:
    """The bytes of a file:// image of a file import, with the same size cap as HTTP. Only regular files
    inside one of ``roots`` (the folders of the imported files) are read: a file:// URL that came from
    anywhere else, or that leads out of those folders (``..``, symbolic links), is refused."""
    from urllib.parse import unquote

    from crawlers.http import Refused

    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise Refused(url, "not a local file URL")
    path = Path(unquote(parts.path)).resolve()
    if not any(path.is_relative_to(Path(root).resolve()) for root in roots):
        raise Refused(url, "local files are read only from the folder of an imported file")
    if not path.is_file():
        raise Refused(url, "not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise FetchError(url, f"body of {size} bytes exceeds the cap of {max_bytes}")
    with path.open("rb") as handle:
        return handle.read(max_bytes + 1)[:max_bytes]


def chunks(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
