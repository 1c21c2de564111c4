"""The sharing-site source: list pages with pagination → post pages → post fields (BeautifulSoup)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urljoin

from bs4 import BeautifulSoup

from crawlers.http import Disallowed, FetchError, PoliteClient
from crawlers.state import CrawlState

log = logging.getLogger(__name__)


class ParseError(ValueError):
    """A page that does not hold what its kind should hold (the layout changed, or it is not a post)."""


@dataclass(frozen=True)
class PostRecord:
    external_id: str
    url: str
    image_url: str
    title: str
    artist: str
    album: str | None
    duration: int | None
    mood: str | None
    favorite_count: int


def parse_list_page(html: str, page_url: str) -> tuple[list[str], str | None]:
    """Post URLs on a list page and the next page's URL (None on the last page)."""
    soup = BeautifulSoup(html, "html.parser")
    links = [urljoin(page_url, a["href"]) for a in soup.select("a.post-link[href]")]
    next_link = soup.select_one('a[rel~="next"][href]')
    if not links and next_link is None and soup.select_one("a.post-link") is None:
        if not soup.find("body"):
            raise ParseError(f"{page_url}: not an HTML list page")
    return links, urljoin(page_url, next_link["href"]) if next_link else None


def _text(article, selector: str, *, required: bool, url: str) -> str | None:
    node = article.select_one(selector)
    if node is None or not node.get_text(strip=True):
        if required:
            raise ParseError(f"{url}: no {selector} on the post page (has the layout changed?)")
        return None
    return node.get_text(strip=True)


def _int(value: str | None, field: str, url: str) -> int | None:
    if value is None:
        return None
    digits = value.replace(",", "").strip()
    if not digits.isdigit():
        raise ParseError(f"{url}: {field} {value!r} is not a whole number")
    return int(digits)


def parse_post_page(html: str, url: str) -> PostRecord:
    soup = BeautifulSoup(html, "html.parser")
    article = soup.select_one("article.post[data-post-id]")
    if article is None:
        raise ParseError(f"{url}: no article.post[data-post-id] (has the layout changed?)")
    image = article.select_one("img.post-image[src]")
    if image is None:
        raise ParseError(f"{url}: the post has no img.post-image")
    return PostRecord(
        external_id=article["data-post-id"],
        url=url,
        image_url=urljoin(url, image["src"]),
        title=_text(article, ".song-title", required=True, url=url),
        artist=_text(article, ".song-artist", required=True, url=url),
        album=_text(article, ".song-album", required=False, url=url),
        duration=_int(_text(article, ".song-duration", required=False, url=url), "duration", url),
        mood=_text(article, ".mood", required=False, url=url),
        favorite_count=_int(_text(article, ".favorites", required=False, url=url), "favorites", url) or 0,
    )


def discover(client: PoliteClient, state: CrawlState, start_url: str, *, max_pages: int | None = None) -> int:
    """Walk the list pages from ``start_url`` and put every post URL on the frontier.

    List pages are always re-read (they change as new posts arrive); returns how many post URLs were new.
    """
    new, url, pages = 0, start_url, 0
    while url and (max_pages is None or pages < max_pages):
        try:
            response = client.get(url)
            if response.status >= 400:
                raise FetchError(url, f"HTTP {response.status}", response.status)
            links, next_url = parse_list_page(response.text, url)
        except Disallowed:
            state.record(url, "disallowed")
            break
        except (FetchError, ParseError) as error:
            state.record(url, "error", error=str(error))
            if pages == 0:  # not even the first page: the site is down or has changed
                raise
            log.warning("list page failed, the walk stops here: %s", error)
            break
        new += state.add("post", links)
        pages += 1
        url = next_url
    log.info("walked %d list pages, %d new post URLs", pages, new)
    return new


def _fetch_post(client: PoliteClient, state: CrawlState, url: str):
    try:
        etag, modified = state.validators(url)
        response = client.get(url, etag=etag, last_modified=modified)
        if response.not_modified:
            return url, None, "not_modified", response
        if response.status >= 400:
            raise FetchError(url, f"HTTP {response.status}", response.status)
        return url, parse_post_page(response.text, url), "done", response
    except Disallowed:
        return url, None, "disallowed", None
    except (FetchError, ParseError) as error:
        return url, None, error, None


def fetch_posts(client: PoliteClient, state: CrawlState, urls: list[str], *,
                workers: int = 8) -> Iterator[PostRecord]:
    """Fetch and parse post pages concurrently. Yields each post; its URL is recorded as done only
    after the caller has taken it (so a crash in between re-fetches it rather than losing it)."""
    with ThreadPoolExecutor(workers) as pool:
        for url, post, outcome, response in pool.map(lambda u: _fetch_post(client, state, u), urls):
            if isinstance(outcome, Exception):
                state.record(url, "error", http_status=getattr(outcome, "status", None), error=str(outcome))
                continue
            if post is not None:
                yield post
            headers = response.headers if response else {}
            state.record(url, "done" if outcome != "disallowed" else "disallowed",
                         http_status=response.status if response else None,
                         etag=headers.get("etag"), last_modified=headers.get("last-modified"))
