"""The sharing-site source: list pages with pagination → post pages → post fields (BeautifulSoup).

A post page that does not parse (the layout changed) is recorded with its error; the crawl goes on."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator
from urllib.parse import urljoin

from bs4 import BeautifulSoup

from crawlers.http import Disallowed, FetchError, PoliteClient
from crawlers.sources import ParseError, PostRecord, outcome
from crawlers.state import CrawlState

log = logging.getLogger(__name__)


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


def _fetch_post(client: PoliteClient, url: str, validators) -> tuple[dict, PostRecord | None]:
    etag, modified = validators.get(url, (None, None))
    try:
        response = client.get(url, etag=etag, last_modified=modified)
        if response.not_modified:
            return outcome(url, "done", http_status=304), None
        if response.status >= 400:
            raise FetchError(url, f"HTTP {response.status}", response.status)
        post = parse_post_page(response.text, url)
        return outcome(url, "done", http_status=response.status, etag=response.headers.get("etag"),
                       last_modified=response.headers.get("last-modified")), post
    except Disallowed:
        return outcome(url, "disallowed"), None
    except (FetchError, ParseError) as error:  # recorded with its error; the crawl goes on
        return outcome(url, "error", http_status=getattr(error, "status", None), error=str(error)), None


def fetch_posts(client: PoliteClient, urls: list[str], validators: dict | None = None, *,
                workers: int = 8) -> Iterator[tuple[dict, PostRecord | None]]:
    """Fetch and parse post pages concurrently; yields (outcome, post or None) per URL. Nothing is
    recorded here: the caller writes each outcome together with its post (one transaction)."""
    validators = validators or {}
    pool = ThreadPoolExecutor(workers)
    try:
        yield from pool.map(lambda u: _fetch_post(client, u, validators), urls)
    finally:  # a caller that stops early (the site is down) does not wait for the rest to fail
        pool.shutdown(wait=True, cancel_futures=True)


class HtmlSiteSource:
    """The sharing site: list pages with pagination → post pages → post fields."""

    kind = "html_site"

    def __init__(self, site_url: str, start_path: str = "/posts?page=1"):
        self.base_url = site_url
        self.start_url = site_url.rstrip("/") + start_path

    def discover(self, client: PoliteClient, state: CrawlState, *, max_pages: int | None = None) -> int:
        return discover(client, state, self.start_url, max_pages=max_pages)

    def fetch(self, client, urls, validators, *, workers=8):
        return fetch_posts(client, urls, validators, workers=workers)
