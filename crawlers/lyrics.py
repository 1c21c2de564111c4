"""Lyric providers behind one interface, and how a provider's answer is matched to a song.

``LyricProvider.find(title, artist, album, duration)`` gives the best ``LyricHit`` or None. The default
provider talks to an LRCLIB-compatible API; ``CachedProvider`` wraps any provider with a response cache
(a small protocol, ``LyricCache``, that the catalog implements: crawlers persist nothing themselves).

Matching rule: strip the extras ("feat.", "(Remastered 2011)", " - Live", bracketed notes) and try an
exact ``/api/get`` first; an exact answer is accepted only when its normalized title and artist equal
the song's and its duration is within ±2 s (when both are known). Otherwise ``/api/search`` and the best
fuzzy match (rapidfuzz) whose duration is within ±2 s and whose title and artist each reach a floor.
When that finds nothing, a last search by the title alone: its best result is accepted only when the
artist is alike and the duration agrees; otherwise it comes back flagged (``review``) with the
candidates, for a curator. Every hit carries its score (0–1) and why it was chosen; a song without any
candidate is None.

Name variants in the wild: "Song - 2011 Remaster", "Song (Live at Wembley)", "Song [Radio Edit]",
"Song - Single Version"; artists joined by "&", "and", "x", "with", "feat." or commas compare as the
same set of names, and the search asks for the first artist only (a provider that needs every artist
token would find nothing for "A & B" against "A and B").

Text from the provider is made safe (``crawlers.text.safe_text``) before anything keeps it; the hit
carries the original bytes' SHA-256 when it had to change. A per-song ``deadline`` bounds how long one
song may take: no new request starts once it has passed.
"""

from __future__ import annotations

import json
import re
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from rapidfuzz import fuzz

from crawlers.http import FetchError, PoliteClient
from crawlers.text import safe_text

DURATION_TOLERANCE = 2.0
TITLE_WEIGHT, ARTIST_WEIGHT = 0.7, 0.3
MIN_TITLE_SIMILARITY = 0.7   # a search result whose title is less alike is another song
MIN_ARTIST_SIMILARITY = 0.7  # likewise for the artist
MAX_TEXT_CHARS = 2_000_000   # a provider's text beyond this is cut (the filters flag long texts)
MAX_NAME_CHARS = 500         # titles and artists
DEFAULT_DEADLINE = 30.0      # seconds one song may take, all its requests together

_VERSION_WORDS = (r"live|remaster(ed)?|re-?master(ed)?|radio edit|single version|album version|mono|stereo|"
                  r"acoustic|demo|edit|version|mix|remix|edition|deluxe|bonus track|instrumental|explicit|clean")
_EXTRAS = re.compile(
    r"\s*[\(\[][^)\]]*[\)\]]"                                   # (Remastered 2011), [Live], (feat. X)
    # " - 2011 Remaster", " – Remastered 2009", " - Live at Wembley", " - Radio Edit", " - Mono Version"
    r"|\s+[-–—]\s+((\d{4}\s+)?(digital(ly)?\s+)?(" + _VERSION_WORDS + r"))\b.*$"
    r"|\s+(feat\.?|ft\.?|featuring)\s+.*$",
    re.IGNORECASE,
)
_ARTIST_JOINS = re.compile(r"\s*(?:,|&|\+|/|;|\band\b|\bx\b|\bwith\b|\bvs\.?|\bfeat\.?|\bft\.?|\bfeaturing\b)\s*",
                           re.IGNORECASE)


def strip_extras(text: str) -> str:
    """A title or artist without "feat." credits, bracketed notes and " - Live"-style suffixes."""
    stripped = _EXTRAS.sub("", text or "").strip()
    return stripped or (text or "").strip()


def normalize(text: str) -> str:
    """Lower-case ASCII words of a title or artist, without extras: "Héllo (Live) feat. X" -> "hello"."""
    text = _EXTRAS.sub("", text or "")  # before the ASCII fold, which would drop the en dash of " – Live"
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", " ", text.lower())
    return " ".join(text.split())


def artist_names(artist: str) -> list[str]:
    """The names in an artist credit: "A & B", "A and B", "A x B", "A with B", "A feat. B", "A, B" ->
    ["a", "b"] (normalized, in order, without repeats)."""
    ascii_text = unicodedata.normalize("NFKD", artist or "").encode("ascii", "ignore").decode()
    ascii_text = re.sub(r"\s*[\(\[][^)\]]*[\)\]]", " ", ascii_text)
    names = [" ".join(re.sub(r"[^a-z0-9]+", " ", part.lower()).split()) for part in _ARTIST_JOINS.split(ascii_text)]
    return list(dict.fromkeys(n for n in names if n))


def primary_artist(artist: str) -> str:
    """The first name of an artist credit, as a search asks for it ("A & B feat. C" -> "A")."""
    stripped = strip_extras(artist)
    first = _ARTIST_JOINS.split(stripped, maxsplit=1)[0].strip()
    return first or stripped


def artist_similarity(artist: str, other: str) -> float:
    """0–1: how alike two artist credits are, as sets of names ("A & B" and "B and A" are 1.0)."""
    mine, theirs = " ".join(sorted(artist_names(artist))), " ".join(sorted(artist_names(other)))
    if not mine and not theirs:
        return 1.0
    return max(fuzz.token_sort_ratio(mine, theirs), fuzz.token_set_ratio(mine, theirs) * 0.95) / 100


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
    review: str = ""  # why a curator must check the match (a title-only search that did not confirm it)
    original_sha256: str | None = None  # of the provider's original bytes, when they had to be made safe

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
    a = artist_similarity(artist, hit_artist)
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


def _text(value, max_len: int = MAX_TEXT_CHARS) -> tuple[str | None, str | None]:
    """A provider's string made safe, and the original's SHA-256 when it had to change."""
    if not isinstance(value, str):
        return None, None
    return safe_text(value, max_len)


def _seconds(value) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds < 86_400 else None


class LrclibProvider:
    """An LRCLIB-compatible API (https://lrclib.net/docs): ``/api/get``, then ``/api/search``."""

    name = "lrclib"

    def __init__(self, base_url: str, client: PoliteClient, *, deadline: float | None = DEFAULT_DEADLINE):
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.deadline = deadline

    def _json(self, path: str, params: dict, started: float | None = None):
        url = self.base_url + path
        if started is not None and self.deadline is not None and time.monotonic() - started > self.deadline:
            raise FetchError(url, f"per-song deadline of {self.deadline:g} s passed before this request")
        response = self.client.get(url, params=params)
        if response.status == 404:
            return None, None
        if response.status >= 400:
            raise FetchError(url, f"HTTP {response.status}", response.status)
        content_type = response.headers.get("content-type", "")
        if "json" not in content_type:
            raise BadResponse(url, f"content type {content_type!r} is not JSON")
        # A body that is not valid UTF-8 is read with U+FFFD for the bad bytes (its hash kept on the
        # hit): deferring it would ask the same question forever.
        body, body_sha256 = safe_text(response.content)
        try:
            return json.loads(body), body_sha256
        except (json.JSONDecodeError, RecursionError) as error:
            raise BadResponse(url, f"invalid JSON: {str(error)[:200]}") from error

    def _record(self, item, body_sha256: str | None = None) -> LyricHit | None:
        """A provider record as a hit (score to be set), or None when it is not a track record."""
        if not isinstance(item, dict) or not isinstance(item.get("trackName"), str):
            return None
        plain, plain_sha = _text(item.get("plainLyrics"))
        synced, synced_sha = _text(item.get("syncedLyrics"))
        title, _ = _text(item["trackName"], MAX_NAME_CHARS)
        artist, _ = _text(str(item.get("artistName") or ""), MAX_NAME_CHARS)
        track_id, _ = safe_text(str(item.get("id")), 100)
        return LyricHit(
            provider=self.name, track_id=track_id, title=title, artist=artist,
            duration=_seconds(item.get("duration")), instrumental=item.get("instrumental") is True,
            plain=plain, synced=synced, score=0.0, reason="",
            original_sha256=(plain_sha if plain else synced_sha) or plain_sha or synced_sha or body_sha256,
        )

    def find(self, title, artist, album=None, duration=None):
        started = time.monotonic()
        query_title, query_artist = strip_extras(title), primary_artist(artist)
        params = {"track_name": query_title, "artist_name": strip_extras(artist)}
        if album:
            params["album_name"] = album
        if duration:
            params["duration"] = int(round(float(duration)))
        exact, body_sha = self._json("/api/get", params, started)
        if exact:
            hit = self._record(exact, body_sha)
            if hit is None:
                raise BadResponse(self.base_url + "/api/get", f"unexpected object {str(exact)[:80]!r}")
            m = match_score(title, artist, duration, hit.title, hit.artist, hit.duration)
            if m.title == 1.0 and m.artist == 1.0 and m.duration_ok:
                return replace(hit, score=1.0, reason=f"exact lookup: {m.reason}")
        found = self._search({"track_name": query_title, "artist_name": query_artist}, title, artist, duration,
                             started)
        if found is not None:
            return found
        return self._search_title_only(query_title, title, artist, duration, started)

    def _results(self, params: dict, started: float) -> list[tuple[LyricHit, MatchScore]]:
        results, body_sha = self._json("/api/search", params, started)
        if results is None:
            results = []
        if not isinstance(results, list):
            raise BadResponse(self.base_url + "/api/search", "search did not return a list")
        return [hit for hit in (self._record(item, body_sha) for item in results[:100]) if hit is not None]

    def _search(self, params, title, artist, duration, started) -> LyricHit | None:
        best, best_m, considered, skipped = None, None, 0, []
        for hit in self._results(params, started):
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

    def _search_title_only(self, query_title, title, artist, duration, started) -> LyricHit | None:
        """The last try: search by title alone. Accepted when the artist is alike and the duration is
        known on both sides and agrees; when only one of the two agrees the best title match goes to a
        curator with the candidates (``review``); when neither does, it is another song (None)."""
        scored = []
        for hit in self._results({"track_name": query_title}, started):
            m = match_score(title, artist, duration, hit.title, hit.artist, hit.duration)
            if m.title >= MIN_TITLE_SIMILARITY:
                scored.append((m.artist, m.duration_ok and m.duration_delta is not None, m.score, hit, m))
        if not scored:
            return None
        scored.sort(key=lambda entry: (entry[1], entry[0], entry[2]), reverse=True)
        _, duration_agrees, _, hit, m = scored[0]
        artist_agrees = m.artist >= MIN_ARTIST_SIMILARITY
        if artist_agrees and duration_agrees:
            return replace(hit, score=m.score, reason=f"title-only search, artist and duration agree: {m.reason}")
        if not (artist_agrees or duration_agrees):
            return None  # the same title by someone else, of another length: another song
        candidates = "; ".join(f"{h.title!r} by {h.artist!r} ({'?' if h.duration is None else f'{h.duration:g}'} s)"
                               for *_, h, _ in scored[:5])
        why = (f"title-only search: artist or duration does not confirm the match ({m.reason}); "
               f"candidates: {candidates}")
        return replace(hit, score=m.score, reason=why, review=why)


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
