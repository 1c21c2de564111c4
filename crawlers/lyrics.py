"""Lyric providers. The default talks to an LRCLIB-compatible API (``/api/get``, then ``/api/search``).

Matching rule: normalize title and artist (case, accents, punctuation, "feat.", bracketed and
" - Live"/"Remastered" extras); try an exact ``/api/get`` first; otherwise search and take the best
fuzzy match whose duration is within ±2 s when both durations are known. Each hit carries its score
(0–1) and why it was chosen.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Protocol

from rapidfuzz import fuzz

from crawlers.http import FetchError, PoliteClient

DURATION_TOLERANCE = 2.0
_EXTRAS = re.compile(
    r"\s*[\(\[][^)\]]*[\)\]]"                                   # (Remastered 2011), [Live]
    r"|\s+-\s+(live|remaster(ed)?|radio edit|single version|acoustic)\b.*$"
    r"|\s+(feat\.?|ft\.?|featuring)\s+.*$",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """Lower-case ASCII words of a title or artist, without extras: "Héllo (Live) feat. X" -> "hello"."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = _EXTRAS.sub("", text)
    text = re.sub(r"[^a-z0-9]+", " ", text.lower())
    return " ".join(text.split())


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


class LyricProvider(Protocol):
    name: str

    def find(self, title: str, artist: str, album: str | None, duration: float | None) -> LyricHit | None:
        """The best lyric for a song, or None when the provider has none."""


class BadResponse(FetchError):
    """The provider answered with something that is not the JSON it promises."""


class LrclibProvider:
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
        if "json" not in response.headers.get("content-type", ""):
            raise BadResponse(url, f"content type {response.headers.get('content-type')!r} is not JSON")
        try:
            return json.loads(response.content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadResponse(url, f"invalid JSON: {error}") from error

    def _hit(self, item: dict, score: float, reason: str) -> LyricHit:
        if not isinstance(item, dict) or "trackName" not in item:
            raise BadResponse(self.base_url, f"unexpected object {str(item)[:80]!r}")
        return LyricHit(
            provider=self.name, track_id=str(item.get("id")), title=str(item.get("trackName")),
            artist=str(item.get("artistName")), duration=item.get("duration"),
            instrumental=bool(item.get("instrumental")), plain=item.get("plainLyrics"),
            synced=item.get("syncedLyrics"), score=score, reason=reason,
        )

    def find(self, title, artist, album=None, duration=None):
        clean_title, clean_artist = normalize(title), normalize(artist)
        params = {"track_name": clean_title, "artist_name": clean_artist}
        if album:
            params["album_name"] = album
        if duration:
            params["duration"] = int(duration)
        exact = self._json("/api/get", params)
        if exact:
            return self._hit(exact, 1.0, "exact match on normalized title and artist")
        results = self._json("/api/search", {"track_name": clean_title, "artist_name": clean_artist}) or []
        if not isinstance(results, list):
            raise BadResponse(self.base_url, "search did not return a list")
        best = None
        for item in results:
            hit = self._hit(item, 0.0, "")
            if duration and hit.duration and abs(float(hit.duration) - float(duration)) > DURATION_TOLERANCE:
                continue
            score = (fuzz.token_sort_ratio(clean_title, normalize(hit.title)) * 0.7
                     + fuzz.token_sort_ratio(clean_artist, normalize(hit.artist)) * 0.3) / 100
            if best is None or score > best.score:
                best = LyricHit(**{**hit.__dict__, "score": round(score, 3),
                                   "reason": f"fuzzy search match (title 70%, artist 30%) = {score:.2f}"})
        return best
