"""The one HTTP layer every fetch goes through: robots.txt first, an honest User-Agent, timeouts,
bounded retries with backoff and jitter, Retry-After, a body-size cap and conditional requests."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import requests

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 500, 502, 503, 504}


class Disallowed(Exception):
    """robots.txt forbids this URL; it must not be fetched."""


@dataclass
class Response:
    url: str
    status: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def text(self) -> str:
        return self.content.decode(_charset(self.headers.get("content-type", "")), errors="replace")


class FetchError(Exception):
    """A fetch that failed for good (after retries): the status or error is in the message."""

    def __init__(self, url: str, message: str, status: int | None = None):
        super().__init__(f"{url}: {message}")
        self.url, self.status = url, status


def _charset(content_type: str) -> str:
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class PoliteClient:
    """A thread-safe polite HTTP client (one ``requests.Session`` per thread)."""

    def __init__(self, user_agent: str, *, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 max_bytes: int = 20 * 1024 * 1024, max_redirects: int = 5, min_delay: float = 0.0):
        self.user_agent = user_agent
        self.timeout = (connect_timeout, read_timeout)
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.max_bytes, self.max_redirects, self.min_delay = max_bytes, max_redirects, min_delay
        self._local = threading.local()
        self._robots: dict[str, RobotFileParser] = {}
        self._robots_lock = threading.Lock()
        self._next_slot: dict[str, float] = {}
        self._slot_lock = threading.Lock()

    @property
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            session.max_redirects = self.max_redirects
            self._local.session = session
        return session

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        host = f"{parts.scheme}://{parts.netloc}"
        with self._robots_lock:
            if host not in self._robots:
                self._robots[host] = self._load_robots(host)
            return self._robots[host].can_fetch(self.user_agent, url)

    def _load_robots(self, host: str) -> RobotFileParser:
        robots = RobotFileParser(host + "/robots.txt")
        try:
            response = self._session.get(host + "/robots.txt", timeout=self.timeout)
        except requests.RequestException as error:
            # Nothing is fetched from a host whose robots.txt we could not read; the error says why.
            raise FetchError(host + "/robots.txt", f"host unreachable: {type(error).__name__}") from error
        if response.status_code >= 500:  # a server error: assume everything is disallowed for now
            robots.parse(["User-agent: *", "Disallow: /"])
        elif response.status_code >= 400:
            robots.parse([])  # no robots.txt: everything allowed
        else:
            robots.parse(response.text.splitlines())
        return robots

    def _wait_turn(self, url: str) -> None:
        if self.min_delay <= 0:
            return
        host = urlsplit(url).netloc
        with self._slot_lock:
            now = time.monotonic()
            slot = max(now, self._next_slot.get(host, now))
            self._next_slot[host] = slot + self.min_delay
        time.sleep(max(0.0, slot - now))

    def get(self, url: str, *, params: dict | None = None, etag: str | None = None,
            last_modified: str | None = None) -> Response:
        """GET ``url``; raises ``Disallowed`` before any request when robots.txt forbids it, and
        ``FetchError`` when it fails after the retries. A 304 comes back as a Response."""
        if not self.allowed(url):
            raise Disallowed(url)
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        last_error = "no attempt"
        for attempt in range(self.retries + 1):
            self._wait_turn(url)
            delay = None
            try:
                with self._session.get(url, params=params, headers=headers, timeout=self.timeout,
                                       stream=True) as response:
                    if response.status_code in RETRY_STATUSES:
                        last_error = f"HTTP {response.status_code}"
                        delay = _retry_after_seconds(response.headers.get("Retry-After"))
                        if attempt == self.retries:
                            raise FetchError(url, last_error, response.status_code)
                    else:
                        body = self._read_capped(url, response)
                        return Response(response.url, response.status_code, body,
                                        {k.lower(): v for k, v in response.headers.items()})
            except requests.TooManyRedirects as error:
                raise FetchError(url, f"too many redirects ({error})") from error
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
                last_error = f"{type(error).__name__}: {error}"
                if attempt == self.retries:
                    raise FetchError(url, last_error) from error
            if delay is None:
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())
            log.debug("retrying %s in %.2fs after %s", url, delay, last_error)
            time.sleep(min(delay, self.max_backoff))
        raise FetchError(url, last_error)

    def _read_capped(self, url: str, response: requests.Response) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(url, f"body of {declared} bytes exceeds the cap of {self.max_bytes}", response.status_code)
        chunks, size = [], 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(url, f"body exceeds the cap of {self.max_bytes} bytes", response.status_code)
            chunks.append(chunk)
        body = b"".join(chunks)
        if declared and declared.isdigit() and len(body) < int(declared):
            raise FetchError(url, f"truncated body: {len(body)} of {declared} bytes", response.status_code)
        return body
