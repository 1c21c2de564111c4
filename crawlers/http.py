"""The one HTTP layer every fetch goes through (urllib3, pooled connections, thread-safe).

- robots.txt is read before any other request to a host, cached per host (``robots_ttl``), and obeyed on
  every URL and every redirect hop; its ``Crawl-delay`` raises the host's minimum delay. A robots.txt that
  answers 5xx disallows the whole host for now; a 4xx means there is none (everything allowed); a host
  that does not answer at all is an error, never an empty crawl.
- an honest User-Agent (say who you are and how to reach you);
- per-host concurrency (``per_host``) and minimum delay between requests (``min_delay``);
- adaptive slow-down: a 429 or 503 raises the host's delay for every thread (at least its Retry-After),
  and successes let it decay again; the request itself waits Retry-After before its retry (a Retry-After
  beyond ``max_backoff`` fails the fetch instead of retrying early);
- bounded retries with exponential backoff and jitter on timeouts, 5xx and connection errors;
- connect and read timeouts; a maximum body size (declared or streamed, after content decoding);
  truncated bodies are errors;
- conditional requests (If-None-Match / If-Modified-Since); a 304 comes back as a Response;
- redirects followed by hand: at most ``max_redirects`` hops, a loop is detected and reported.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ProtocolError, TimeoutError as Urllib3Timeout

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 500, 502, 503, 504}
SLOW_DOWN_STATUSES = {429, 503}
REDIRECT_STATUSES = {301, 302, 303, 307, 308}


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


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, delay: float | None = None):
        super().__init__(message)
        self.status, self.delay = status, delay


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


def _crawl_delay(lines: list[str]) -> float:
    """The first Crawl-delay, fractional ones too (the standard parser reads whole seconds only)."""
    for line in lines:
        key, _, value = line.split("#", 1)[0].partition(":")
        if key.strip().lower() == "crawl-delay":
            try:
                return max(0.0, float(value.strip()))
            except ValueError:
                return 0.0
    return 0.0


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _Host:
    """What the client knows about one host: robots rules, its pacing and its concurrency slots."""

    def __init__(self, per_host: int):
        self.lock = threading.Lock()  # guards robots loading and the pacing fields
        self.robots: RobotFileParser | None = None
        self.robots_at = 0.0
        self.crawl_delay = 0.0
        self.penalty = 0.0  # adaptive extra delay after 429/503
        self.next_slot = 0.0
        self.slots = threading.BoundedSemaphore(per_host)


class PoliteClient:
    """A thread-safe polite HTTP client over one urllib3 pool manager (keep-alive connections)."""

    def __init__(self, user_agent: str, *, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 max_bytes: int = 20 * 1024 * 1024, max_redirects: int = 5, min_delay: float = 0.0,
                 per_host: int = 8, robots_ttl: float = 3600.0, robots: dict[str, str] | None = None):
        if not user_agent.strip():
            raise ValueError("a crawler must say who it is: set a User-Agent with a contact")
        self.user_agent = user_agent
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.max_bytes, self.max_redirects, self.min_delay = max_bytes, max_redirects, min_delay
        self.per_host, self.robots_ttl = per_host, robots_ttl
        self._pool = urllib3.PoolManager(
            num_pools=64, maxsize=max(per_host, 1), block=False, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            headers={"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"})
        self._hosts: dict[str, _Host] = {}
        self._hosts_lock = threading.Lock()
        self._robots_texts: dict[str, str] = {}
        for host, text in (robots or {}).items():  # rules handed over by a parent process
            self._install_robots(self._host(host), host, text.splitlines())

    def config(self) -> dict:
        """Keyword arguments that rebuild an equivalent client (in another process), with the robots.txt
        rules read so far, so that a worker process does not ask for them again."""
        return {"user_agent": self.user_agent, "connect_timeout": self.connect_timeout,
                "read_timeout": self.read_timeout, "retries": self.retries, "backoff": self.backoff,
                "max_backoff": self.max_backoff, "max_bytes": self.max_bytes,
                "max_redirects": self.max_redirects, "min_delay": self.min_delay, "per_host": self.per_host,
                "robots_ttl": self.robots_ttl, "robots": dict(self._robots_texts)}

    # --- robots.txt ------------------------------------------------------------------------------

    def _host(self, host: str) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            with self._hosts_lock:
                state = self._hosts.setdefault(host, _Host(self.per_host))
        return state

    def allowed(self, url: str) -> bool:
        host = host_of(url)
        state = self._host(host)
        if state.robots is None or time.monotonic() - state.robots_at > self.robots_ttl:
            with state.lock:
                if state.robots is None or time.monotonic() - state.robots_at > self.robots_ttl:
                    self._install_robots(state, host, self._load_robots(host))
        return state.robots.can_fetch(self.user_agent, url)

    def _install_robots(self, state: _Host, host: str, lines: list[str]) -> None:
        robots = RobotFileParser(host + "/robots.txt")
        robots.parse(lines)
        state.robots, state.robots_at = robots, time.monotonic()
        state.crawl_delay = float(robots.crawl_delay(self.user_agent) or _crawl_delay(lines))
        self._robots_texts[host] = "\n".join(lines)

    def _load_robots(self, host: str) -> list[str]:
        try:
            response = self._pool.request("GET", host + "/robots.txt", redirect=True, retries=urllib3.Retry(
                total=1, connect=1, read=1, redirect=5, backoff_factor=0.1, raise_on_redirect=False),
                preload_content=False)
            try:
                body = response.read(512 * 1024, decode_content=True)  # the RFC asks parsers for 500 KiB at least
            finally:
                response.release_conn()
        except Urllib3Error as error:
            # Nothing is fetched from a host whose robots.txt we could not read; the error says why.
            raise FetchError(host + "/robots.txt", f"host unreachable: {type(error).__name__}") from error
        if response.status >= 500:  # a server error: assume everything is disallowed for now
            return ["User-agent: *", "Disallow: /"]
        if response.status >= 400:
            return []  # no robots.txt: everything allowed
        return body.decode("utf-8", errors="replace").splitlines()

    # --- pacing ----------------------------------------------------------------------------------

    def _wait_turn(self, state: _Host) -> None:
        delay = max(self.min_delay, state.crawl_delay, state.penalty)
        if delay <= 0:
            return
        with state.lock:
            now = time.monotonic()
            slot = max(now, state.next_slot)
            state.next_slot = slot + delay
        if slot > now:
            time.sleep(slot - now)

    def _slow_down(self, state: _Host, retry_after: float | None) -> None:
        with state.lock:
            state.penalty = min(self.max_backoff, max(state.penalty * 2, retry_after or 0.0, self.backoff, 0.05))
        log.info("slowing down: %.2fs between requests to this host", state.penalty)

    @staticmethod
    def _recover(state: _Host) -> None:
        if state.penalty:
            with state.lock:
                state.penalty = 0.0 if state.penalty < 0.05 else state.penalty * 0.7

    # --- fetching --------------------------------------------------------------------------------

    def get(self, url: str, *, params: dict | None = None, etag: str | None = None,
            last_modified: str | None = None) -> Response:
        """GET ``url``; raises ``Disallowed`` before any request when robots.txt forbids it (or forbids
        a redirect target), and ``FetchError`` when it fails after the retries. A 304 comes back as a
        Response; other 4xx come back as Responses too (the caller decides)."""
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "gzip, deflate"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        seen, current = [url], url
        while True:
            if not self.allowed(current):
                raise Disallowed(current)
            response = self._get_with_retries(current, headers)
            if response.status not in REDIRECT_STATUSES or "location" not in response.headers:
                return response
            target = urljoin(current, response.headers["location"])
            if target in seen:
                raise FetchError(url, "redirect loop: " + " → ".join(seen + [target])
                                 + f" (redirects are followed at most {self.max_redirects} times)", response.status)
            if len(seen) > self.max_redirects:
                raise FetchError(url, f"too many redirects (more than {self.max_redirects})", response.status)
            seen.append(target)
            current = target

    def _get_with_retries(self, url: str, headers: dict) -> Response:
        state = self._host(host_of(url))
        last = "no attempt"
        for attempt in range(self.retries + 1):
            self._wait_turn(state)
            try:
                with state.slots:
                    response = self._get_once(url, headers)
                self._recover(state)
                return response
            except _Retryable as error:
                last = str(error)
                if error.status in SLOW_DOWN_STATUSES:
                    self._slow_down(state, error.delay)
                if error.delay is not None and error.delay > self.max_backoff:
                    raise FetchError(url, f"{last}, Retry-After {error.delay:.0f}s is beyond the "
                                          f"{self.max_backoff:.0f}s we wait", error.status) from None
                if attempt == self.retries:
                    raise FetchError(url, f"{last} (after {attempt + 1} attempts)", error.status) from None
                delay = error.delay
                if delay is None:
                    delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())
                log.debug("retrying %s in %.2fs after %s", url, delay, last)
                time.sleep(delay)
        raise FetchError(url, last)

    def _get_once(self, url: str, headers: dict) -> Response:
        try:
            raw = self._pool.urlopen("GET", url, headers=headers, redirect=False, retries=False,
                                     preload_content=False)
        except Urllib3Timeout as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from None
        except Urllib3Error as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from None
        complete = False
        try:
            if raw.status in RETRY_STATUSES:
                delay = _retry_after_seconds(raw.headers.get("Retry-After"))
                raise _Retryable(f"HTTP {raw.status}", raw.status, delay)
            body = self._read_capped(url, raw)
            complete = True
            return Response(url, raw.status, body, {k.lower(): v for k, v in raw.headers.items()})
        finally:
            if not complete:
                raw.close()  # a half-read or broken connection never goes back to the pool
            raw.release_conn()

    def _read_capped(self, url: str, raw) -> bytes:
        declared = raw.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(url, f"body of {declared} bytes exceeds the cap of {self.max_bytes}", raw.status)
        try:
            if declared and declared.isdigit() and not raw.headers.get("Content-Encoding"):
                body = raw.read(decode_content=True)
            else:
                chunks, size = [], 0
                for chunk in raw.stream(64 * 1024, decode_content=True):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raw.close()
                        raise FetchError(url, f"body exceeds the cap of {self.max_bytes} bytes", raw.status)
                    chunks.append(chunk)
                body = b"".join(chunks)
        except ProtocolError as error:
            raise _Retryable(f"truncated body ({type(error).__name__}: {error})") from None
        except Urllib3Timeout as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from None
        except Urllib3Error as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from None
        if len(body) > self.max_bytes:
            raise FetchError(url, f"body exceeds the cap of {self.max_bytes} bytes", raw.status)
        if declared and declared.isdigit() and not raw.headers.get("Content-Encoding") and len(body) < int(declared):
            raise _Retryable(f"truncated body: {len(body)} of {declared} bytes")
        return body
