"""The review queue in the catalog: lyrics the filters could not decide wait here for a curator.

Decisions never block a DAG: an approved lyric simply joins the next snapshot. Every action is
written to the append-only ``review_events`` log.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import func, select

from curation.catalog import LyricCandidate, Post, ReviewEvent, ReviewItem, Song, session_scope

DECISIONS = {
    "accept": ("approved", "accepted by a curator"),
    "edit": ("approved", "lyric corrected by a curator"),
    "reject-non-english": ("rejected", "non-English (curator)"),
    "reject-not-found": ("rejected", "not found (curator)"),
    "reject-instrumental": ("rejected", "instrumental (curator)"),
    "reject-other": ("rejected", "abnormal (curator)"),
}


def enqueue_reviews(db_url: str) -> dict[str, int]:
    """Create a review item for each candidate judged ``review`` that has none yet (idempotent)."""
    with session_scope(db_url) as session:
        queued = select(ReviewItem.candidate_id)
        candidates = session.scalars(select(LyricCandidate).where(
            LyricCandidate.verdict == "review", LyricCandidate.id.not_in(queued)))
        # Songs in many posts matter most to the dataset: review them first.
        new = 0
        for candidate in candidates:
            posts = session.scalar(select(func.count()).select_from(Post).where(Post.song_id == candidate.song_id))
            session.add(ReviewItem(candidate_id=candidate.id, reason=candidate.reason, priority=posts))
            new += 1
        pending = session.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.state != "decided"))
    return {"enqueued": new, "pending": pending}


def pending_items(db_url: str, limit: int = 50) -> list[dict]:
    with session_scope(db_url) as session:
        rows = session.execute(
            select(ReviewItem, LyricCandidate, Song).join(LyricCandidate, ReviewItem.candidate_id == LyricCandidate.id)
            .join(Song, LyricCandidate.song_id == Song.id).where(ReviewItem.state != "decided")
            .order_by(ReviewItem.priority.desc(), ReviewItem.id).limit(limit))
        return [{"item": item.id, "title": song.title, "artist": song.artist, "reason": item.reason,
                 "text": (candidate.text or "")[:200]} for item, candidate, song in rows]


def decide(db_url: str, item_id: int, decision: str, actor: str, corrected_text: str | None = None) -> dict:
    """Record a curator's decision on an item and apply it to the lyric candidate."""
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}")
    if decision == "edit" and not (corrected_text or "").strip():
        raise ValueError("an edit needs the corrected lyric text")
    verdict, reason = DECISIONS[decision]
    with session_scope(db_url) as session:
        item = session.get(ReviewItem, item_id)
        if item is None:
            raise LookupError(f"no review item {item_id}")
        candidate = item.candidate
        before = {"state": item.state, "decision": item.decision, "verdict": candidate.verdict,
                  "text": candidate.text}
        item.state, item.decision, item.decided_by = "decided", decision, actor
        item.decided_at = datetime.now(timezone.utc)
        item.lease_owner = item.lease_token = item.lease_expires_at = None
        if decision == "edit":
            item.corrected_text = candidate.text = corrected_text
        candidate.verdict, candidate.reason, candidate.decided_by = verdict, reason, actor
        after = {"state": item.state, "decision": decision, "verdict": verdict, "text": candidate.text}
        session.add(ReviewEvent(item_id=item.id, actor=actor, action="decide", before=before, after=after))
        return {"item": item.id, "decision": decision, "verdict": verdict}
