"""Lyric providers behind one interface, and how a provider's answer is matched to a song.

``LyricProvider.find(title, artist, album, duration)`` gives the best ``LyricHit`` or None. The default
provider talks to an LRCLIB-compatible API; ``CachedProvider`` wraps any provider with a response cache
(a small protocol, ``LyricCache``, that the catalog implements: crawlers persist nothing themselves).

Matching rule: strip the extras ("feat.", "(Remastered 2011)", " - Live", bracketed notes) and try an
exact ``/api/get`` first; an exact answer is accepted only when its normalized title and artist equal
the song's and its duration is within ±2 s (when both are known). Otherwise ``/api/search`` and the best
fuzzy match (rapidfuzz) whose duration is within ±2 s and whose title and artist each reach a floor.
Every hit carries its score (0–1) and why it was chosen; a song without an acceptable candidate is None.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from rapidfuzz import fuzz

from crawlers.http import FetchError, PoliteClient

DURATION_TOLERANCE = 2.0
TITLE_WEIGHT, ARTIST_WEIGHT = 0.7, 0.3
MIN_TITLE_SIMILARITY = 0.7   # a search result whose title is less alike is another song
MIN_ARTIST_SIMILARITY = 0.7  # likewise for the artist
MAX_TEXT_CHARS = 2_000_000   # a provider's text beyond this is cut (the filters flag long texts)

_EXTRAS = re.compile(
    r"\s*[\(\[][^)\]]*[\)\]]"                                   # (Remastered 2011), [Live]
    r"|\s+-\s+(live|remaster(ed)?|radio edit|single version|acoustic|mono|stereo|demo|edit)\b.*$"
    r"|\s+(feat\.?|ft\.?|featuring)\s+.*$",
    re.IGNORECASE,
)


def strip_extras(text: str) -> str:
    """A title or artist without "feat." credits, bracketed notes and " - Live"-style suffixes."""
    stripped = _EXTRAS.sub("", text or "").strip()
    return stripped or (text or "").strip()


def normalize(text: str) -> str:
    """Lower-case ASCII words of a title or artist, without extras: "Héllo (Live) feat. X" -> "hello"."""
    text = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode()
    text = _EXTRAS.sub("", text)
    text = re.sub(r"[^a-z0-9]+", " ", text.lower())
    return " ".join(text.split())


def cache_key(title: str, artist: str, duration: float | None) -> str:
    """The response cache's key: normalized title and artist, and the duration in whole seconds."""
    seconds = "" if not duration else str(int(round(float(duration))))
    return f"{normalize(title)}|{normalize(artist)}|{seconds}"


@dataclass(frozen=True)
class LyricHit:
    provider: str
    track_id: str
    title: str
    artist: str
    duration: float | None
    instrumental: bool
    plain: str | None
    synced: str | None
    score: float = 1.0
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MatchScore:
    score: float          # 0-1, title and artist similarity weighted 70/30
    title: float
    artist: float
    duration_delta: float | None
    duration_ok: bool
    reason: str


def match_score(title: str, artist: str, duration: float | None,
                hit_title: str, hit_artist: str, hit_duration: float | None) -> MatchScore:
    """How well a provider's record fits a song, with the explanation curators see."""
    t = fuzz.token_sort_ratio(normalize(title), normalize(hit_title)) / 100
    a = fuzz.token_sort_ratio(normalize(artist), normalize(hit_artist)) / 100
    score = round(TITLE_WEIGHT * t + ARTIST_WEIGHT * a, 3)
    delta = None
    if duration and hit_duration:
        delta = round(abs(float(hit_duration) - float(duration)), 1)
    ok = delta is None or delta <= DURATION_TOLERANCE
    when = "duration unknown" if delta is None else f"duration off by {delta:g} s"
    return MatchScore(score, round(t, 3), round(a, 3), delta, ok,
                      f"title {t:.2f}, artist {a:.2f} (weighted 70/30 = {score:.2f}), {when}")


class LyricProvider(Protocol):
    name: str

    def find(self, title: str, artist: str, album: str | None = None,
             duration: float | None = None) -> LyricHit | None:
        """The best lyric for a song, or None when the provider has none. Raises FetchError when the
        provider could not be asked (that is not an answer: ask again later)."""


class LyricCache(Protocol):
    """Where provider answers are kept (the catalog implements it). ``get`` returns None when nothing
    is cached, else ``{"hit": dict | None}``; a cached "none found" is an answer too."""

    def get(self, provider: str, key: str) -> dict | None: ...

    def put(self, provider: str, key: str, hit: dict | None) -> None: ...


class BadResponse(FetchError):
    """The provider answered with something that is not the JSON it promises."""


def _text(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return None
    return value[:MAX_TEXT_CHARS]


def _seconds(value) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds < 86_400 else None


class LrclibProvider:
    """An LRCLIB-compatible API (https://lrclib.net/docs): ``/api/get``, then ``/api/search``."""

    name = "lrclib"

    def __init__(self, base_url: str, client: PoliteClient):
        self.base_url = base_url.rstrip("/")
        self.client = client

    def _json(self, path: str, params: dict):
        url = self.base_url + path
        response = self.client.get(url, params=params)
        if response.status == 404:
            return None
        if response.status >= 400:
            raise FetchError(url, f"HTTP {response.status}", response.status)
        content_type = response.headers.get("content-type", "")
        if "json" not in content_type:
            raise BadResponse(url, f"content type {content_type!r} is not JSON")
        try:
            return json.loads(response.content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise BadResponse(url, f"invalid JSON: {str(error)[:200]}") from error

    def _record(self, item) -> LyricHit | None:
        """A provider record as a hit (score to be set), or None when it is not a track record."""
        if not isinstance(item, dict) or not isinstance(item.get("trackName"), str):
            return None
        return LyricHit(
            provider=self.name, track_id=str(item.get("id"))[:100], title=item["trackName"][:500],
            artist=str(item.get("artistName") or "")[:500], duration=_seconds(item.get("duration")),
            instrumental=item.get("instrumental") is True, plain=_text(item.get("plainLyrics")),
            synced=_text(item.get("syncedLyrics")), score=0.0, reason="",
        )

    def find(self, title, artist, album=None, duration=None):
        query_title, query_artist = strip_extras(title), strip_extras(artist)
        params = {"track_name": query_title, "artist_name": query_artist}
        if album:
            params["album_name"] = album
        if duration:
            params["duration"] = int(round(float(duration)))
        exact = self._json("/api/get", params)
        if exact:
            hit = self._record(exact)
            if hit is None:
                raise BadResponse(self.base_url + "/api/get", f"unexpected object {str(exact)[:80]!r}")
            m = match_score(title, artist, duration, hit.title, hit.artist, hit.duration)
            if m.title == 1.0 and m.artist == 1.0 and m.duration_ok:
                return replace(hit, score=1.0, reason=f"exact lookup: {m.reason}")
        results = self._json("/api/search", {"track_name": query_title, "artist_name": query_artist})
        if results is None:
            results = []
        if not isinstance(results, list):
            raise BadResponse(self.base_url + "/api/search", "search did not return a list")
        best, best_m, considered, skipped = None, None, 0, []
        for item in results[:100]:
            hit = self._record(item)
            if hit is None:
                continue
            considered += 1
            m = match_score(title, artist, duration, hit.title, hit.artist, hit.duration)
            if not m.duration_ok:
                skipped.append("duration")
                continue
            if m.title < MIN_TITLE_SIMILARITY or m.artist < MIN_ARTIST_SIMILARITY:
                skipped.append("name")
                continue
            if best_m is None or m.score > best_m.score:
                best, best_m = hit, m
        if best is None:
            return None
        why = f"fuzzy search: best of {considered} results; {best_m.reason}"
        if skipped:
            why += f"; {skipped.count('duration')} skipped for duration, {skipped.count('name')} for names"
        return replace(best, score=best_m.score, reason=why)


class CachedProvider:
    """Any provider, with its answers (hits and "none found") kept in a ``LyricCache`` keyed by the
    normalized (title, artist, duration). Failures are not cached.

    ``find`` reads and writes the cache. With worker threads on a SQLite catalog, call ``lookup`` in
    the workers (it only reads) and ``remember`` from one thread, beside the other catalog writes."""

    def __init__(self, provider: LyricProvider, cache: LyricCache):
        self.provider, self.cache = provider, cache
        self.name = provider.name
        self.hits = self.misses = 0
        self._count_lock = threading.Lock()

    def lookup(self, title, artist, album=None, duration=None) -> tuple[LyricHit | None, bool]:
        """The answer and whether it came from the cache (then there is nothing to remember)."""
        cached = self.cache.get(self.name, cache_key(title, artist, duration))
        with self._count_lock:
            self.hits, self.misses = self.hits + (cached is not None), self.misses + (cached is None)
        if cached is not None:
            return (LyricHit(**cached["hit"]) if cached.get("hit") else None), True
        return self.provider.find(title, artist, album, duration), False

    def remember(self, title, artist, duration, hit: LyricHit | None) -> None:
        self.cache.put(self.name, cache_key(title, artist, duration), hit.as_dict() if hit else None)

    def find(self, title, artist, album=None, duration=None):
        hit, cached = self.lookup(title, artist, album, duration)
        if not cached:
            self.remember(title, artist, duration, hit)
        return hit
