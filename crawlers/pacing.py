"""One pace per host: the slots of every request to a host are booked in one place.

A ``Pacer`` keeps, per host, the time its next request may go (``next_at``) and a slow-down
(``penalty``, seconds between requests) that a 429 or 503 raised. The slow-down fades linearly to nothing
over ``fade`` seconds: it decays with time, not with successes, so a burst of quick answers right
after a 429 does not cancel it.

``LocalPacer`` books slots inside one process. A pacer shared by every worker process and shard of a
crawl (``curation.crawl_store.CatalogPacer``, through the catalog) implements the same protocol; the
HTTP client only ever talks to the protocol. Times are wall-clock seconds (``time.time()``) so that
processes agree on them.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

FADE_SECONDS = 120.0  # a slow-down is gone this long after the last 429/503


class Pacer(Protocol):
    shared: bool  # True when every process that builds this pacer books from the same slots

    def reserve(self, host: str, delay: float) -> float:
        """Book the host's next slot: at the earliest now, and ``max(delay, slow-down)`` after the
        slot booked before it. Returns the wall-clock time at which the request may go."""

    def slow_down(self, host: str, penalty: float, retry_after: float | None, max_penalty: float) -> float:
        """A 429/503: raise the host's slow-down to ``max(2 × current, penalty)`` (at most
        ``max_penalty``) and send nothing for ``retry_after`` seconds (without one: the new slow-down).
        Returns the new slow-down."""

    def busy(self, host: str) -> bool:
        """Whether the host has a slow-down or a booked future slot (may lag a second behind)."""


def faded(penalty: float, since: float, now: float, fade: float = FADE_SECONDS) -> float:
    """What is left of a slow-down ``penalty`` set at ``since``."""
    left = 1.0 - (now - since) / fade
    return penalty * left if left > 0 else 0.0


class _HostPace:
    __slots__ = ("next_at", "penalty", "penalty_at")

    def __init__(self):
        self.next_at, self.penalty, self.penalty_at = 0.0, 0.0, 0.0


class LocalPacer:
    """Slots booked in this process only (a single-process crawl, or tests). Pickles into a fresh one."""

    shared = False

    def __init__(self, fade: float = FADE_SECONDS):
        self.fade = fade
        self._hosts: dict[str, _HostPace] = {}
        self._lock = threading.Lock()

    def __reduce__(self):
        return LocalPacer, (self.fade,)

    def _get(self, host: str) -> _HostPace:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts.setdefault(host, _HostPace())
        return state

    def reserve(self, host: str, delay: float) -> float:
        with self._lock:
            state, now = self._get(host), time.time()
            step = max(delay, faded(state.penalty, state.penalty_at, now, self.fade))
            slot = max(now, state.next_at)
            state.next_at = slot + step
            return slot

    def slow_down(self, host: str, penalty: float, retry_after: float | None, max_penalty: float) -> float:
        with self._lock:
            state, now = self._get(host), time.time()
            current = faded(state.penalty, state.penalty_at, now, self.fade)
            state.penalty, state.penalty_at = min(max_penalty, max(2 * current, penalty)), now
            wait = retry_after if retry_after is not None else state.penalty
            state.next_at = max(state.next_at, now + wait)
            return state.penalty

    def busy(self, host: str) -> bool:
        state, now = self._get(host), time.time()
        return state.next_at > now or faded(state.penalty, state.penalty_at, now, self.fade) > 0
