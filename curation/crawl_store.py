"""What the crawlers find, written into the catalog: crawl state, posts, songs, images and lyrics.

``CatalogCrawlState`` implements ``crawlers.state.CrawlState``; every write here is an upsert, so a
stage re-run after a crash neither duplicates nor loses rows.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from crawlers.images import FetchedImage
from crawlers.lyrics import LyricHit, normalize
from crawlers.sharing_site import PostRecord
from curation.catalog import CrawlUrl, Image, LyricCandidate, Post, Song, Source, session_scope

MAX_ATTEMPTS = 3
SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp"}


def now() -> datetime:
    return datetime.now(timezone.utc)


def ensure_source(db_url: str, name: str, kind: str, base_url: str) -> int:
    with session_scope(db_url) as session:
        source = session.scalar(select(Source).where(Source.name == name))
        if source is None:
            source = Source(name=name, kind=kind, base_url=base_url)
            session.add(source)
            session.flush()
        return source.id


class CatalogCrawlState:
    """The crawl frontier and per-URL outcomes of one source, kept in the catalog."""

    def __init__(self, db_url: str, source_id: int):
        self.db_url, self.source_id = db_url, source_id

    def add(self, kind: str, urls: Iterable[str]) -> int:
        urls = list(dict.fromkeys(urls))
        if not urls:
            return 0
        with session_scope(self.db_url) as session:
            known = set(session.scalars(select(CrawlUrl.url).where(
                CrawlUrl.source_id == self.source_id, CrawlUrl.url.in_(urls))))
            session.add_all(CrawlUrl(source_id=self.source_id, url=url, kind=kind)
                            for url in urls if url not in known)
        return len(urls) - len(known)

    def pending(self, kind: str, limit: int | None = None) -> list[str]:
        with session_scope(self.db_url) as session:
            query = (select(CrawlUrl.url).where(
                CrawlUrl.source_id == self.source_id, CrawlUrl.kind == kind,
                (CrawlUrl.status == "pending") | ((CrawlUrl.status == "error") & (CrawlUrl.attempts < MAX_ATTEMPTS)))
                .order_by(CrawlUrl.id).limit(limit))
            return list(session.scalars(query))

    def validators(self, url: str) -> tuple[str | None, str | None]:
        with session_scope(self.db_url) as session:
            row = session.execute(select(CrawlUrl.etag, CrawlUrl.last_modified).where(
                CrawlUrl.source_id == self.source_id, CrawlUrl.url == url)).first()
            return (row.etag, row.last_modified) if row else (None, None)

    def record(self, url, status, *, http_status=None, error=None, etag=None, last_modified=None):
        values = {"status": status, "http_status": http_status, "error": error, "fetched_at": now(),
                  "attempts": CrawlUrl.attempts + 1}
        # A 304 may omit the validators: keep the ones we have.
        if etag:
            values["etag"] = etag
        if last_modified:
            values["last_modified"] = last_modified
        with session_scope(self.db_url) as session:
            updated = session.execute(update(CrawlUrl).where(
                CrawlUrl.source_id == self.source_id, CrawlUrl.url == url).values(**values)).rowcount
            if not updated:
                session.add(CrawlUrl(source_id=self.source_id, url=url, kind="list", **{
                    **values, "attempts": 1}))

    def counts(self) -> dict[str, int]:
        with session_scope(self.db_url) as session:
            rows = session.execute(select(CrawlUrl.kind, CrawlUrl.status, func.count()).where(
                CrawlUrl.source_id == self.source_id).group_by(CrawlUrl.kind, CrawlUrl.status))
            return {f"{kind}:{status}": n for kind, status, n in rows}


def song_key(title: str, artist: str) -> str:
    return f"{normalize(title)}|{normalize(artist)}"


def store_posts(db_url: str, source_id: int, posts: Iterable[PostRecord]) -> int:
    """Upsert posts (with their song and image URL); returns how many were new."""
    new = 0
    with session_scope(db_url) as session:
        for record in posts:
            song = _upsert_song(session, record)
            image = session.scalar(select(Image).where(Image.url == record.image_url))
            if image is None:
                image = Image(url=record.image_url)
                session.add(image)
                session.flush()
            post = session.scalar(select(Post).where(
                Post.source_id == source_id, Post.external_id == record.external_id))
            if post is None:
                post = Post(source_id=source_id, external_id=record.external_id)
                session.add(post)
                new += 1
            post.url, post.song_id, post.image_id = record.url, song.id, image.id
            post.mood, post.favorite_count, post.crawled_at = record.mood, record.favorite_count, now()
    return new


def _upsert_song(session: Session, record: PostRecord) -> Song:
    key = song_key(record.title, record.artist)
    song = session.scalar(select(Song).where(Song.norm_key == key))
    if song is None:
        song = Song(norm_key=key, title=record.title, artist=record.artist, album=record.album,
                    duration=record.duration)
        session.add(song)
        session.flush()
    return song


def images_to_fetch(db_url: str, limit: int | None = None) -> list[str]:
    with session_scope(db_url) as session:
        return list(session.scalars(select(Image.url).where(Image.status.in_(("pending", "error")))
                                    .order_by(Image.id).limit(limit)))


def record_image(db_url: str, url: str, *, fetched: FetchedImage | None = None, error: str | None = None) -> None:
    with session_scope(db_url) as session:
        image = session.scalar(select(Image).where(Image.url == url))
        image.fetched_at = now()
        if fetched is None:
            image.status, image.error = "error", error
            return
        image.status, image.error = "stored", None
        image.sha256, image.phash = fetched.sha256, fetched.phash
        image.width, image.height = fetched.width, fetched.height
        image.size_bytes, image.content_type = len(fetched.data), fetched.content_type


def image_key(sha256: str, content_type: str) -> str:
    from curation.object_store import ObjectStore

    return ObjectStore.key_for(sha256, SUFFIXES.get(content_type, ""))


def songs_without_lyrics(db_url: str, provider: str) -> list[dict]:
    """Songs that have no candidate from ``provider`` yet (a failed request left none: asked again)."""
    with session_scope(db_url) as session:
        has_candidate = select(LyricCandidate.song_id).where(LyricCandidate.provider == provider)
        rows = session.scalars(select(Song).where(Song.id.not_in(has_candidate)).order_by(Song.id))
        return [{"id": s.id, "title": s.title, "artist": s.artist, "album": s.album, "duration": s.duration}
                for s in rows]


def store_lyric(db_url: str, song_id: int, provider: str, hit: LyricHit | None) -> None:
    """Keep what the provider answered, a hit or "none found", as the song's candidate (idempotent).
    A failed request is not an answer: the caller stores nothing, and the next run asks again."""
    from curation.lyric_text import text_hash

    with session_scope(db_url) as session:
        candidate = session.scalar(select(LyricCandidate).where(
            LyricCandidate.song_id == song_id, LyricCandidate.provider == provider))
        if candidate is None:
            candidate = LyricCandidate(song_id=song_id, provider=provider)
            session.add(candidate)
        if hit is None:
            candidate.text, candidate.match_score = None, 0.0
            candidate.match_reason = "the provider has no lyric for this song"
        else:
            candidate.provider_track_id = hit.track_id
            # The original text, as the provider gave it (curators see it); synced lyrics only when
            # there is no plain text (cleaning drops their timestamps for modeling).
            candidate.text = hit.plain if (hit.plain or "").strip() else hit.synced
            candidate.instrumental, candidate.match_score, candidate.match_reason = hit.instrumental, hit.score, hit.reason
            candidate.scores = {"matched_title": hit.title, "matched_artist": hit.artist,
                                "matched_duration": hit.duration, "synced": bool(hit.synced and not hit.plain)}
        candidate.text_hash = text_hash(candidate.text)
        candidate.verdict, candidate.reason, candidate.decided_by = "pending", None, None
