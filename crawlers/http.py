"""The one HTTP layer every fetch goes through (urllib3, pooled connections, thread-safe).

- **Egress policy** on every request and every redirect hop (``EgressPolicy``): http and https only; the
  host name is resolved once, every address is checked (loopback, private, link-local, multicast,
  reserved, unspecified, and their IPv6 forms, mapped and 6to4/Teredo addresses included, are refused
  unless the operator allows that host or network), and the connection goes to the checked address with
  the Host header and TLS server name of the URL, so DNS cannot change the answer between check and
  connect. Local files are never read from a URL: only the explicit file-import source reads them.
- **robots.txt** (RFC 9309, parsed by Protego: wildcards, ``$``, the longest match wins) is read before
  any other request to a host, cached per host (``robots_ttl``), obeyed on every URL and redirect hop.
  A 4xx (but 429) means there is none; a 429, a 5xx or no answer disallows the host *for now*: requests
  raise ``RobotsUnavailable`` (a temporary error, never a verdict on the URL) until the rules are asked
  for again, after Retry-After bounded by ``robots_retry``. Bodies beyond 512 KiB are cut (the RFC's
  500 KiB floor). ``Crawl-delay`` raises the host's minimum delay.
- **An honest User-Agent**: the project, its version and the operator's contact. A client without one
  (``user_agent=None``) may talk to loopback only; anything else is a clear error.
- **One pace per host** through a ``crawlers.pacing.Pacer`` (shared by every process of a crawl when the
  shell hands in a shared one): ``min_delay`` between requests to a non-loopback host (loopback is
  exempt), raised by Crawl-delay and by the slow-down a 429/503 causes (which fades with time);
  per-host concurrency (``per_host``) within a process.
- bounded retries with exponential backoff and jitter on timeouts, 5xx and connection errors; a
  Retry-After beyond ``max_backoff`` fails the fetch instead of retrying early;
- connect and read timeouts, and an overall ``deadline`` per request (headers and body): a server that
  trickles bytes is cut off, its connection shut down;
- a maximum body size (declared or streamed, after content decoding); truncated bodies are errors;
- conditional requests (If-None-Match / If-Modified-Since); a 304 comes back as a Response;
- redirects followed by hand: at most ``max_redirects`` hops, a loop is detected and reported.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Iterable
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3
from protego import Protego
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ProtocolError, TimeoutError as Urllib3Timeout

from crawlers.pacing import LocalPacer, Pacer

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 500, 502, 503, 504}
SLOW_DOWN_STATUSES = {429, 503}
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
LOOPBACK = ("127.0.0.0/8", "::1/128")  # what the demo world and the tests allow
ROBOTS_MAX_BYTES = 512 * 1024
PRODUCT_TOKEN = "image2song"  # the token robots.txt groups are matched against


class FetchError(Exception):
    """A fetch that failed for good (after retries): the status or error is in the message."""

    def __init__(self, url: str, message: str, status: int | None = None):
        super().__init__(f"{url}: {message}")
        self.url, self.status = url, status


class Disallowed(Exception):
    """robots.txt forbids this URL; it must not be fetched."""


class Refused(FetchError):
    """The egress policy forbids this URL (its scheme, or the address its host resolves to)."""


class RobotsUnavailable(FetchError):
    """The host's robots.txt could not be read just now (429, 5xx, no answer): nothing is fetched from
    the host for now, and the URL is neither done nor failed: it is asked for again later."""


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
        return decode_text(self.content, self.headers.get("content-type", ""))


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, delay: float | None = None):
        super().__init__(message)
        self.status, self.delay = status, delay


# --- text ----------------------------------------------------------------------------------------

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def _codec(name: str | None) -> str | None:
    import codecs

    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:  # an unknown charset name is no charset
        return None


def _header_charset(content_type: str) -> str | None:
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value
    return None


def decode_text(content: bytes, content_type: str = "") -> str:
    """Decode a page: the charset the HTTP header names, else the one a ``<meta>`` names (in the first
    4 KiB), else the one charset-normalizer detects; unknown names are skipped, bad bytes replaced."""
    codec = _codec(_header_charset(content_type))
    if codec is None:
        found = _META_CHARSET.search(content[:4096])
        codec = _codec(found.group(1).decode("ascii")) if found else None
    if codec is None:
        try:
            content.decode("utf-8")
            codec = "utf-8"
        except UnicodeDecodeError:
            from charset_normalizer import from_bytes

            best = from_bytes(content[:65536]).best()
            codec = _codec(best.encoding) if best else None
    return content.decode(codec or "utf-8", errors="replace")


# --- egress --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where a URL's request goes: the checked address, and the names the server must see."""

    scheme: str
    host: str  # the URL's host name (Host header and TLS server name)
    port: int
    address: str  # the checked IP address connected to
    path: str  # path and query
    host_header: str

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    return None


class EgressPolicy:
    """Which URLs a crawler may request. ``allow``: networks ("10.0.0.0/8", "::1") or host names
    ("intranet.example") the operator trusts; every other non-public address is refused."""

    def __init__(self, allow: Iterable[str] = (), resolve_ttl: float = 60.0):
        self.allow = tuple(allow)
        self.networks, self.hosts = [], set()
        for entry in self.allow:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.hosts.add(entry.strip().lower().rstrip("."))
        self.resolve_ttl = resolve_ttl
        self._resolved: dict[tuple[str, int], tuple[float, str]] = {}

    def _public(self, ip) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
            return self._public(inner)
        return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)

    def permits(self, address: str, host: str = "") -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if host.lower().rstrip(".") in self.hosts or any(ip in network for network in self.networks):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            if any(ip.ipv4_mapped in network for network in self.networks):
                return True
        return self._public(ip)

    def target(self, url: str) -> Target:
        """Check ``url`` and resolve its host; raises ``Refused`` (or ``FetchError`` when the name
        does not resolve)."""
        try:
            parts = urlsplit(url)
            scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
        except ValueError as error:
            raise Refused(url, f"not a valid URL ({error})") from None
        if scheme not in ("http", "https"):
            raise Refused(url, f"scheme {scheme or '(none)'!r} is not allowed: only http and https are fetched")
        if not host:
            raise Refused(url, "no host in the URL")
        port = port or (443 if scheme == "https" else 80)
        address = self._resolve(url, host, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = port == (443 if scheme == "https" else 80)
        shown = f"[{host}]" if ":" in host else host
        return Target(scheme, host, port, address, path, shown if default else f"{shown}:{port}")

    def _resolve(self, url: str, host: str, port: int) -> str:
        cached = self._resolved.get((host, port))
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            raise FetchError(url, f"host unreachable: {host} does not resolve ({error})") from None
        refused = []
        for info in infos:
            address = info[4][0]
            if self.permits(address, host):
                self._resolved[(host, port)] = (time.monotonic() + self.resolve_ttl, address)
                return address
            refused.append(address)
        raise Refused(url, f"{host} resolves to {', '.join(dict.fromkeys(refused))}: a loopback, private, "
                           "link-local, multicast or reserved address, which the crawler does not fetch "
                           "(allow it by setting if you mean it)")


# --- the overall deadline of a request -------------------------------------------------------------

class _Watch:
    """One request in flight: its socket, shut down by the watchdog when the deadline passes."""

    __slots__ = ("sock", "expired")

    def __init__(self):
        self.sock, self.expired = None, False

    def expire(self) -> None:
        self.expired = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
            except OSError:
                pass


class _Watchdog:
    """One thread that expires the requests whose deadline passed (a heap of deadlines)."""

    def __init__(self):
        self._heap: list = []
        self._active: set[int] = set()
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, watch: _Watch) -> int:
        token = next(self._counter)
        with self._cond:
            heapq.heappush(self._heap, (deadline, token, watch))
            self._active.add(token)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._active.discard(token)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._active:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(30)
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, token, watch = heapq.heappop(self._heap)
                self._active.discard(token)
                watch.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self, *args, **kwargs):
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.sock = self.sock
        return super().getresponse(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self, *args, **kwargs):
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.sock = self.sock
        return super().getresponse(*args, **kwargs)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# --- the client ----------------------------------------------------------------------------------

def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, OverflowError):
            return None


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


class _Host:
    """What the client knows about one host: its robots rules and its concurrency slots."""

    def __init__(self, per_host: int):
        self.lock = threading.Lock()  # guards robots loading
        self.robots: Protego | None = None
        self.robots_until = 0.0  # monotonic time at which the rules are asked for again
        self.unavailable: str | None = None  # why robots.txt could not be read (for now)
        self.crawl_delay = 0.0
        self.slots = threading.BoundedSemaphore(per_host)


class PoliteClient:
    """A thread-safe polite HTTP client over one urllib3 pool manager (keep-alive connections)."""

    def __init__(self, user_agent: str | None, *, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 deadline: float = 120.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 max_bytes: int = 20 * 1024 * 1024, max_redirects: int = 5, min_delay: float = 0.5,
                 per_host: int = 8, robots_ttl: float = 3600.0, robots_retry: float = 60.0,
                 allow: Iterable[str] = (), pacer: Pacer | None = None, robots: dict[str, str] | None = None):
        if user_agent is not None and not user_agent.strip():
            raise ValueError("a crawler must say who it is: set a User-Agent with a contact")
        self.user_agent = user_agent
        self.connect_timeout, self.read_timeout, self.deadline = connect_timeout, read_timeout, deadline
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.max_bytes, self.max_redirects, self.min_delay = max_bytes, max_redirects, min_delay
        self.per_host, self.robots_ttl, self.robots_retry = per_host, robots_ttl, robots_retry
        self.egress = EgressPolicy(allow)
        self.pacer = pacer if pacer is not None else LocalPacer()
        self._pool = urllib3.PoolManager(
            num_pools=64, maxsize=max(per_host, 1), block=False, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout))
        self._pool.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self._hosts: dict[str, _Host] = {}
        self._hosts_lock = threading.Lock()
        self._robots_texts: dict[str, str] = {}
        for host, text in (robots or {}).items():  # rules handed over by a parent process
            self._install_robots(self._host(host), host, text)

    def config(self) -> dict:
        """Keyword arguments that rebuild an equivalent client (in another process), with the robots.txt
        rules read so far, so that a worker process does not ask for them again."""
        return {"user_agent": self.user_agent, "connect_timeout": self.connect_timeout,
                "read_timeout": self.read_timeout, "deadline": self.deadline, "retries": self.retries,
                "backoff": self.backoff, "max_backoff": self.max_backoff, "max_bytes": self.max_bytes,
                "max_redirects": self.max_redirects, "min_delay": self.min_delay, "per_host": self.per_host,
                "robots_ttl": self.robots_ttl, "robots_retry": self.robots_retry, "allow": self.egress.allow,
                "pacer": self.pacer, "robots": dict(self._robots_texts)}

    def _headers(self, target: Target, url: str) -> dict:
        if self.user_agent is None:
            if not target.loopback:
                raise FetchError(url, "no contact set: a crawler must say who runs it before it talks to "
                                      "another host (set IMAGE2SONG_CONTACT to an e-mail address or URL)")
            agent = f"{PRODUCT_TOKEN} (loopback test; no contact set)"
        else:
            agent = self.user_agent
        return {"User-Agent": agent, "Accept-Encoding": "gzip, deflate", "Host": target.host_header}

    # --- robots.txt ------------------------------------------------------------------------------

    def _host(self, host: str) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            with self._hosts_lock:
                state = self._hosts.setdefault(host, _Host(self.per_host))
        return state

    def allowed(self, url: str) -> bool:
        """Whether robots.txt lets us fetch ``url``; raises ``RobotsUnavailable`` while the host's rules
        cannot be read."""
        host = host_of(url)
        state = self._host(host)
        if time.monotonic() >= state.robots_until:
            with state.lock:
                if time.monotonic() >= state.robots_until:
                    self._refresh_robots(state, host)
        if state.unavailable:
            raise RobotsUnavailable(url, f"robots.txt unavailable ({state.unavailable}); nothing is fetched "
                                         "from this host for now, asked again later")
        return state.robots.can_fetch(url, PRODUCT_TOKEN)

    def _install_robots(self, state: _Host, host: str, text: str) -> None:
        state.robots = Protego.parse(text)
        state.robots_until, state.unavailable = time.monotonic() + self.robots_ttl, None
        state.crawl_delay = float(state.robots.crawl_delay(PRODUCT_TOKEN) or 0.0)
        self._robots_texts[host] = text

    def _refresh_robots(self, state: _Host, host: str) -> None:
        url = host + "/robots.txt"
        try:
            for _ in range(self.max_redirects + 1):  # the RFC asks for five redirects at least
                target = self.egress.target(url)
                self._wait_turn(host, target)
                raw, watch, token = self._open(target, url, {})
                try:
                    status, headers = raw.status, raw.headers
                    body = raw.read(ROBOTS_MAX_BYTES, decode_content=True) if 200 <= status < 300 else b""
                finally:
                    _WATCHDOG.disarm(token)
                    raw.close()
                    raw.release_conn()
                if status in REDIRECT_STATUSES and headers.get("location"):
                    url = urljoin(url, headers["location"])
                    continue
                break
            else:
                status, headers, body = 500, {}, b""
        except (Urllib3Error, OSError, _Retryable) as error:
            self._robots_unavailable(state, f"host unreachable: {type(error).__name__}", None)
            return
        except FetchError as error:  # the name did not resolve, or a redirect to a refused address
            self._robots_unavailable(state, str(error), None)
            return
        if status == 429 or status >= 500:
            self._robots_unavailable(state, f"HTTP {status}", _retry_after_seconds(headers.get("Retry-After")))
        elif status >= 400:
            self._install_robots(state, host, "")  # no robots.txt: everything allowed
        elif status >= 300:
            self._robots_unavailable(state, "too many redirects", None)
        else:
            self._install_robots(state, host, body.decode("utf-8", errors="replace"))

    def _robots_unavailable(self, state: _Host, why: str, retry_after: float | None) -> None:
        wait = min(self.robots_retry, retry_after) if retry_after is not None else self.robots_retry
        state.unavailable, state.robots_until = why, time.monotonic() + wait
        log.warning("robots.txt unavailable (%s): the host is left alone for %.0fs", why, wait)

    # --- pacing ----------------------------------------------------------------------------------

    def _wait_turn(self, host: str, target: Target) -> None:
        state = self._host(host)
        delay = max(0.0 if target.loopback else self.min_delay, state.crawl_delay)
        if delay <= 0 and not self.pacer.busy(host):
            return
        wait = self.pacer.reserve(host, delay) - time.time()
        if wait > 0:
            time.sleep(wait)

    def _slow_down(self, host: str, retry_after: float | None) -> None:
        penalty = self.pacer.slow_down(host, max(self.backoff, 0.05, retry_after or 0.0), retry_after,
                                       self.max_backoff)
        log.info("slowing down: %.2fs between requests to %s", penalty, host)

    # --- fetching --------------------------------------------------------------------------------

    def get(self, url: str, *, params: dict | None = None, etag: str | None = None,
            last_modified: str | None = None) -> Response:
        """GET ``url``; raises ``Refused`` when the egress policy forbids it (or a redirect target),
        ``Disallowed`` before any request when robots.txt forbids it, ``RobotsUnavailable`` while
        robots.txt cannot be read, and ``FetchError`` when it fails after the retries. A 304 comes
        back as a Response; other 4xx come back as Responses too (the caller decides)."""
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        extra = {}
        if etag:
            extra["If-None-Match"] = etag
        if last_modified:
            extra["If-Modified-Since"] = last_modified
        seen, current = [url], url
        while True:
            target = self.egress.target(current)
            self._headers(target, current)  # no contact, no request to a public host (robots.txt included)
            if not self.allowed(current):
                raise Disallowed(current)
            response = self._get_with_retries(current, target, extra)
            if response.status not in REDIRECT_STATUSES or "location" not in response.headers:
                return response
            target_url = urljoin(current, response.headers["location"])
            if target_url in seen:
                raise FetchError(url, "redirect loop: " + " → ".join(seen + [target_url])
                                 + f" (redirects are followed at most {self.max_redirects} times)", response.status)
            if len(seen) > self.max_redirects:
                raise FetchError(url, f"too many redirects (more than {self.max_redirects})", response.status)
            seen.append(target_url)
            current = target_url

    def _get_with_retries(self, url: str, target: Target, extra: dict) -> Response:
        host = host_of(url)
        state = self._host(host)
        last = "no attempt"
        for attempt in range(self.retries + 1):
            self._wait_turn(host, target)
            try:
                with state.slots:
                    return self._get_once(url, target, extra)
            except _Retryable as error:
                last = str(error)
                if error.status in SLOW_DOWN_STATUSES:
                    self._slow_down(host, error.delay)
                if error.delay is not None and error.delay > self.max_backoff:
                    raise FetchError(url, f"{last}, Retry-After {error.delay:.0f}s is beyond the "
                                          f"{self.max_backoff:.0f}s we wait", error.status) from None
                if attempt == self.retries:
                    message = "host unreachable: " + last if error.status is None and "Connect" in last else last
                    raise FetchError(url, f"{message} (after {attempt + 1} attempts)", error.status) from None
                if error.status not in SLOW_DOWN_STATUSES:  # a slow-down books its wait in the pacer
                    delay = error.delay
                    if delay is None:
                        delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())
                    time.sleep(delay)
                log.debug("retrying %s after %s", url, last)
        raise FetchError(url, last)

    def _open(self, target: Target, url: str, extra: dict):
        """Send the request to the checked address; returns (raw response, watch, watchdog token).
        The caller disarms the token and releases the response."""
        headers = {**self._headers(target, url), **extra}
        tls = {"server_hostname": target.host, "assert_hostname": target.host} if target.scheme == "https" else None
        pool = self._pool.connection_from_host(target.address, target.port, target.scheme, pool_kwargs=tls)
        watch = _Watch()
        token = _WATCHDOG.arm(time.monotonic() + self.deadline, watch)
        _current.watch = watch
        try:
            raw = pool.urlopen("GET", target.path, headers=headers, redirect=False, retries=False,
                               preload_content=False, assert_same_host=False)
        except BaseException:
            _WATCHDOG.disarm(token)
            if watch.expired:
                raise FetchError(url, f"no answer within the {self.deadline:.0f}s deadline") from None
            raise
        finally:
            _current.watch = None
        return raw, watch, token

    def _get_once(self, url: str, target: Target, extra: dict) -> Response:
        try:
            raw, watch, token = self._open(target, url, extra)
        except Urllib3Timeout as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from None
        except Urllib3Error as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from None
        complete = False
        try:
            if raw.status in RETRY_STATUSES:
                delay = _retry_after_seconds(raw.headers.get("Retry-After"))
                raise _Retryable(f"HTTP {raw.status}", raw.status, delay)
            try:
                body = self._read_capped(url, raw)
            except (_Retryable, FetchError):
                if watch.expired:
                    raise FetchError(url, f"the response took longer than the {self.deadline:.0f}s deadline "
                                          "(a server that trickles its answer is cut off)", raw.status) from None
                raise
            complete = not watch.expired
            if watch.expired:
                raise FetchError(url, f"the response took longer than the {self.deadline:.0f}s deadline", raw.status)
            return Response(url, raw.status, body, {k.lower(): v for k, v in raw.headers.items()})
        finally:
            _WATCHDOG.disarm(token)
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
