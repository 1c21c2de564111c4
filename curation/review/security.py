"""The review app's guards that are not about one route: protective headers, a cap on request
bodies, login throttling, and which address a request comes from (behind a trusted proxy)."""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Pure ASGI middleware: the same protective headers on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in SECURITY_HEADERS if name not in names]
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Pure ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app sees
    any of it (by its Content-Length, or while it streams in when it has none)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _too_large(self, send):
        body = f'{{"error": "request body over {self.max_bytes:,} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                return await self._too_large(send)
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


@dataclass
class ThrottleConfig:
    free_failures: int = 3  # per account, before any delay
    base_delay: float = 1.0  # then 1, 2, 4, … seconds between attempts on that account
    max_delay: float = 900.0
    address_failures: int = 100  # per address within address_window: an anonymous flood, not an office
    address_window: float = 300.0
    forget_after: float = 3600.0  # an account's failures are forgotten after this long without one


class LoginThrottle:
    """Failed logins slow down the account they aim at, with growing delays (never a lockout of a
    whole address: twenty curators behind one office address keep working while one of them
    mistypes), and an address that fails very often (a flood over many names) is refused for a while.
    In memory, bounded in size; one server process."""

    MAX_KEYS = 50_000

    def __init__(self, config: ThrottleConfig):
        self.config = config
        self.accounts: OrderedDict[str, tuple[int, float]] = OrderedDict()  # name -> (failures, last)
        self.addresses: OrderedDict[str, deque] = OrderedDict()
        self.lock = threading.Lock()

    def _delay(self, failures: int) -> float:
        over = failures - self.config.free_failures
        return 0.0 if over < 0 else min(self.config.max_delay, self.config.base_delay * 2 ** over)

    def wait_seconds(self, name: str, address: str, now: float | None = None) -> tuple[float, str]:
        """How long this attempt must wait (0: go ahead), and why."""
        now = time.monotonic() if now is None else now
        with self.lock:
            stamps = self.addresses.get(address)
            if stamps:
                while stamps and stamps[0] < now - self.config.address_window:
                    stamps.popleft()
                if len(stamps) >= self.config.address_failures:
                    return stamps[0] + self.config.address_window - now, "address"
            failures, last = self.accounts.get(name.lower(), (0, 0.0))
            if failures and now - last > self.config.forget_after:
                self.accounts.pop(name.lower(), None)
                return 0.0, ""
            wait = last + self._delay(failures) - now if failures else 0.0
            return (wait, "account") if wait > 0 else (0.0, "")

    def failed(self, name: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            key = name.lower()
            failures, _ = self.accounts.pop(key, (0, 0.0))
            self.accounts[key] = (failures + 1, now)
            stamps = self.addresses.pop(address, deque())
            stamps.append(now)
            self.addresses[address] = stamps
            for table in (self.accounts, self.addresses):
                while len(table) > self.MAX_KEYS:
                    table.popitem(last=False)

    def succeeded(self, name: str) -> None:
        with self.lock:
            self.accounts.pop(name.lower(), None)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def parse_networks(spec: str | list[str] | tuple[str, ...] | None) -> tuple:
    """``"10.0.0.1, 192.168.0.0/24"`` (or a list) -> networks; empty: trust no proxy."""
    if not spec:
        return ()
    items = spec.split(",") if isinstance(spec, str) else spec
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple) -> str:
    """The address a request comes from. Only when the peer is a trusted proxy is X-Forwarded-For
    read, from the right: the first address that is not itself a trusted proxy is the client (the
    left part can be anything a client wrote)."""
    peer = peer or "?"
    if not trusted or not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    for hop in reversed([part.strip() for part in forwarded_for.split(",")][:20]):
        if not hop:
            continue
        if not _is_trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: the proxy itself is all we know
    return peer


def _is_trusted(address: str, trusted: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
