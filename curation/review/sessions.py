"""Server-side sessions of the review app: the browser's cookie carries a random id, the catalog
keeps only its sha256, the curator, and when it started, was last seen and ends. Ending a session
is deleting its row, so logout, a password change, a disabled account and "log out everywhere"
take effect at once, whatever cookies are still around."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, update

from curation.catalog import session_scope
from curation.catalog.models import ReviewSession

TOUCH_EVERY = timedelta(seconds=60)  # last-seen is written at most once a minute per session


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def start(db_url: str, curator: str, lifetime_seconds: int, now: datetime | None = None) -> str:
    """A new session for ``curator``; returns the token for the cookie (never stored as such)."""
    now = now or datetime.now(timezone.utc)
    token = secrets.token_urlsafe(32)
    with session_scope(db_url) as session:
        session.execute(delete(ReviewSession).where(ReviewSession.expires_at < now))  # sessions nobody ended
        session.add(ReviewSession(token_hash=_hash(token), curator=curator, created_at=now, last_seen_at=now,
                                  expires_at=now + timedelta(seconds=lifetime_seconds)))
    return token


def check(db_url: str, token: str, idle_seconds: int, now: datetime | None = None) -> tuple[str, float] | None:
    """``(curator, seconds until the session ends)`` of a live session, or None (unknown, ended,
    expired, or idle too long)."""
    if not token or len(token) > 100:
        return None
    now = now or datetime.now(timezone.utc)
    digest = _hash(token)
    with session_scope(db_url) as session:
        row = session.execute(select(ReviewSession.id, ReviewSession.curator, ReviewSession.last_seen_at,
                                     ReviewSession.expires_at).where(ReviewSession.token_hash == digest)).first()
        if row is None:
            return None
        last_seen, expires = _aware(row.last_seen_at), _aware(row.expires_at)
        if now >= expires or now - last_seen > timedelta(seconds=idle_seconds):
            session.execute(delete(ReviewSession).where(ReviewSession.id == row.id))
            return None
        if now - last_seen >= TOUCH_EVERY:
            session.execute(update(ReviewSession).where(ReviewSession.id == row.id).values(last_seen_at=now))
        return row.curator, min((expires - now).total_seconds(), idle_seconds)


def end(db_url: str, token: str) -> None:
    with session_scope(db_url) as session:
        session.execute(delete(ReviewSession).where(ReviewSession.token_hash == _hash(token or "")))


def end_all(db_url: str, curator: str) -> int:
    """End every session of ``curator``; returns how many there were."""
    with session_scope(db_url) as session:
        return session.execute(delete(ReviewSession).where(ReviewSession.curator == curator)).rowcount or 0


def count(db_url: str, curator: str) -> int:
    from sqlalchemy import func

    with session_scope(db_url) as session:
        return session.scalar(select(func.count()).select_from(ReviewSession).where(ReviewSession.curator == curator))
