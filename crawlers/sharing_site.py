"""The sharing-site source: list pages with pagination → post pages → post fields (BeautifulSoup).

A post page that does not parse (the layout changed, two posts where one should be) is recorded with its
error; the crawl goes on."""

from __future__ import annotations

import logging
from typing import Iterator
from urllib.parse import urljoin

from bs4 import BeautifulSoup

from crawlers.http import Disallowed, FetchError, PoliteClient, RobotsUnavailable
from crawlers.sources import MAX_CHARS, ParseError, PostRecord, checked_post, list_walk, outcome
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


def _text(article, selector: str) -> str | None:
    node = article.select_one(selector)
    return node.get_text(strip=True) if node is not None else None


def parse_post_page(html: str, url: str) -> PostRecord:
    """The post on a post page. Exactly one ``article.post`` must be there (a decoy beside the post is
    an error, not a coin toss); every field goes through ``checked_post``."""
    soup = BeautifulSoup(html, "html.parser")
    articles = soup.select("article.post")
    if not articles:
        raise ParseError(f"{url}: no article.post[data-post-id] (has the layout changed?)")
    if len(articles) > 1:
        raise ParseError(f"{url}: {len(articles)} article.post elements where one post should be")
    article = articles[0]
    if not article.get("data-post-id"):
        raise ParseError(f"{url}: no article.post[data-post-id] (has the layout changed?)")
    image = article.select_one("img.post-image[src]")
    if image is None:
        raise ParseError(f"{url}: the post has no img.post-image")
    for selector in (".song-title", ".song-artist"):
        if not _text(article, selector):
            raise ParseError(f"{url}: no {selector} on the post page (has the layout changed?)")
    posted = article.select_one("time.posted[datetime]")
    return checked_post(
        where=url, external_id=article["data-post-id"], url=url, image_url=urljoin(url, image["src"].strip()),
        title=_text(article, ".song-title"), artist=_text(article, ".song-artist"),
        album=_text(article, ".song-album"), duration=_text(article, ".song-duration"),
        mood=_text(article, ".mood"), favorites=_text(article, ".favorites"),
        posted_at=posted["datetime"].strip() if posted is not None else None)


def walk(client: PoliteClient, state: CrawlState, start_url: str, *, max_pages: int | None = None,
         max_depth: int | None = None) -> Iterator[tuple[list[str], int]]:
    """Walk the list pages from ``start_url`` (bounded: see ``crawlers.sources.list_walk``) and put every
    post URL on the frontier; yields the new ones page by page, so that they are fetched at once.

    List pages are always re-read (they change as new posts arrive)."""
    def read(url):
        response = client.get(url)
        if response.status >= 400:
            raise FetchError(url, f"HTTP {response.status}", response.status)
        links, next_url = parse_list_page(response.text, url)
        return links, [next_url] if next_url else []

    for _, links in list_walk(start_url, read, state, max_pages=max_pages, max_depth=max_depth):
        fit = [link for link in links if len(link) <= MAX_CHARS["url"]]
        if len(fit) < len(links):
            log.warning("%d post links longer than %d characters skipped", len(links) - len(fit), MAX_CHARS["url"])
        yield state.add("post", fit), 0


def _maybe_cut_short(response) -> bool:
    """A body delimited only by the server closing the connection cannot tell a complete page from a
    cut one; the sharing site's pages end with </html>, so one without it is not trusted."""
    headers = response.headers
    framed = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
    return not framed and b"</html" not in response.content[-4096:].lower()


def fetch_post(client: PoliteClient, url: str, validators=(None, None)) -> tuple[dict, PostRecord | None]:
    """Fetch and parse one post page: (outcome, post or None); never raises for a bad page."""
    etag, modified = validators
    try:
        response = client.get(url, etag=etag, last_modified=modified)
        if response.not_modified:
            return outcome(url, "done", http_status=304), None
        if response.status >= 400:
            raise FetchError(url, f"HTTP {response.status}", response.status)
        if _maybe_cut_short(response):
            raise ParseError(f"{url}: the page may be cut short (no Content-Length, not chunked, and no "
                             "closing </html>): not stored, tried again later")
        post = parse_post_page(response.text, url)
        return outcome(url, "done", http_status=response.status, etag=response.headers.get("etag"),
                       last_modified=response.headers.get("last-modified"), error=post.notes), post
    except Disallowed:
        return outcome(url, "disallowed"), None
    except RobotsUnavailable as error:  # no verdict on the URL: it stays pending
        return outcome(url, "deferred", error=str(error)), None
    except (FetchError, ParseError) as error:  # recorded with its error; the crawl goes on
        return outcome(url, "error", http_status=getattr(error, "status", None), error=str(error)), None
    except Exception as error:  # noqa: BLE001 - a page no parser expected must not stop the crawl
        log.exception("post page %s", url[:200])
        return outcome(url, "error", error=f"unexpected {type(error).__name__}: {error}"), None


class HtmlSiteSource:
    """The sharing site: list pages with pagination → post pages → post fields."""

    kind = "html_site"

    def __init__(self, site_url: str, start_path: str = "/posts?page=1"):
        self.base_url = site_url
        self.start_url = site_url.rstrip("/") + start_path

    def walk(self, client: PoliteClient, state: CrawlState, *, max_pages: int | None = None,
             max_depth: int | None = None) -> Iterator[tuple[list[str], int]]:
        return walk(client, state, self.start_url, max_pages=max_pages, max_depth=max_depth)

    def fetch_one(self, client, url, validators=(None, None)):
        return fetch_post(client, url, validators)
