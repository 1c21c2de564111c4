"""The catalog: SQL tables of the pipeline's mutable truth, with Alembic migrations."""

from curation.catalog.db import current_revision, engine_for, session_scope, upgrade
from curation.catalog.models import (
    Base, CrawlUrl, HostPace, Image, LyricCandidate, Post, ReviewEvent, ReviewItem, RunAlert, SnapshotRecord, Song,
    Source,
)

__all__ = [
    "Base", "CrawlUrl", "HostPace", "Image", "LyricCandidate", "Post", "ReviewEvent", "ReviewItem", "RunAlert",
    "SnapshotRecord",
    "Song", "Source", "current_revision", "engine_for", "session_scope", "upgrade",
]
