"""Post sources behind one small interface, and the driver that crawls any of them resumably.

A source does two things:

- ``discover(client, state, max_pages=None)`` walks what lists posts (list pages, feed pages, a file)
  and puts post URLs on the frontier (``state.add("post", …)``); a source whose listing already holds
  the whole post (a JSON feed, a file) records those posts right away through ``state.record_many``.
- ``fetch(client, urls, validators, workers=…)`` fetches post URLs and yields ``(outcome, post | None)``
  pairs; an outcome is a dict ``{"url", "kind", "status", "http_status", "error", "etag",
  "last_modified"}`` with status done | not_modified | error | disallowed.

``crawl_posts`` drives a source: outcomes and their posts are written in batches, each batch in ONE
transaction (``state.record_many``), so a crash at any moment leaves every URL either done with its post
stored, or still pending (fetched again next time): nothing lost, nothing duplicated.

Sources here: ``HtmlSiteSource`` (the sharing site, ``crawlers.sharing_site``), ``JsonFeedSource`` and
``FileImportSource`` (CSV or JSONL of posts, with image URLs or local paths).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol
from urllib.parse import urljoin

from crawlers.http import Disallowed, FetchError, PoliteClient
from crawlers.state import CrawlState

log = logging.getLogger(__name__)


class ParseError(ValueError):
    """A page or row that does not hold what it should (the layout changed, a field is missing…)."""


@dataclass(frozen=True)
class PostRecord:
    external_id: str
    url: str
    image_url: str  # http(s) URL, or file:// URI of a local image (file import)
    title: str
    artist: str
    album: str | None
    duration: int | None
    mood: str | None
    favorite_count: int


class PostSource(Protocol):
    kind: str  # html_site | json_feed | file_import
    base_url: str

    def discover(self, client: PoliteClient, state: CrawlState, *, max_pages: int | None = None) -> int:
        """Put the source's post URLs on the frontier (or record whole posts); returns how many were new."""

    def fetch(self, client: PoliteClient, urls: list[str], validators: dict[str, tuple[str | None, str | None]],
              *, workers: int = 8) -> Iterator[tuple[dict, PostRecord | None]]:
        """Fetch post URLs; yields (outcome, post or None) for every URL, in any order."""


def outcome(url: str, status: str, *, kind: str = "post", http_status: int | None = None, error: str | None = None,
            etag: str | None = None, last_modified: str | None = None) -> dict:
    return {"url": url, "kind": kind, "status": status, "http_status": http_status, "error": error,
            "etag": etag, "last_modified": last_modified}


def crawl_posts(source: PostSource, client: PoliteClient, state: CrawlState, *, discover: bool = True,
                max_pages: int | None = None, workers: int = 8, batch_size: int = 100,
                progress: Callable[[int], None] | None = None,
                give_up: Callable[[int, int], bool] | None = None) -> dict:
    """Discover (unless ``discover=False``: a shard after the planning step), then fetch every pending
    post URL of this state's shard; returns counts (``failed``: URLs that errored, retried next run;
    ``failures``: the first ten (url, reason)). ``give_up(failed, total)`` true: stop fetching (the
    rest stay pending; ``given_up`` counts them)."""
    discovered = source.discover(client, state, max_pages=max_pages) if discover else 0
    urls = state.pending("post")
    validators = state.validators_many(urls) if urls else {}
    new, outcomes, posts, failures, done = 0, [], [], [], 0
    for result, post in source.fetch(client, urls, validators, workers=workers):
        done += 1
        outcomes.append(result)
        if post is not None:
            posts.append(post)
        if result["status"] == "error":
            log.warning("post %s: %s", result["url"], result["error"])
            failures.append((result["url"], result["error"]))
        if len(outcomes) >= batch_size:
            new += state.record_many(outcomes, posts)
            outcomes, posts = [], []
        if progress:
            progress(1)
        if give_up and give_up(len(failures), len(urls)):
            break
    new += state.record_many(outcomes, posts)
    return {"discovered": discovered, "fetched": done, "new_posts": new, "attempted": done,
            "failed": len(failures), "failures": failures[:10], "given_up": len(urls) - done}


# --- JSON feed -----------------------------------------------------------------------------------

def post_from_dict(row: dict, *, where: str, base: str = "", image_base: Path | None = None) -> PostRecord:
    """A post from a feed item or an imported row. Keys: id, url (optional), image (URL or local path;
    also image_url), title, artist, album, duration, mood, favorites (also favorite_count)."""
    def text(*keys, required=False):
        for key in keys:
            value = row.get(key)
            if value not in (None, ""):
                return str(value).strip()
        if required:
            raise ParseError(f"{where}: no {keys[0]!r}")
        return None

    def number(*keys):
        value = text(*keys)
        if value is None:
            return None
        try:
            return int(float(value.replace(",", "")))
        except ValueError:
            raise ParseError(f"{where}: {keys[0]} {value!r} is not a number") from None

    external_id = text("id", "external_id", required=True)
    image = text("image", "image_url", "image_path", required=True)
    if "://" in image:
        pass
    elif image_base is None:  # a feed: relative to the feed page
        image = urljoin(base, image)
    else:  # a file import: a local path, relative to the file's folder
        image = (image_base / image).resolve().as_uri()
    return PostRecord(external_id=external_id, url=text("url") or f"{base or where}#{external_id}",
                      image_url=image, title=text("title", required=True), artist=text("artist", required=True),
                      album=text("album"), duration=number("duration"), mood=text("mood"),
                      favorite_count=number("favorites", "favorite_count") or 0)


class JsonFeedSource:
    """A paginated JSON feed: ``{"posts": [{id, url, image, title, artist, …}], "next": url | null}``.
    Feed pages are fetched with conditional requests; an unchanged page (304) is skipped. Each item is a
    whole post, so there are no post pages to fetch; an item that does not parse is recorded with its
    error and the walk goes on."""

    kind = "json_feed"

    def __init__(self, feed_url: str):
        self.base_url = feed_url

    def discover(self, client: PoliteClient, state: CrawlState, *, max_pages: int | None = None) -> int:
        new, url, pages, seen = 0, self.base_url, 0, set()
        while url and url not in seen and (max_pages is None or pages < max_pages):
            seen.add(url)
            etag, modified = state.validators(url)
            try:
                response = client.get(url, etag=etag, last_modified=modified)
                if response.not_modified:
                    state.record(url, "done", http_status=304)
                    break  # the newest page is unchanged: nothing new behind it either
                if response.status >= 400:
                    raise FetchError(url, f"HTTP {response.status}", response.status)
                try:
                    page = json.loads(response.content)
                    items, next_url = page["posts"], page.get("next")
                except (ValueError, KeyError, TypeError) as error:
                    raise ParseError(f"{url}: not a feed page ({type(error).__name__}: {error})") from None
            except Disallowed:
                state.record(url, "disallowed")
                break
            except (FetchError, ParseError) as error:
                state.record(url, "error", error=str(error))
                if pages == 0:
                    raise
                break
            outcomes, posts = [], []
            for i, item in enumerate(items):
                try:
                    post = post_from_dict(item, where=f"{url} item {i}", base=url)
                    posts.append(post)
                    outcomes.append(outcome(post.url, "done"))
                except ParseError as error:
                    outcomes.append(outcome(f"{url}#item-{i}", "error", error=str(error)))
            outcomes.append(outcome(url, "done", kind="list", http_status=response.status,
                                    etag=response.headers.get("etag"),
                                    last_modified=response.headers.get("last-modified")))
            new += state.record_many(outcomes, posts)
            pages += 1
            url = urljoin(url, next_url) if next_url else None
        return new

    def fetch(self, client, urls, validators, *, workers=8):
        return iter(())  # feed items are whole posts


# --- file import ---------------------------------------------------------------------------------

class FileImportSource:
    """Posts from a CSV (header row) or JSONL file someone exported; images as URLs or local paths
    (relative paths are relative to the file). Re-importing the same file changes nothing; a row that
    does not parse is recorded with its error (as ``<file>#line-N``) and the import goes on."""

    kind = "file_import"

    def __init__(self, path: str | Path, batch_size: int = 500):
        self.path = Path(path).resolve()
        self.base_url = self.path.as_uri()
        self.batch_size = batch_size

    def rows(self) -> Iterator[tuple[int, dict | None, str | None]]:
        with self.path.open(newline="", encoding="utf-8") as handle:
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

    def discover(self, client: PoliteClient, state: CrawlState, *, max_pages: int | None = None) -> int:
        new, outcomes, posts = 0, [], []
        for line_number, row, error in self.rows():
            where = f"{self.base_url}#line-{line_number}"
            if row is not None:
                try:
                    post = post_from_dict(row, where=where, base=self.base_url, image_base=self.path.parent)
                    posts.append(post)
                    outcomes.append(outcome(post.url, "done"))
                except ParseError as parse_error:
                    error = str(parse_error)
            if error:
                outcomes.append(outcome(where, "error", error=error))
            if len(outcomes) >= self.batch_size:
                new += state.record_many(outcomes, posts)
                outcomes, posts = [], []
        return new + state.record_many(outcomes, posts)

    def fetch(self, client, urls, validators, *, workers=8):
        return iter(())


def read_local(url: str, max_bytes: int) -> bytes:
    """The bytes of a file:// image (file import), with the same size cap as HTTP."""
    from urllib.parse import unquote, urlsplit

    path = Path(unquote(urlsplit(url).path))
    size = path.stat().st_size
    if size > max_bytes:
        raise FetchError(url, f"body of {size} bytes exceeds the cap of {max_bytes}")
    return path.read_bytes()


def chunks(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
