"""The crawl-state protocol: what a crawler needs remembered between runs (the catalog implements it)."""

from __future__ import annotations

from typing import Iterable, Protocol


class CrawlState(Protocol):
    def add(self, kind: str, urls: Iterable[str]) -> int:
        """Put URLs on the frontier (URLs already seen are left as they are); returns how many were new."""

    def pending(self, kind: str, limit: int | None = None) -> list[str]:
        """URLs of ``kind`` still to fetch: new ones and earlier errors worth retrying."""

    def validators(self, url: str) -> tuple[str | None, str | None]:
        """The (ETag, Last-Modified) kept from the last fetch of ``url``, for a conditional request."""

    def record(self, url: str, status: str, *, http_status: int | None = None, error: str | None = None,
               etag: str | None = None, last_modified: str | None = None) -> None:
        """Remember the outcome of fetching ``url``: done, error or disallowed."""

    def validators_many(self, urls: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """``validators`` for many URLs at once (only those that have some)."""

    def record_many(self, outcomes: list[dict], posts: list = ()) -> int:
        """Record many outcomes (dicts with url, kind, status, http_status, error, etag, last_modified)
        and store ``posts`` (``crawlers.sources.PostRecord``) in one atomic step; returns new posts."""
