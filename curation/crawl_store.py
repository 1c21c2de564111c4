"""What the crawlers find, written into the catalog: crawl state, posts, songs, images and lyrics.

``CatalogCrawlState`` implements ``crawlers.state.CrawlState``; every write here is an upsert, so a
stage re-run after a crash neither duplicates nor loses rows.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from sqlalchemy import bindparam, case, func, literal, select, update
from sqlalchemy.orm import Session

from crawlers.lyrics import MAX_TEXT_CHARS, LyricHit, normalize
from crawlers.pacing import FADE_SECONDS, faded
from crawlers.text import safe_text
from crawlers.sources import PostRecord
from curation.catalog import CrawlUrl, HostPace, Image, LyricCandidate, Post, Song, Source, session_scope

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
    """The crawl frontier and per-URL outcomes of one source, kept in the catalog.

    ``shard``/``shards`` restrict ``pending`` to one shard of the frontier (by row id), so that shards
    crawled side by side never fetch the same URL."""

    def __init__(self, db_url: str, source_id: int, *, shard: int = 0, shards: int = 1):
        self.db_url, self.source_id, self.shard, self.shards = db_url, source_id, shard, shards

    def add(self, kind: str, urls: Iterable[str]) -> list[str]:
        urls = list(dict.fromkeys(urls))
        if not urls:
            return []
        with session_scope(self.db_url) as session:
            known = set()
            for start in range(0, len(urls), 500):
                known.update(session.scalars(select(CrawlUrl.url).where(
                    CrawlUrl.source_id == self.source_id, CrawlUrl.url.in_(urls[start:start + 500]))))
            _insert_ignore(session, CrawlUrl, [{"source_id": self.source_id, "url": url, "kind": kind,
                                               "status": "pending", "attempts": 0} for url in urls],
                           ["source_id", "url"])
        return [url for url in urls if url not in known]

    def pending(self, kind: str, limit: int | None = None) -> list[str]:
        with session_scope(self.db_url) as session:
            query = (select(CrawlUrl.url).where(
                CrawlUrl.source_id == self.source_id, CrawlUrl.kind == kind,
                (CrawlUrl.status == "pending") | ((CrawlUrl.status == "error") & (CrawlUrl.attempts < MAX_ATTEMPTS)))
                .order_by(CrawlUrl.id).limit(limit))
            if self.shards > 1:
                query = query.where(CrawlUrl.id % self.shards == self.shard)
            return list(session.scalars(query))

    def validators(self, url: str) -> tuple[str | None, str | None]:
        with session_scope(self.db_url) as session:
            row = session.execute(select(CrawlUrl.etag, CrawlUrl.last_modified).where(
                CrawlUrl.source_id == self.source_id, CrawlUrl.url == url)).first()
            return (row.etag, row.last_modified) if row else (None, None)

    def validators_many(self, urls: list[str]) -> dict[str, tuple[str | None, str | None]]:
        found = {}
        with session_scope(self.db_url) as session:
            for start in range(0, len(urls), 500):
                rows = session.execute(select(CrawlUrl.url, CrawlUrl.etag, CrawlUrl.last_modified).where(
                    CrawlUrl.source_id == self.source_id, CrawlUrl.url.in_(urls[start:start + 500]),
                    (CrawlUrl.etag.is_not(None)) | (CrawlUrl.last_modified.is_not(None))))
                found.update((url, (etag, modified)) for url, etag, modified in rows)
        return found

    def record(self, url, status, *, http_status=None, error=None, etag=None, last_modified=None):
        self.record_many([{"url": url, "status": status, "http_status": http_status, "error": error,
                           "etag": etag, "last_modified": last_modified}])

    def record_many(self, outcomes: list[dict], posts: list[PostRecord] = ()) -> int:
        """Record many URL outcomes (and store ``posts``) in ONE transaction: after a crash either all
        of them are in the catalog or none is. Returns how many posts were new."""
        with session_scope(self.db_url) as session:
            new = _store_posts(session, self.source_id, list(posts)) if posts else 0
            _record_urls(session, self.source_id, outcomes)
        return new

    def counts(self) -> dict[str, int]:
        with session_scope(self.db_url) as session:
            rows = session.execute(select(CrawlUrl.kind, CrawlUrl.status, func.count()).where(
                CrawlUrl.source_id == self.source_id).group_by(CrawlUrl.kind, CrawlUrl.status))
            return {f"{kind}:{status}": n for kind, status, n in rows}


def _insert_ignore(session: Session, model, rows: list[dict], keys: list[str]) -> None:
    """INSERT … ON CONFLICT DO NOTHING (SQLite and PostgreSQL): safe when shards race on the same row."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    for start in range(0, len(rows), 500):
        session.execute(insert(model).on_conflict_do_nothing(index_elements=keys), rows[start:start + 500])


def _record_urls(session: Session, source_id: int, outcomes: list[dict]) -> None:
    """Each outcome's status, HTTP status, error and validators; an error on the last attempt of the
    retry budget (MAX_ATTEMPTS) becomes ``failed``, for good, with its reason. A ``deferred`` outcome
    (robots.txt unavailable) records nothing: the URL stays as it was."""
    outcomes = [o for o in outcomes if o["status"] != "deferred"]
    if not outcomes:
        return
    _insert_ignore(session, CrawlUrl, [{"source_id": source_id, "url": o["url"], "kind": o.get("kind", "list"),
                                        "status": "pending", "attempts": 0} for o in outcomes], ["source_id", "url"])
    table, at = CrawlUrl.__table__, now()
    rows = [{"b_url": o["url"], "b_status": o["status"], "b_http": o.get("http_status"), "b_error": o.get("error"),
             "b_etag": o.get("etag"), "b_modified": o.get("last_modified"), "b_at": at} for o in outcomes]
    status = case(((bindparam("b_status") == "error") & (table.c.attempts + 1 >= MAX_ATTEMPTS), "failed"),
                  else_=bindparam("b_status"))
    # A 304 may omit the validators: keep the ones we have.
    session.execute(update(table).where(table.c.source_id == source_id, table.c.url == bindparam("b_url")).values(
        status=status, http_status=bindparam("b_http"), error=bindparam("b_error"),
        etag=func.coalesce(bindparam("b_etag"), table.c.etag),
        last_modified=func.coalesce(bindparam("b_modified"), table.c.last_modified),
        fetched_at=bindparam("b_at"), attempts=table.c.attempts + 1), rows)


def posted_time(value: str | None) -> datetime | None:
    """A site's post time (ISO 8601) as an aware datetime (UTC when it names no zone); None when absent
    or unreadable (the tie-break then falls back to the post id)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def song_key(title: str, artist: str) -> str:
    """The normalized "title|artist" (each part cut so the key fits its 600-character column)."""
    return f"{normalize(title)[:299]}|{normalize(artist)[:299]}"


def store_posts(db_url: str, source_id: int, posts: Iterable[PostRecord]) -> int:
    """Upsert posts (with their song and image URL) in one transaction; returns how many were new."""
    with session_scope(db_url) as session:
        return _store_posts(session, source_id, list(posts))


def _store_posts(session: Session, source_id: int, posts: list[PostRecord]) -> int:
    if not posts:
        return 0
    posts = list({p.external_id: p for p in posts}.values())  # the last word on a post wins
    songs = {song_key(p.title, p.artist): p for p in posts}
    _insert_ignore(session, Song, [{"norm_key": key, "title": p.title, "artist": p.artist, "album": p.album,
                                    "duration": p.duration, "created_at": now()} for key, p in songs.items()],
                   ["norm_key"])
    song_ids = dict(session.execute(select(Song.norm_key, Song.id).where(Song.norm_key.in_(list(songs)))).all())
    urls = list({p.image_url for p in posts})
    _insert_ignore(session, Image, [{"url": url, "status": "pending", "attempts": 0} for url in urls], ["url"])
    image_ids = dict(session.execute(select(Image.url, Image.id).where(Image.url.in_(urls))).all())
    existing = set(session.scalars(select(Post.external_id).where(
        Post.source_id == source_id, Post.external_id.in_([p.external_id for p in posts]))))
    at = now()
    rows = [{"source_id": source_id, "external_id": p.external_id, "url": p.url,
             "song_id": song_ids[song_key(p.title, p.artist)], "image_id": image_ids[p.image_url],
             "mood": p.mood, "favorite_count": p.favorite_count, "crawled_at": at,
             "posted_at": posted_time(p.posted_at)} for p in posts]
    _insert_ignore(session, Post, [r for r in rows if r["external_id"] not in existing], ["source_id", "external_id"])
    changed = [{**{f"b_{k}": v for k, v in r.items()}} for r in rows if r["external_id"] in existing]
    if changed:
        table = Post.__table__
        session.execute(update(table).where(table.c.source_id == bindparam("b_source_id"),
                                            table.c.external_id == bindparam("b_external_id")).values(
            url=bindparam("b_url"), song_id=bindparam("b_song_id"), image_id=bindparam("b_image_id"),
            mood=bindparam("b_mood"), favorite_count=bindparam("b_favorite_count"),
            crawled_at=bindparam("b_crawled_at"), posted_at=bindparam("b_posted_at")), changed)
    return len(posts) - len(existing)


def image_tasks(db_url: str, *, shard: int = 0, shards: int = 1, limit: int | None = None) -> list[tuple[int, str]]:
    """(id, url) of the images to fetch: new ones and transient errors not yet tried MAX_ATTEMPTS times;
    with ``shards`` > 1 only this shard's (by id), so shards fetched side by side never overlap."""
    with session_scope(db_url) as session:
        query = (select(Image.id, Image.url).where(
            (Image.status == "pending") | ((Image.status == "error") & (Image.attempts < MAX_ATTEMPTS)))
            .order_by(Image.id).limit(limit))
        if shards > 1:
            query = query.where(Image.id % shards == shard)
        return [(row.id, row.url) for row in session.execute(query)]


def file_import_roots(db_url: str) -> list[Path]:
    """The folders of the files imported as post sources: the only places local images are read from."""
    from urllib.parse import unquote, urlsplit

    with session_scope(db_url) as session:
        urls = session.scalars(select(Source.base_url).where(Source.kind == "file_import"))
        return [Path(unquote(urlsplit(url).path)).parent for url in urls if url.startswith("file:")]


def kept_images(db_url: str) -> list[tuple[int, str, str, str | None]]:
    """(id, phash, sha256, content type) of the images kept as originals, for near-duplicate checks."""
    with session_scope(db_url) as session:
        return [tuple(row) for row in session.execute(
            select(Image.id, Image.phash, Image.sha256, Image.content_type).where(
                Image.status == "stored", Image.duplicate_of.is_(None), Image.phash.is_not(None))
            .order_by(Image.id))]


def record_images(db_url: str, results: list) -> None:
    """Record many ``crawlers.image_pipeline.ImageResult`` in one transaction. A duplicate is kept as
    "stored" (with the original's sha256, so its post keeps an image) and links ``duplicate_of``; an
    error on the last attempt of the retry budget becomes ``failed``; a ``deferred`` result (robots.txt
    unavailable) records nothing, the image stays pending."""
    results = [r for r in results if r.status != "deferred"]
    if not results:
        return
    table, at = Image.__table__, now()
    rows = []
    for r in results:
        status = "stored" if r.status == "duplicate" else r.status
        error = safe_text(r.error, 2000)[0] if r.error is not None else None
        rows.append({"b_id": r.image_id, "b_status": status, "b_error": error, "b_http": r.http_status,
                     "b_sha": r.sha256, "b_phash": r.phash, "b_w": r.width, "b_h": r.height,
                     "b_size": r.size_bytes, "b_type": r.content_type, "b_dup": r.duplicate_of, "b_at": at})
    with session_scope(db_url) as session:
        session.execute(update(table).where(table.c.id == bindparam("b_id")).values(
            status=case(((bindparam("b_status") == "error") & (table.c.attempts + 1 >= MAX_ATTEMPTS), "failed"),
                        else_=bindparam("b_status")),
            error=bindparam("b_error"), http_status=bindparam("b_http"), sha256=bindparam("b_sha"),
            phash=bindparam("b_phash"), width=bindparam("b_w"),
            height=bindparam("b_h"), size_bytes=bindparam("b_size"), content_type=bindparam("b_type"),
            duplicate_of=bindparam("b_dup"), fetched_at=bindparam("b_at"), attempts=table.c.attempts + 1), rows)


def image_key(sha256: str, content_type: str) -> str:
    from curation.object_store import ObjectStore

    return ObjectStore.key_for(sha256, SUFFIXES.get(content_type, ""))


LYRIC_ATTEMPTS = 3  # runs in which the provider failed for a song before a curator takes it over


def songs_without_lyrics(db_url: str, provider: str, max_attempts: int = LYRIC_ATTEMPTS) -> list[dict]:
    """Songs to ask ``provider`` about: those with no candidate from it yet, and those whose last
    request failed (verdict "error") fewer than ``max_attempts`` times."""
    with session_scope(db_url) as session:
        answered = select(LyricCandidate.song_id).where(
            LyricCandidate.provider == provider,
            (LyricCandidate.verdict != "error") | (LyricCandidate.attempts >= max_attempts))
        rows = session.scalars(select(Song).where(Song.id.not_in(answered)).order_by(Song.id))
        return [{"id": s.id, "title": s.title, "artist": s.artist, "album": s.album, "duration": s.duration}
                for s in rows]


def _candidate(session: Session, song_id: int, provider: str) -> LyricCandidate:
    candidate = session.scalar(select(LyricCandidate).where(
        LyricCandidate.song_id == song_id, LyricCandidate.provider == provider))
    if candidate is None:
        candidate = LyricCandidate(song_id=song_id, provider=provider, attempts=0)
        session.add(candidate)
    return candidate


def store_lyric(db_url: str, song_id: int, provider: str, hit: LyricHit | None) -> None:
    """Keep what the provider answered, a hit or "none found", as the song's candidate (idempotent).
    Every string is made safe first (``crawlers.text.safe_text``: lone surrogates, NUL, invalid text),
    the original bytes' SHA-256 kept in ``original_sha256`` when anything changed."""
    from curation.lyrics.text import text_hash

    with session_scope(db_url) as session:
        candidate = _candidate(session, song_id, provider)
        candidate.error, candidate.original_sha256 = None, None
        if hit is None:
            candidate.text, candidate.match_score = None, 0.0
            candidate.match_reason = "the provider has no lyric for this song"
            candidate.scores = {}
        else:
            text_sha = hit.original_sha256
            # The original text, as the provider gave it (curators see it); synced lyrics only when
            # there is no plain text (cleaning drops their timestamps for modeling).
            raw = hit.plain if (hit.plain or "").strip() else hit.synced
            text, changed = safe_text(raw, MAX_TEXT_CHARS)
            candidate.text, candidate.original_sha256 = text, text_sha or changed
            candidate.provider_track_id = safe_text(hit.track_id, 100)[0]
            candidate.instrumental, candidate.match_score = hit.instrumental, hit.score
            candidate.match_reason = safe_text(hit.reason)[0]
            candidate.scores = {"matched_title": safe_text(hit.title, 500)[0],
                                "matched_artist": safe_text(hit.artist, 500)[0],
                                "matched_duration": hit.duration, "synced": bool(hit.synced and not hit.plain)}
            if hit.review:
                candidate.scores["match_review"] = safe_text(hit.review, 2000)[0]
        candidate.text_hash = text_hash(candidate.text)
        candidate.verdict, candidate.reason, candidate.decided_by = "pending", None, None


def reconcile_objects(db_url: str, store) -> dict[str, int]:
    """Make the object store agree with the catalog after a killed or failed image fetch: delete image
    blobs that no stored image refers to (their records were lost with the process) and half-written
    ``.partial`` files; count referenced blobs that are absent (those images are fetched again: their
    rows go back to pending). Run it when no image fetch is running (the refresh DAG runs it after all
    image shards); blobs outside the content-addressed layout are left alone."""
    import re

    blob = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})(\.[a-z0-9]+)?((\.[0-9a-f]+)?\.partial)?")
    with session_scope(db_url) as session:
        rows = session.execute(select(Image.id, Image.sha256, Image.content_type).where(
            Image.status == "stored", Image.sha256.is_not(None))).all()
    referenced: dict[str, list[int]] = {}
    for image_id, sha256, content_type in rows:
        referenced.setdefault(image_key(sha256, content_type), []).append(image_id)
    root = store.root.rstrip("/")
    found, orphans, partials = set(), 0, 0
    for path in store.fs.find(root) if store.fs.exists(root) else []:
        key = path[len(root) + 1:] if path.startswith(root + "/") else path.lstrip("/")
        match = blob.fullmatch(key)
        if not match:
            continue
        if match.group(3) or key not in referenced:
            store.fs.rm(path)
            partials, orphans = partials + bool(match.group(3)), orphans + (not match.group(3))
        else:
            found.add(key)
    missing = [image_id for key, ids in referenced.items() if key not in found for image_id in ids]
    if missing:
        with session_scope(db_url) as session:
            session.execute(update(Image).where(Image.id.in_(missing)).values(status="pending", attempts=0))
    return {"objects": len(found), "removed_orphans": orphans, "removed_partials": partials,
            "missing": len(missing)}


def store_lyric_failure(db_url: str, song_id: int, provider: str, error: str,
                        max_attempts: int = LYRIC_ATTEMPTS) -> str:
    """Record on the song that asking ``provider`` failed (the error, one more attempt). Within the
    retry budget the candidate waits as "error" and the next run asks again; once it is spent the song
    goes to a curator ("provider error: …") instead of being asked forever. A song that already has an
    answer keeps it (an outage never changes an earlier verdict). Returns the verdict stored."""
    error = safe_text(error, 2000)[0]
    with session_scope(db_url) as session:
        candidate = _candidate(session, song_id, provider)
        if candidate.id is not None and candidate.verdict != "error":
            return candidate.verdict
        candidate.attempts = (candidate.attempts or 0) + 1
        candidate.error = error
        candidate.text, candidate.text_hash, candidate.match_score = None, None, 0.0
        candidate.match_reason = "the provider could not be asked"
        if candidate.attempts >= max_attempts:
            candidate.verdict, candidate.decided_by = "review", "filters"
            candidate.reason = f"provider error: {error} (after {candidate.attempts} runs)"
        else:
            candidate.verdict, candidate.reason, candidate.decided_by = "error", f"provider error: {error}", None
        return candidate.verdict


class CatalogPacer:
    """``crawlers.pacing.Pacer`` through the catalog: every process and shard that crawls into one
    catalog books its slots in the ``host_pace`` table, so the per-host delay, Crawl-delay and the
    slow-down after a 429/503 hold for the crawl as a whole. Each booking is one UPDATE … RETURNING
    (atomic on SQLite and PostgreSQL, no extra service); ``busy`` is read at most once a second per
    host, so a host with no delay (loopback) costs no catalog round trip per request."""

    shared = True

    def __init__(self, db_url: str, fade: float = FADE_SECONDS, refresh: float = 1.0):
        self.db_url, self.fade, self.refresh = db_url, fade, refresh
        self._seen: dict[str, tuple[float, float, float, float]] = {}  # host → (read at, next_at, penalty, at)

    def __reduce__(self):
        return CatalogPacer, (self.db_url, self.fade, self.refresh)

    def _penalty_now(self, table, now: float):
        return case((table.c.penalty_at + self.fade > now,
                     table.c.penalty * (table.c.penalty_at + self.fade - now) / self.fade), else_=0.0)

    def _update(self, host: str, values, returning):
        table = HostPace.__table__
        statement = update(table).where(table.c.host == host).values(**values).returning(*returning)
        with session_scope(self.db_url) as session:
            row = session.execute(statement).first()
            if row is None:
                _insert_ignore(session, HostPace, [{"host": host, "next_at": 0.0, "penalty": 0.0,
                                                    "penalty_at": 0.0}], ["host"])
                row = session.execute(statement).first()
        return row

    def reserve(self, host: str, delay: float) -> float:
        table, now = HostPace.__table__, time.time()
        penalty = self._penalty_now(table, now)
        step = case((penalty > delay, penalty), else_=literal(float(delay)))
        start = case((table.c.next_at > now, table.c.next_at), else_=literal(now))
        next_at, step_taken = self._update(host, {"next_at": start + step}, (table.c.next_at, step))
        return next_at - step_taken

    def slow_down(self, host: str, penalty: float, retry_after: float | None, max_penalty: float) -> float:
        table, now = HostPace.__table__, time.time()
        doubled = 2 * self._penalty_now(table, now)
        raised = case((doubled > penalty, doubled), else_=literal(float(penalty)))
        new_penalty = case((raised > max_penalty, literal(float(max_penalty))), else_=raised)
        wait = literal(float(retry_after)) if retry_after is not None else new_penalty
        resume = case((table.c.next_at > now + wait, table.c.next_at), else_=now + wait)
        row = self._update(host, {"penalty": new_penalty, "penalty_at": now, "next_at": resume},
                           (table.c.penalty,))
        self._seen.pop(host, None)
        return row[0]

    def busy(self, host: str) -> bool:
        now = time.time()
        seen = self._seen.get(host)
        if seen is None or now - seen[0] > self.refresh:
            with session_scope(self.db_url) as session:
                row = session.execute(select(HostPace.next_at, HostPace.penalty, HostPace.penalty_at)
                                      .where(HostPace.host == host)).first()
            seen = (now, *(row or (0.0, 0.0, 0.0)))
            self._seen[host] = seen
        _, next_at, penalty, penalty_at = seen
        return next_at > now or faded(penalty, penalty_at, now, self.fade) > 0
