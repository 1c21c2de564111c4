"""The lyric provider response cache, kept in the catalog (implements ``crawlers.lyrics.LyricCache``).

Keyed by provider and the normalized (title, artist, duration) (``crawlers.lyrics.cache_key``); a cached
"none found" is an answer too. ``max_age_days`` makes old answers count as absent, so that a later run
asks the provider again (songs appear on providers over time).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from curation.catalog import session_scope
from curation.catalog.models import LyricResponse


class CatalogLyricCache:
    def __init__(self, db_url: str, max_age_days: float | None = None):
        self.db_url, self.max_age_days = db_url, max_age_days

    def get(self, provider: str, key: str) -> dict | None:
        with session_scope(self.db_url) as session:
            row = session.scalar(select(LyricResponse).where(LyricResponse.provider == provider,
                                                             LyricResponse.key == key))
            if row is None:
                return None
            if self.max_age_days is not None:
                fetched = row.fetched_at if row.fetched_at.tzinfo else row.fetched_at.replace(tzinfo=timezone.utc)
                if datetime.now(timezone.utc) - fetched > timedelta(days=self.max_age_days):
                    return None
            return {"hit": row.hit}

    def put(self, provider: str, key: str, hit: dict | None) -> None:
        for attempt in range(2):  # two workers may store the same key at once: the second updates
            try:
                with session_scope(self.db_url) as session:
                    row = session.scalar(select(LyricResponse).where(LyricResponse.provider == provider,
                                                                     LyricResponse.key == key))
                    if row is None:
                        row = LyricResponse(provider=provider, key=key)
                        session.add(row)
                    row.hit, row.fetched_at = hit, datetime.now(timezone.utc)
                return
            except IntegrityError:
                if attempt:
                    raise

    def count(self) -> int:
        from sqlalchemy import func

        with session_scope(self.db_url) as session:
            return session.scalar(select(func.count()).select_from(LyricResponse))
