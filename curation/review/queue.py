"""The review queue in the catalog: lyrics the filters could not decide wait here for a curator.

Each item has ``overlap`` slots (one unless asked otherwise); a curator claims a slot through a
lease (owner, token, expiry). Claims are atomic: ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL,
one ``BEGIN IMMEDIATE`` transaction on SQLite (plus an in-process lock, so threads queue in Python
rather than in SQLite's sleeping busy handler). An expired lease returns its slot to the queue.
Submitting is keyed by the lease token: a retried submit replays the recorded answer, and a token
whose lease was taken over (or undone) is refused, so it can never overwrite a newer decision.

An open page renews its leases (``renew``); a curator can give an item back undecided (``skip``: it
goes to others first) or leave (``release``, ``release_all``: her claims come back to her first when
she returns, if still free), change her recent decisions until a snapshot is published after them
(``revise``), and comment on any decision. Admins find items (``find_items``) and ``reopen`` them.

With overlap N, an item is final when N curators have decided; if they disagree it waits for an
admin to settle it. Agreement is reported as Fleiss' kappa (all items) and Cohen's kappa (pairs).

Decisions never block a DAG: an approved lyric simply joins the next snapshot. Every decision,
undo and settlement is written to the append-only ``review_events`` log (who, what, when, before,
after).
"""

from __future__ import annotations

import secrets
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from urllib.parse import quote_plus

from sqlalchemy import DateTime, String, and_, bindparam, case, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from curation.catalog import (
    Image, LyricCandidate, Post, ReviewEvent, ReviewItem, SnapshotRecord, Song, session_scope,
)
from curation.catalog.models import ReviewAssignment
from curation.lyrics.text import text_hash
from curation.review.transactions import reading as _read, writing as _write

DECISIONS = {
    "accept": ("approved", "accepted by a curator"),
    "edit": ("approved", "lyric corrected by a curator"),
    "reject-non-english": ("rejected", "non-English (curator)"),
    "reject-not-found": ("rejected", "not found (curator)"),
    "reject-instrumental": ("rejected", "instrumental (curator)"),
    "reject-other": ("rejected", "abnormal (curator)"),
}
LEASE_SECONDS = 600
UNDO_WINDOW_SECONDS = 3600
SEARCH_URL = "https://duckduckgo.com/?q="
MAX_TEXT = 20_000  # a corrected lyric; the lyric filters call anything longer "not one song"
MAX_COMMENT = 2_000


class LeaseLost(Exception):
    """The lease token is unknown, taken over by another curator, or undone: nothing was recorded."""


class NothingToUndo(LookupError):
    pass


class NotEditable(LookupError):
    """A past decision that can no longer change here (a snapshot includes it, or an admin settled it)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; they are stored in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


# --- filling the queue ------------------------------------------------------------------------

def enqueue_reviews(db_url: str, overlap: int = 1) -> dict[str, int]:
    """Create a review item (and its slots) for each candidate judged ``review`` that has none yet
    (idempotent). ``overlap`` > 1 asks for that many independent decisions per new item."""
    with session_scope(db_url) as session:
        queued = select(ReviewItem.candidate_id)
        candidates = session.scalars(select(LyricCandidate).where(
            LyricCandidate.verdict == "review", LyricCandidate.id.not_in(queued)))
        # Songs in many posts matter most to the dataset: review them first.
        new = 0
        for candidate in candidates:
            posts = session.scalar(select(func.count()).select_from(Post).where(Post.song_id == candidate.song_id))
            item = ReviewItem(candidate_id=candidate.id, reason=candidate.reason, priority=posts,
                              overlap=overlap if overlap > 1 else None)
            session.add(item)
            session.flush()
            for slot in range(max(1, overlap)):
                session.add(ReviewAssignment(item_id=item.id, slot=slot, priority=posts))
            new += 1
        _add_missing_slots(session)
        pending = session.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.state != "decided"))
    return {"enqueued": new, "pending": pending}


def _add_missing_slots(session: Session) -> int:
    """Items created elsewhere (or before the slots existed) get theirs."""
    have = select(ReviewAssignment.item_id).distinct()
    added = 0
    for item in session.scalars(select(ReviewItem).where(ReviewItem.state != "decided", ReviewItem.id.not_in(have))):
        for slot in range(max(1, item.overlap or 1)):
            session.add(ReviewAssignment(item_id=item.id, slot=slot, priority=item.priority))
            added += 1
    return added


def set_overlap(db_url: str, overlap: int, actor: str, item_ids: list[int] | None = None) -> int:
    """Ask for ``overlap`` independent decisions on undecided items (all, or ``item_ids``); returns
    how many items changed. Slots are added, never taken away from work already done."""
    if overlap < 1:
        raise ValueError("overlap is at least 1")
    changed = 0
    with _write(db_url) as session:
        query = select(ReviewItem).where(ReviewItem.state.in_(("pending", "leased")))
        if item_ids is not None:
            query = query.where(ReviewItem.id.in_(item_ids))
        for item in session.scalars(query):
            slots = session.scalars(select(ReviewAssignment).where(ReviewAssignment.item_id == item.id)
                                    .order_by(ReviewAssignment.slot)).all()
            if len(slots) >= overlap and (item.overlap or 1) == overlap:
                continue
            for slot in range(len(slots), overlap):
                session.add(ReviewAssignment(item_id=item.id, slot=slot, priority=item.priority))
            if len(slots) > overlap:  # only open slots can go
                for extra in [s for s in slots if s.state == "open"][: len(slots) - overlap]:
                    session.delete(extra)
            before = {"overlap": item.overlap or 1}
            item.overlap = overlap if overlap > 1 else None
            if overlap > 1:
                item.lease_owner = item.lease_token = item.lease_expires_at = None
            session.add(ReviewEvent(item_id=item.id, actor=actor, action="overlap", before=before,
                                    after={"overlap": overlap}))
            changed += 1
    return changed


# --- claiming and deciding --------------------------------------------------------------------

def _claim_statements():
    """The claim's statements, built once (bound per call): SQLAlchemy then only looks them up."""
    slot, mine = ReviewAssignment, aliased(ReviewAssignment)
    curator, now = bindparam("b_curator", type_=String()), bindparam("b_now", type_=DateTime(timezone=True))
    held_by_me = exists().where(mine.item_id == slot.item_id, mine.id != slot.id, mine.lease_owner == curator,
                                mine.state.in_(("leased", "submitted")))
    expired = and_(slot.state == "leased", slot.lease_expires_at < now)
    skipped_by_me = and_(slot.left_by == curator, slot.left_how == "skipped")
    not_skipped_by_me = or_(slot.left_how.is_(None), slot.left_how != "skipped", slot.left_by != curator)  # NULL-safe
    # In order: the curator's own claims given back (logout, a closed page) or lapsed, so they come
    # back to her; then abandoned (expired) leases; then open slots; what she skipped comes last.
    # Each query walks an index (owner/left_by, or the claim index (state, priority, id) backwards),
    # so it costs the same with 10 or 100,000 items.
    preferences = (
        and_(slot.left_by == curator, slot.state == "open", slot.left_how == "released"),
        and_(slot.lease_owner == curator, expired),
        and_(expired, not_skipped_by_me),
        and_(slot.state == "open", not_skipped_by_me),
        and_(or_(slot.state == "open", expired), skipped_by_me),
    )
    find = [select(slot.id, slot.item_id).where(free, ~held_by_me)
            .order_by(slot.priority.desc(), slot.id.desc()).limit(1).with_for_update(skip_locked=True, of=slot)
            for free in preferences]
    token, expires = bindparam("b_token", type_=String()), bindparam("b_expires", type_=DateTime(timezone=True))
    take = (update(slot).where(slot.id == bindparam("b_slot"))
            .values(state="leased", lease_owner=curator, lease_token=token, lease_expires_at=expires,
                    claimed_at=now, decision=None, corrected_text=None, comment=None, left_by=None, left_how=None))
    single = ReviewItem.overlap.is_(None)  # the item's own lease columns mirror a single slot
    mark = (update(ReviewItem).where(ReviewItem.id == bindparam("b_item"), ReviewItem.state.in_(("pending", "leased")))
            .values(state="leased", lease_owner=case((single, curator), else_=None),
                    lease_token=case((single, token), else_=None), lease_expires_at=case((single, expires), else_=None)))
    return find, take, mark


_CLAIM = _claim_statements()


def claim(db_url: str, curator: str, *, lease_seconds: int = LEASE_SECONDS, now: datetime | None = None,
          item_id: int | None = None) -> dict | None:
    """Lease the most urgent free slot to ``curator``: ``{"item", "token", "expires_at"}``, or None
    when nothing is left. A curator never gets two slots of the same item. With ``item_id``, only a
    free slot of that item (claiming it again after a lost lease)."""
    now = now or _now()
    find, take, mark = _CLAIM
    if item_id is not None:
        find = [query.where(ReviewAssignment.item_id == item_id) for query in find]
    for attempt in range(2):
        with _write(db_url) as session:
            found = None
            for query in find:
                found = session.execute(query, {"b_curator": curator, "b_now": now}).first()
                if found is not None:
                    break
            if found is None:
                if attempt == 0 and _add_missing_slots(session):
                    continue
                return None
            token = secrets.token_urlsafe(24)
            expires = now + timedelta(seconds=lease_seconds)
            params = {"b_curator": curator, "b_now": now, "b_token": token, "b_expires": expires,
                      "b_slot": found.id, "b_item": found.item_id}
            session.execute(take, params)
            session.execute(mark, params)
            return {"item": found.item_id, "token": token, "expires_at": expires.isoformat()}
    return None


def _give_back(session: Session, slot: ReviewAssignment, curator: str, how: str) -> None:
    token = slot.lease_token
    slot.state, slot.lease_owner, slot.lease_token, slot.lease_expires_at = "open", None, None, None
    slot.left_by, slot.left_how = curator, how
    session.execute(update(ReviewItem).where(ReviewItem.id == slot.item_id, ReviewItem.lease_token == token)
                    .values(lease_owner=None, lease_token=None, lease_expires_at=None))


def release(db_url: str, token: str, curator: str) -> bool:
    """Give a leased slot back before its lease expires (a curator leaving the page). It comes back
    to her first when she returns, if nobody took it meanwhile."""
    with _write(db_url) as session:
        slot = session.scalars(select(ReviewAssignment).where(
            ReviewAssignment.lease_token == token, ReviewAssignment.lease_owner == curator,
            ReviewAssignment.state == "leased")).first()
        if slot is None:
            return False
        _give_back(session, slot, curator, "released")
        return True


def release_all(db_url: str, curator: str) -> int:
    """Give back every slot ``curator`` holds (logout, a disabled account); returns how many."""
    with _write(db_url) as session:
        slots = session.scalars(select(ReviewAssignment).where(
            ReviewAssignment.lease_owner == curator, ReviewAssignment.state == "leased")).all()
        for slot in slots:
            _give_back(session, slot, curator, "released")
        return len(slots)


def skip(db_url: str, token: str, curator: str) -> dict:
    """Put a leased item back without deciding: it goes to other curators first, to her last."""
    with _write(db_url) as session:
        slot = session.scalars(select(ReviewAssignment).where(
            ReviewAssignment.lease_token == token, ReviewAssignment.lease_owner == curator,
            ReviewAssignment.state == "leased")).first()
        if slot is None:
            raise LeaseLost("this item is no longer leased to you; nothing to skip")
        _give_back(session, slot, curator, "skipped")
        session.add(ReviewEvent(item_id=slot.item_id, actor=curator, action="skip", before=None,
                                after={"slot": slot.slot}))
        return {"item": slot.item_id, "skipped": True}


def renew(db_url: str, tokens: list[str], curator: str, *, lease_seconds: int = LEASE_SECONDS,
          now: datetime | None = None) -> dict[str, str | None]:
    """The page's heartbeat: extend ``curator``'s leases. Per token the new expiry, or None when the
    lease is gone (taken over after it lapsed, undone, decided). A lapsed lease that nobody took
    is still hers and is renewed."""
    now = now or _now()
    expires = now + timedelta(seconds=lease_seconds)
    answer: dict[str, str | None] = {token: None for token in tokens}
    if not tokens:
        return answer
    with _write(db_url) as session:
        slots = session.scalars(select(ReviewAssignment).where(
            ReviewAssignment.lease_token.in_(tokens), ReviewAssignment.lease_owner == curator,
            ReviewAssignment.state == "leased")).all()
        for slot in slots:
            slot.lease_expires_at = expires
            answer[slot.lease_token] = expires.isoformat()
        if slots:
            session.execute(update(ReviewItem).where(ReviewItem.lease_token.in_([s.lease_token for s in slots]))
                            .values(lease_expires_at=expires))
    return answer


def my_leases(db_url: str, curator: str, now: datetime | None = None) -> list[dict]:
    """``curator``'s live leases, oldest claim first (a reopened page picks them up again)."""
    now = now or _now()
    with _read(db_url) as session:
        rows = session.execute(select(ReviewAssignment.item_id, ReviewAssignment.lease_token,
                                      ReviewAssignment.lease_expires_at).where(
            ReviewAssignment.lease_owner == curator, ReviewAssignment.state == "leased",
            ReviewAssignment.lease_expires_at >= now).order_by(ReviewAssignment.claimed_at, ReviewAssignment.id))
        return [{"item": item, "token": token, "expires_at": _aware(expires).isoformat()}
                for item, token, expires in rows]


def _check(decision: str, corrected_text: str | None, comment: str | None = None) -> None:
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {str(decision)[:40]!r}; choose one of {', '.join(DECISIONS)}")
    if decision == "edit" and not (corrected_text or "").strip():
        raise ValueError("an edit needs the corrected lyric text")
    if corrected_text is not None and len(corrected_text) > MAX_TEXT:
        raise ValueError(f"a corrected lyric has at most {MAX_TEXT:,} characters (this one has "
                         f"{len(corrected_text):,}); a longer text is not one song")
    if comment is not None and len(comment) > MAX_COMMENT:
        raise ValueError(f"a comment has at most {MAX_COMMENT:,} characters")


def _snapshot(item: ReviewItem, candidate: LyricCandidate) -> dict:
    return {"state": item.state, "decision": item.decision, "verdict": candidate.verdict,
            "reason": candidate.reason, "decided_by": candidate.decided_by, "text": candidate.text,
            "corrected_text": item.corrected_text, "comment": item.comment}


def _set_text(candidate: LyricCandidate, text: str | None) -> None:
    """Change the lyric's text and what is derived from it: the text hash the duplicate filter looks up
    (the snapshot derives the modeling text from the text when it is built)."""
    candidate.text, candidate.text_hash = text, text_hash(text)


def _apply(session: Session, item: ReviewItem, decision: str, corrected_text: str | None, actor: str,
           now: datetime) -> None:
    """Make ``decision`` the item's final one and apply it to the lyric candidate."""
    candidate = session.get(LyricCandidate, item.candidate_id)
    verdict, reason = DECISIONS[decision]
    item.state, item.decision, item.decided_by, item.decided_at = "decided", decision, actor, now
    item.lease_owner = item.lease_token = item.lease_expires_at = None
    item.comment = None
    if decision == "edit":
        item.corrected_text = corrected_text
        _set_text(candidate, corrected_text)
    candidate.verdict, candidate.reason, candidate.decided_by = verdict, reason, actor


def _same(a: ReviewAssignment, b: ReviewAssignment) -> bool:
    if a.decision != b.decision:
        return False
    return a.decision != "edit" or " ".join((a.corrected_text or "").split()) == " ".join((b.corrected_text or "").split())


def submit(db_url: str, token: str, decision: str, corrected_text: str | None = None, *, curator: str,
           now: datetime | None = None, comment: str | None = None) -> dict:
    """Record ``curator``'s decision (and optional comment) on the slot leased with ``token``.
    Idempotent: the same token again answers what was recorded (``replayed``); a token that lost its
    lease raises LeaseLost."""
    _check(decision, corrected_text, comment)
    comment = (comment or "").strip() or None
    now = now or _now()
    with _write(db_url) as session:
        slot = session.scalars(select(ReviewAssignment).where(ReviewAssignment.lease_token == token)
                               .with_for_update()).first()
        if slot is None or slot.lease_owner != curator:
            raise LeaseLost("this item's lease was taken over or undone; nothing was recorded")
        if slot.state == "submitted":
            return {"item": slot.item_id, "decision": slot.decision, "replayed": True}
        if slot.state != "leased":
            raise LeaseLost("this item is no longer leased to you; nothing was recorded")
        item = session.scalars(select(ReviewItem).where(ReviewItem.id == slot.item_id).with_for_update()).one()
        if item.state == "decided":  # settled by an admin meanwhile
            slot.state = "closed"
            raise LeaseLost("this item was decided meanwhile; nothing was recorded")
        candidate = session.get(LyricCandidate, item.candidate_id)
        before = _snapshot(item, candidate)
        slot.state, slot.decision, slot.submitted_at, slot.comment = "submitted", decision, now, comment
        slot.corrected_text = corrected_text if decision == "edit" else None
        wanted = item.overlap or 1
        final = None
        if wanted == 1:
            _apply(session, item, decision, slot.corrected_text, curator, now)
            item.comment = comment
            final = "decided"
        else:
            done = session.scalars(select(ReviewAssignment).where(
                ReviewAssignment.item_id == item.id, ReviewAssignment.state == "submitted")).all()
            if len(done) >= wanted:
                if all(_same(done[0], other) for other in done[1:]):
                    _apply(session, item, decision, slot.corrected_text, curator, now)
                    final = "decided"
                else:
                    item.state = final = "disputed"
        after = {**_snapshot(item, candidate), "slot_decision": decision, "token": token, "final": final}
        if decision == "edit":
            after["slot_text"] = slot.corrected_text
        if comment:
            after["comment"] = comment
        session.add(ReviewEvent(item_id=item.id, actor=curator, action="decide", before=before, after=after, at=now))
        return {"item": item.id, "decision": decision, "replayed": False, "state": item.state}


def undo_last(db_url: str, curator: str, *, lease_seconds: int = LEASE_SECONDS, now: datetime | None = None) -> dict:
    """Take back ``curator``'s last decision (when nothing newer happened to the item) and lease the
    item to them again: ``{"item", "token", "expires_at", "decision", "corrected_text"}``."""
    now = now or _now()
    with _write(db_url) as session:
        slot = session.scalars(select(ReviewAssignment).where(
            ReviewAssignment.lease_owner == curator, ReviewAssignment.state == "submitted",
            ReviewAssignment.submitted_at >= now - timedelta(seconds=UNDO_WINDOW_SECONDS))
            .order_by(ReviewAssignment.submitted_at.desc(), ReviewAssignment.id.desc()).limit(1)).first()
        if slot is None:
            raise NothingToUndo("no recent decision of yours to undo")
        item = session.get(ReviewItem, slot.item_id)
        last = session.scalars(select(ReviewEvent).where(ReviewEvent.item_id == item.id)
                               .order_by(ReviewEvent.id.desc()).limit(1)).first()
        if last is None or last.action != "decide" or (last.after or {}).get("token") != slot.lease_token:
            raise NothingToUndo("the item changed after your decision; ask an admin")
        candidate = session.get(LyricCandidate, item.candidate_id)
        before_undo = _snapshot(item, candidate)
        previous = last.before or {}
        if (last.after or {}).get("final") == "decided":
            candidate.verdict, candidate.reason = previous.get("verdict"), previous.get("reason")
            candidate.decided_by = previous.get("decided_by")
            _set_text(candidate, previous.get("text"))
            item.decision, item.corrected_text = previous.get("decision"), previous.get("corrected_text")
            item.comment = previous.get("comment")
            item.decided_by = item.decided_at = None
        item.state = "leased"
        token = secrets.token_urlsafe(24)
        expires = now + timedelta(seconds=lease_seconds)
        old = {"decision": slot.decision, "corrected_text": slot.corrected_text, "comment": slot.comment}
        slot.state, slot.lease_token, slot.lease_expires_at, slot.claimed_at = "leased", token, expires, now
        slot.decision = slot.corrected_text = slot.submitted_at = slot.comment = None
        if slot.slot == 0 and not item.overlap:
            item.lease_owner, item.lease_token, item.lease_expires_at = curator, token, expires
        session.add(ReviewEvent(item_id=item.id, actor=curator, action="undo", before=before_undo,
                                after={**_snapshot(item, candidate), "undone": old}, at=now))
        return {"item": item.id, "token": token, "expires_at": expires.isoformat(), **old}


def settle(db_url: str, item_id: int, decision: str, actor: str, corrected_text: str | None = None,
           comment: str | None = None) -> dict:
    """An admin's final word on an item (a disputed one, usually): applied whatever its slots say."""
    return _decide_outright(db_url, item_id, decision, actor, corrected_text, comment, action="settle")


def decide(db_url: str, item_id: int, decision: str, actor: str, corrected_text: str | None = None,
           comment: str | None = None) -> dict:
    """Record a decision on an item directly (the terminal's `review decide`), without a lease."""
    return _decide_outright(db_url, item_id, decision, actor, corrected_text, comment, action="decide")


def _decide_outright(db_url: str, item_id: int, decision: str, actor: str, corrected_text: str | None,
                     comment: str | None, *, action: str) -> dict:
    _check(decision, corrected_text, comment)
    now = _now()
    with _write(db_url) as session:
        item = session.get(ReviewItem, item_id)
        if item is None:
            raise LookupError(f"no review item {item_id}")
        candidate = session.get(LyricCandidate, item.candidate_id)
        before = _snapshot(item, candidate)
        _apply(session, item, decision, corrected_text if decision == "edit" else None, actor, now)
        item.comment = (comment or "").strip() or None
        session.execute(update(ReviewAssignment).where(ReviewAssignment.item_id == item.id,
                                                       ReviewAssignment.state.in_(("open", "leased")))
                        .values(state="closed"))
        after = _snapshot(item, candidate)
        session.add(ReviewEvent(item_id=item.id, actor=actor, action=action, before=before, after=after, at=now))
        return {"item": item.id, "decision": decision, "verdict": after["verdict"]}


def _last_snapshot_at(session: Session) -> datetime | None:
    return _aware(session.scalar(select(func.max(SnapshotRecord.created_at))))


def revise(db_url: str, curator: str, item_id: int, decision: str, corrected_text: str | None = None,
           comment: str | None = None, now: datetime | None = None) -> dict:
    """Change ``curator``'s own recent decision on ``item_id`` (the page's recent-decisions list).
    Allowed until a snapshot is published after it (then the decision is in the world: an admin
    reopens the item instead), and while nobody else's word decided the item."""
    _check(decision, corrected_text, comment)
    comment = (comment or "").strip() or None
    corrected_text = corrected_text if decision == "edit" else None
    now = now or _now()
    with _write(db_url) as session:
        slot = session.scalars(select(ReviewAssignment).where(
            ReviewAssignment.item_id == item_id, ReviewAssignment.lease_owner == curator,
            ReviewAssignment.state == "submitted").with_for_update()).first()
        if slot is None:
            raise NotEditable("you have no decision on this item to change")
        snapshot_at = _last_snapshot_at(session)
        if snapshot_at is not None and snapshot_at >= _aware(slot.submitted_at):
            raise NotEditable("a snapshot already includes this decision; ask an admin to reopen the item")
        item = session.scalars(select(ReviewItem).where(ReviewItem.id == item_id).with_for_update()).one()
        single = not item.overlap or item.overlap == 1
        if single and not (item.state == "decided" and item.decided_by == curator):
            raise NotEditable("this item was settled by someone else meanwhile; ask an admin")
        if not single and item.state not in ("pending", "leased"):
            raise NotEditable("the other curators' votes are in; ask an admin to settle or reopen it")
        candidate = session.get(LyricCandidate, item.candidate_id)
        before = {**_snapshot(item, candidate), "slot_decision": slot.decision, "slot_text": slot.corrected_text,
                  "slot_comment": slot.comment}
        slot.decision, slot.corrected_text, slot.comment, slot.submitted_at = decision, corrected_text, comment, now
        if single:
            if before["decision"] == "edit" and decision != "edit":
                _set_text(candidate, _original_text(session, item.id, candidate.text))
            _apply(session, item, decision, corrected_text, curator, now)
            item.comment = comment
        after = {**_snapshot(item, candidate), "slot_decision": decision, "slot_text": corrected_text,
                 "slot_comment": comment}
        session.add(ReviewEvent(item_id=item.id, actor=curator, action="revise", before=before, after=after, at=now))
        return {"item": item.id, "decision": decision, "state": item.state}


def _original_text(session: Session, item_id: int, fallback: str | None) -> str | None:
    """The lyric as the item first showed it (before any edit): the first event's ``before`` text."""
    first = session.scalars(select(ReviewEvent).where(ReviewEvent.item_id == item_id, ReviewEvent.before.is_not(None))
                            .order_by(ReviewEvent.id).limit(1)).first()
    return (first.before or {}).get("text", fallback) if first else fallback


def recent_decisions(db_url: str, curator: str, limit: int = 10) -> list[dict]:
    """``curator``'s latest decisions, newest first, each saying whether she can still change it."""
    with _read(db_url) as session:
        snapshot_at = _last_snapshot_at(session)
        rows = session.execute(
            select(ReviewAssignment, ReviewItem, Song)
            .join(ReviewItem, ReviewItem.id == ReviewAssignment.item_id)
            .join(LyricCandidate, ReviewItem.candidate_id == LyricCandidate.id)
            .join(Song, LyricCandidate.song_id == Song.id)
            .where(ReviewAssignment.lease_owner == curator, ReviewAssignment.state == "submitted")
            .order_by(ReviewAssignment.submitted_at.desc(), ReviewAssignment.id.desc()).limit(limit)).all()
        out = []
        for slot, item, song in rows:
            in_snapshot = snapshot_at is not None and snapshot_at >= _aware(slot.submitted_at)
            single = not item.overlap or item.overlap == 1
            mine = item.state == "decided" and item.decided_by == curator if single else \
                item.state in ("pending", "leased")
            out.append({"item": item.id, "title": song.title, "artist": song.artist, "decision": slot.decision,
                        "corrected_text": slot.corrected_text, "comment": slot.comment,
                        "at": _aware(slot.submitted_at).isoformat(), "editable": mine and not in_snapshot,
                        "why_locked": "in a snapshot" if in_snapshot else ("" if mine else "decided by others")})
        return out


def remaining(db_url: str) -> int:
    """Items still waiting for a decision (pending, leased or disputed)."""
    with _read(db_url) as session:
        return session.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.state != "decided"))


def find_items(db_url: str, query: str, limit: int = 50) -> list[dict]:
    """Items by id (a number) or by a piece of the title or artist (case-insensitive)."""
    query = query.strip()
    with _read(db_url) as session:
        select_rows = (select(ReviewItem, Song).join(LyricCandidate, ReviewItem.candidate_id == LyricCandidate.id)
                       .join(Song, LyricCandidate.song_id == Song.id))
        if query.isdigit() and int(query) < 2 ** 31:
            select_rows = select_rows.where(ReviewItem.id == int(query))
        else:
            pattern = "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            select_rows = select_rows.where(or_(func.lower(Song.title).like(pattern, escape="\\"),
                                                func.lower(Song.artist).like(pattern, escape="\\")))
        rows = session.execute(select_rows.order_by(ReviewItem.id).limit(limit)).all()
        return [{"item": item.id, "title": song.title, "artist": song.artist, "state": item.state,
                 "decision": item.decision, "decided_by": item.decided_by} for item, song in rows]


def reopen(db_url: str, item_id: int, actor: str, comment: str | None = None) -> dict:
    """An admin sends a decided (or disputed) item back to the queue: its lyric is "review" again,
    its slots open, and the audit log keeps what it was."""
    _check("accept", None, comment)
    now = _now()
    with _write(db_url) as session:
        item = session.scalars(select(ReviewItem).where(ReviewItem.id == item_id).with_for_update()).first()
        if item is None:
            raise LookupError(f"no review item {item_id}")
        if item.state not in ("decided", "disputed"):
            raise ValueError(f"item {item_id} is {item.state}, not decided: nothing to reopen")
        candidate = session.get(LyricCandidate, item.candidate_id)
        before = _snapshot(item, candidate)
        if item.decision == "edit":
            _set_text(candidate, _original_text(session, item.id, candidate.text))
        candidate.verdict, candidate.reason, candidate.decided_by = "review", item.reason or candidate.reason, None
        item.state, item.decision, item.decided_by, item.decided_at = "pending", None, None, None
        item.corrected_text, item.comment = None, (comment or "").strip() or None
        session.execute(update(ReviewAssignment).where(ReviewAssignment.item_id == item.id).values(
            state="open", lease_owner=None, lease_token=None, lease_expires_at=None, decision=None,
            corrected_text=None, comment=None, submitted_at=None, claimed_at=None, left_by=None, left_how=None))
        session.add(ReviewEvent(item_id=item.id, actor=actor, action="reopen", before=before,
                                after=_snapshot(item, candidate), at=now))
        return {"item": item.id, "state": item.state}


# --- reading ----------------------------------------------------------------------------------

def pending_items(db_url: str, limit: int = 50) -> list[dict]:
    with _read(db_url) as session:
        rows = session.execute(
            select(ReviewItem, LyricCandidate, Song).join(LyricCandidate, ReviewItem.candidate_id == LyricCandidate.id)
            .join(Song, LyricCandidate.song_id == Song.id).where(ReviewItem.state != "decided")
            .order_by(ReviewItem.priority.desc(), ReviewItem.id).limit(limit))
        return [{"item": item.id, "title": song.title, "artist": song.artist, "reason": item.reason,
                 "text": (candidate.text or "")[:200]} for item, candidate, song in rows]


def search_url(title: str, artist: str) -> str:
    return SEARCH_URL + quote_plus(f'"{title}" "{artist}" lyrics')


def item_view(db_url: str, item_id: int, max_images: int = 6) -> dict:
    """What a curator needs to decide an item: song, moods, images, the lyric and why it was flagged."""
    with _read(db_url) as session:
        row = session.execute(
            select(ReviewItem, LyricCandidate, Song).join(LyricCandidate, ReviewItem.candidate_id == LyricCandidate.id)
            .join(Song, LyricCandidate.song_id == Song.id).where(ReviewItem.id == item_id)).first()
        if row is None:
            raise LookupError(f"no review item {item_id}")
        item, candidate, song = row
        posts = session.execute(
            select(Post.mood, Image.id, Image.status).join(Image, Post.image_id == Image.id)
            .where(Post.song_id == song.id).order_by(Post.favorite_count.desc(), Post.id)).all()
        moods = sorted({mood for mood, _, _ in posts if mood})
        images = [image_id for _, image_id, status in posts if status == "stored"][:max_images]
        return {"item": item.id, "state": item.state, "title": song.title, "artist": song.artist,
                "album": song.album, "moods": moods, "posts": len(posts), "images": images,
                "lyric": candidate.text or "", "provider": candidate.provider,
                "instrumental": candidate.instrumental, "match_score": round(candidate.match_score or 0.0, 3),
                "match_reason": candidate.match_reason or "", "reason": item.reason or candidate.reason or "",
                "scores": {str(k): v for k, v in (candidate.scores or {}).items()},
                "search_url": search_url(song.title, song.artist)}


def image_record(db_url: str, image_id: int) -> tuple[str, str] | None:
    """(sha256, content type) of a stored image, or None."""
    with _read(db_url) as session:
        row = session.execute(select(Image.sha256, Image.content_type)
                              .where(Image.id == image_id, Image.status == "stored")).first()
        return (row[0], row[1] or "application/octet-stream") if row and row[0] else None


def progress(db_url: str, now: datetime | None = None) -> dict:
    now = now or _now()
    with _read(db_url) as session:
        states = dict(session.execute(select(ReviewItem.state, func.count()).group_by(ReviewItem.state)).all())
        decisions = dict(session.execute(select(ReviewItem.decision, func.count())
                                         .where(ReviewItem.state == "decided").group_by(ReviewItem.decision)).all())
        live = session.scalar(select(func.count()).select_from(ReviewAssignment).where(
            ReviewAssignment.state == "leased", ReviewAssignment.lease_expires_at >= now))
    total = sum(states.values())
    decided = states.get("decided", 0)
    return {"items": total, "decided": decided, "disputed": states.get("disputed", 0),
            "waiting": total - decided - states.get("disputed", 0), "live_leases": live,
            "done_percent": round(100.0 * decided / total, 1) if total else 100.0,
            "by_decision": {str(k): v for k, v in sorted(decisions.items(), key=lambda kv: str(kv[0]))}}


def throughput(db_url: str, now: datetime | None = None) -> list[dict]:
    """Per curator: decisions in all, in the last hour, and the median seconds between decisions."""
    now = now or _now()
    times: dict[str, list[datetime]] = defaultdict(list)
    with _read(db_url) as session:
        for actor, at in session.execute(select(ReviewEvent.actor, ReviewEvent.at)
                                         .where(ReviewEvent.action == "decide").order_by(ReviewEvent.id)):
            times[actor].append(_aware(at))
        undos = Counter(session.scalars(select(ReviewEvent.actor).where(ReviewEvent.action == "undo")))
    rows = []
    for actor, stamps in sorted(times.items()):
        gaps = sorted((b - a).total_seconds() for a, b in zip(stamps, stamps[1:]) if (b - a).total_seconds() < 600)
        rows.append({"curator": actor, "decisions": len(stamps) - undos.get(actor, 0),
                     "last_hour": sum(1 for t in stamps if t >= now - timedelta(hours=1)),
                     "median_seconds": round(gaps[len(gaps) // 2], 2) if gaps else None,
                     "undos": undos.get(actor, 0), "last": max(stamps).isoformat()})
    return rows


def fleiss_kappa(counts: list[list[int]]) -> float | None:
    """Fleiss' kappa of items × categories counts (every item with the same number of raters ≥ 2)."""
    counts = [row for row in counts if sum(row) >= 2]
    if not counts:
        return None
    n = sum(counts[0])
    if any(sum(row) != n for row in counts):
        raise ValueError("Fleiss' kappa needs the same number of raters per item")
    items, categories = len(counts), len(counts[0])
    p_j = [sum(row[j] for row in counts) / (items * n) for j in range(categories)]
    p_i = [(sum(c * c for c in row) - n) / (n * (n - 1)) for row in counts]
    p_bar, p_e = sum(p_i) / items, sum(p * p for p in p_j)
    if p_e >= 1.0:
        return 1.0 if p_bar >= 1.0 else None
    return (p_bar - p_e) / (1 - p_e)


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in set(first) | set(second)) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else None
    return (observed - expected) / (1 - expected)


def agreement(db_url: str) -> dict:
    """Agreement on items decided by several curators: Fleiss' kappa per overlap size, Cohen's kappa
    per pair of curators, and the disputed items waiting for an admin."""
    labels: dict[int, dict[str, str]] = defaultdict(dict)
    with _read(db_url) as session:
        for item_id, owner, decision in session.execute(
                select(ReviewAssignment.item_id, ReviewAssignment.lease_owner, ReviewAssignment.decision)
                .join(ReviewItem, ReviewItem.id == ReviewAssignment.item_id)
                .where(ReviewAssignment.state == "submitted", ReviewItem.overlap > 1)):
            labels[item_id][owner] = decision
        disputed = session.execute(
            select(ReviewItem.id, Song.title, Song.artist).join(LyricCandidate, ReviewItem.candidate_id == LyricCandidate.id)
            .join(Song, LyricCandidate.song_id == Song.id).where(ReviewItem.state == "disputed")
            .order_by(ReviewItem.priority.desc(), ReviewItem.id)).all()
        dispute_slots = defaultdict(list)
        if disputed:
            for item_id, owner, decision, text in session.execute(
                    select(ReviewAssignment.item_id, ReviewAssignment.lease_owner, ReviewAssignment.decision,
                           ReviewAssignment.corrected_text)
                    .where(ReviewAssignment.item_id.in_([d[0] for d in disputed]),
                           ReviewAssignment.state == "submitted")):
                dispute_slots[item_id].append({"curator": owner, "decision": decision, "text": text})
    categories = list(DECISIONS)
    fleiss = []
    by_raters: dict[int, list[list[int]]] = defaultdict(list)
    for votes in labels.values():
        if len(votes) >= 2:
            tally = Counter(votes.values())
            by_raters[len(votes)].append([tally.get(c, 0) for c in categories])
    for raters, table in sorted(by_raters.items()):
        fleiss.append({"raters": raters, "items": len(table), "kappa": fleiss_kappa(table)})
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for votes in labels.values():
        names = sorted(votes)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pairs[(a, b)].append((votes[a], votes[b]))
    cohen = [{"a": a, "b": b, "items": len(p), "agree": sum(x == y for x, y in p), "kappa": cohen_kappa(p)}
             for (a, b), p in sorted(pairs.items())]
    return {"fleiss": fleiss, "cohen": cohen,
            "disputed": [{"item": i, "title": t, "artist": a, "votes": dispute_slots[i]} for i, t, a in disputed]}


def audit_log(db_url: str, limit: int = 100, offset: int = 0, item_id: int | None = None,
              actor: str | None = None) -> list[dict]:
    with _read(db_url) as session:
        query = select(ReviewEvent).order_by(ReviewEvent.id.desc()).limit(limit).offset(offset)
        if item_id is not None:
            query = query.where(ReviewEvent.item_id == item_id)
        if actor:
            query = query.where(ReviewEvent.actor == actor)
        return [{"id": e.id, "item": e.item_id, "actor": e.actor, "action": e.action,
                 "at": _aware(e.at).isoformat(), "before": e.before, "after": e.after}
                for e in session.scalars(query)]


def export_decisions(db_url: str) -> list[dict]:
    """Every decided item with its song, final decision, who decided and each curator's vote."""
    with _read(db_url) as session:
        votes, comments = defaultdict(list), defaultdict(list)
        for item_id, owner, decision, comment in session.execute(
                select(ReviewAssignment.item_id, ReviewAssignment.lease_owner, ReviewAssignment.decision,
                       ReviewAssignment.comment)
                .where(ReviewAssignment.state == "submitted").order_by(ReviewAssignment.id)):
            votes[item_id].append(f"{owner}:{decision}")
            if comment:
                comments[item_id].append(f"{owner}: {comment}")
        rows = session.execute(
            select(ReviewItem, LyricCandidate, Song).join(LyricCandidate, ReviewItem.candidate_id == LyricCandidate.id)
            .join(Song, LyricCandidate.song_id == Song.id).where(ReviewItem.state == "decided")
            .order_by(ReviewItem.id)).all()
        return [{"item": item.id, "song_id": song.id, "title": song.title, "artist": song.artist,
                 "decision": item.decision, "verdict": candidate.verdict, "decided_by": item.decided_by,
                 "decided_at": _aware(item.decided_at).isoformat() if item.decided_at else None,
                 "corrected_text": item.corrected_text, "votes": " ".join(votes.get(item.id, [])),
                 "comments": " | ".join(comments.get(item.id, []) + (
                     [f"{item.decided_by}: {item.comment}"] if item.comment and not comments.get(item.id) else []))}
                for item, candidate, song in rows]
