"""The catalog's tables: the mutable truth of the pipeline (SQLAlchemy 2 declarative models).

Schema changes go through an Alembic migration in ``migrations/versions``; a test checks that the
migrations and these models agree.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON, Boolean, DateTime, Float, ForeignKey, Index, String, Text, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON}


class Source(Base):
    """A place posts come from: a sharing site, a feed, a file import."""

    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    base_url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CrawlUrl(Base):
    """Crawl state: the frontier and every URL seen, with its last outcome."""

    __tablename__ = "crawl_urls"
    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    url: Mapped[str] = mapped_column(String(2000))
    kind: Mapped[str] = mapped_column(String(20))  # list | post | image
    # pending | done | error | failed (retry budget spent) | disallowed
    status: Mapped[str] = mapped_column(String(20), default="pending")
    http_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(String(400))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(default=0)
    fetched_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("source_id", "url", name="uq_crawl_urls_source_url"),
        Index("ix_crawl_urls_status", "source_id", "status"),
    )


class HostPace(Base):
    """One pace per host for the whole crawl (0006): every worker process and shard books its requests'
    slots here. Times are wall-clock seconds since the epoch; ``penalty`` (seconds between requests)
    is the slow-down a 429/503 caused at ``penalty_at``, fading with time."""

    __tablename__ = "host_pace"
    host: Mapped[str] = mapped_column(String(300), primary_key=True)  # scheme://host:port
    next_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    penalty: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    penalty_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class Song(Base):
    __tablename__ = "songs"
    id: Mapped[int] = mapped_column(primary_key=True)
    norm_key: Mapped[str] = mapped_column(String(600), unique=True)  # normalized "title|artist"
    title: Mapped[str] = mapped_column(Text)
    artist: Mapped[str] = mapped_column(Text)
    album: Mapped[str | None] = mapped_column(Text)
    duration: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    candidates: Mapped[list["LyricCandidate"]] = relationship(back_populates="song")


class Image(Base):
    """An image URL and, once fetched, its stored bytes (content-addressed by sha256)."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    # pending | stored | duplicate | error | failed (retry budget spent) | rejected | disallowed
    status: Mapped[str] = mapped_column(String(20), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    phash: Mapped[str | None] = mapped_column(String(32))
    width: Mapped[int | None]
    height: Mapped[int | None]
    size_bytes: Mapped[int | None]
    content_type: Mapped[str | None] = mapped_column(String(100))
    fetched_at: Mapped[datetime | None]
    # crawl (0004): a near-duplicate links to the image it duplicates (and shares its sha256: its own
    # bytes are not kept); attempts bound the retries of transient errors.
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    http_status: Mapped[int | None]
    __table_args__ = (Index("ix_images_status", "status"),)


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    external_id: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2000))
    song_id: Mapped[int] = mapped_column(ForeignKey("songs.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    mood: Mapped[str | None] = mapped_column(String(100))
    favorite_count: Mapped[int] = mapped_column(default=0)
    crawled_at: Mapped[datetime] = mapped_column(default=utcnow)
    posted_at: Mapped[datetime | None]  # the site's time (0005): favourites ties go to the older post
    song: Mapped[Song] = relationship()
    image: Mapped[Image] = relationship()
    __table_args__ = (UniqueConstraint("source_id", "external_id", name="uq_posts_source_external"),)


class LyricCandidate(Base):
    """A lyric fetched for a song, with how it was matched and the filters' verdict and reason."""

    __tablename__ = "lyric_candidates"
    id: Mapped[int] = mapped_column(primary_key=True)
    song_id: Mapped[int] = mapped_column(ForeignKey("songs.id"), index=True)
    provider: Mapped[str] = mapped_column(String(60))
    provider_track_id: Mapped[str | None] = mapped_column(String(100))
    text: Mapped[str | None] = mapped_column(Text)  # original text, as curators see it
    instrumental: Mapped[bool] = mapped_column(Boolean, default=False)
    match_score: Mapped[float] = mapped_column(Float, default=0.0)
    match_reason: Mapped[str | None] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(String(20), default="pending")  # pending | approved | rejected | review | error
    reason: Mapped[str | None] = mapped_column(Text)
    scores: Mapped[dict] = mapped_column(default=dict)
    decided_by: Mapped[str | None] = mapped_column(String(100))  # "filters" or a curator
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    text_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # lyrics.text.text_hash: duplicates
    # trust (0005): the SHA-256 of the provider's original bytes when they had to be made safe
    # (crawlers.text.safe_text); the last provider error and how many runs failed (verdict "error"
    # until the retry budget is spent, then "review").
    original_sha256: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    song: Mapped[Song] = relationship(back_populates="candidates")
    __table_args__ = (UniqueConstraint("song_id", "provider", name="uq_lyric_candidates_song_provider"),)


class LyricResponse(Base):
    """A lyric provider's answer, cached by the normalized (title, artist, duration): ``hit`` is the
    matched record (``crawlers.lyrics.LyricHit`` as a dict) or null for "none found"."""

    __tablename__ = "lyric_responses"
    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(60))
    key: Mapped[str] = mapped_column(String(600))  # crawlers.lyrics.cache_key
    hit: Mapped[dict | None] = mapped_column(JSON)
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("provider", "key", name="uq_lyric_responses_provider_key"),)


class ReviewItem(Base):
    """A lyric the filters could not decide, waiting for a curator (claimed through a lease)."""

    __tablename__ = "review_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("lyric_candidates.id"), unique=True)
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending | leased | decided
    priority: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    decision: Mapped[str | None] = mapped_column(String(40))
    corrected_text: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    overlap: Mapped[int | None]  # independent decisions wanted (null: one); see ReviewAssignment
    comment: Mapped[str | None] = mapped_column(Text)  # an admin's note when settling or deciding outright
    candidate: Mapped[LyricCandidate] = relationship()
    __table_args__ = (Index("ix_review_items_queue", "state", "priority"),)


class ReviewEvent(Base):
    """Append-only audit log of review actions: who, what, when, before and after."""

    __tablename__ = "review_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id"), index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(40))
    before: Mapped[dict | None] = mapped_column(JSON)
    after: Mapped[dict | None] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(default=utcnow)


# --- review app: curator slots (leases) and accounts ------------------------------------------

class ReviewAssignment(Base):
    """One curator's slot on a review item: ``overlap`` slots per item, each claimed through its own
    lease (owner, token, expiry) and holding that curator's decision. The lease token is the key that
    makes a submit idempotent; a reclaimed (expired) lease gets a new token, so a stale one cannot write."""

    __tablename__ = "review_assignments"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id"))
    slot: Mapped[int] = mapped_column(default=0)
    priority: Mapped[int] = mapped_column(default=0)  # the item's, copied so a claim reads one index
    state: Mapped[str] = mapped_column(String(20), default="open")  # open | leased | submitted | closed
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    decision: Mapped[str | None] = mapped_column(String(40))
    corrected_text: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime | None]
    submitted_at: Mapped[datetime | None]
    comment: Mapped[str | None] = mapped_column(Text)  # the curator's note on the decision
    # Who last gave the open slot back, and how: "released" (left the page, logged out; it comes back
    # to her first) or "skipped" (it goes to someone else first).
    left_by: Mapped[str | None] = mapped_column(String(100))
    left_how: Mapped[str | None] = mapped_column(String(20))
    __table_args__ = (
        UniqueConstraint("item_id", "slot", name="uq_review_assignments_item_slot"),
        UniqueConstraint("lease_token", name="uq_review_assignments_token"),
        Index("ix_review_assignments_claim", "state", "priority", "id"),
        Index("ix_review_assignments_owner", "lease_owner", "state"),
        Index("ix_review_assignments_left", "left_by", "state"),
    )


class Curator(Base):
    """A review app account: argon2 password hash and a role (curator or admin)."""

    __tablename__ = "curators"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20), default="curator")  # curator | admin
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewSession(Base):
    """A logged-in browser: the cookie carries a random id, the catalog keeps its hash, so ending a
    session (logout, password change, disabled account, "log out everywhere") is deleting rows."""

    __tablename__ = "review_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    curator: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class SnapshotRecord(Base):
    """A published snapshot: where it is and what it holds."""

    __tablename__ = "snapshots"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(100), unique=True)
    uri: Mapped[str] = mapped_column(Text)
    recipe: Mapped[dict] = mapped_column(default=dict)
    counts: Mapped[dict] = mapped_column(default=dict)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunAlert(Base):
    """An operator alert from Airflow: a task that failed for good, or a run past its deadline. The
    failure callbacks write it (and the log line); chat or e-mail hooks read the same record."""

    __tablename__ = "run_alerts"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))  # task_failed | deadline_missed
    dag_id: Mapped[str] = mapped_column(String(250))
    run_id: Mapped[str] = mapped_column(String(250))
    task_id: Mapped[str | None] = mapped_column(String(250))
    map_index: Mapped[int | None]
    try_number: Mapped[int | None]
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_run_alerts_dag_run", "dag_id", "run_id"),)
