"""The review queue: atomic claims with leases, idempotent submits, undo, overlap and agreement
(on SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from curation.review import queue as rq
from curation.catalog import Image, LyricCandidate, Post, ReviewEvent, ReviewItem, Song, Source, session_scope
from curation.catalog.models import ReviewAssignment


def png(seed: int) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (48, 48), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)).save(buffer, "PNG")
    return buffer.getvalue()


def make_items(db_url: str, n: int, *, object_store: str | None = None, overlap: int = 1,
               lyric=lambda i: f"I walked along the river number {i}\nand the water sang to me") -> list[int]:
    """``n`` songs whose lyric the filters sent to review, each with one post (and a stored image
    when ``object_store`` is given); returns the review item ids."""
    import hashlib

    store = None
    if object_store:
        from curation.object_store import ObjectStore

        store = ObjectStore(object_store)
    with session_scope(db_url) as session:
        source = Source(name=f"test-{n}", kind="html_site", base_url="http://site")
        session.add(source)
        session.flush()
        for i in range(n):
            song = Song(norm_key=f"song {i}|artist {i % 5}", title=f"Song {i}", artist=f"Artist {i % 5}")
            data = png(i)
            sha = hashlib.sha256(data).hexdigest()
            if store:
                store.put(data, ".png")
            image = Image(url=f"http://site/img/{i}.png", status="stored", sha256=sha, content_type="image/png",
                          width=48, height=48, size_bytes=len(data))
            session.add_all([song, image])
            session.flush()
            session.add(Post(source_id=source.id, external_id=f"p{i}", url=f"http://site/p/{i}", song_id=song.id,
                             image_id=image.id, mood="happy" if i % 2 else "calm", favorite_count=i))
            session.add(LyricCandidate(song_id=song.id, provider="lrclib", text=lyric(i), match_score=0.7,
                                       match_reason="fuzzy title", verdict="review", reason="uncertain match",
                                       scores={"title": 0.7}))
    rq.enqueue_reviews(db_url, overlap=overlap)
    with session_scope(db_url) as session:
        return list(session.scalars(select(ReviewItem.id).order_by(ReviewItem.id)))


def events(db_url, action="decide"):
    with session_scope(db_url) as session:
        return Counter(session.scalars(select(ReviewEvent.item_id).where(ReviewEvent.action == action)))


def test_claim_is_exclusive_and_submit_is_idempotent(db_url):
    items = make_items(db_url, 3)
    a, b = rq.claim(db_url, "ann"), rq.claim(db_url, "bob")
    assert a["item"] != b["item"] and {a["item"], b["item"]} <= set(items)
    first = rq.submit(db_url, a["token"], "accept", curator="ann")
    again = rq.submit(db_url, a["token"], "reject-other", curator="ann")  # a retry or a double click
    assert first["replayed"] is False and again == {"item": a["item"], "decision": "accept", "replayed": True}
    assert events(db_url) == {a["item"]: 1}
    with pytest.raises(rq.LeaseLost):
        rq.submit(db_url, b["token"], "accept", curator="ann")  # not ann's lease
    with pytest.raises(rq.LeaseLost):
        rq.submit(db_url, "forged", "accept", curator="ann")
    with session_scope(db_url) as session:
        item = session.get(ReviewItem, a["item"])
        assert (item.state, item.decision, item.decided_by) == ("decided", "accept", "ann")
        assert session.get(LyricCandidate, item.candidate_id).verdict == "approved"
        assert session.get(ReviewItem, b["item"]).lease_owner == "bob"


def test_expired_lease_returns_the_item_and_the_stale_token_cannot_write(db_url):
    [item] = make_items(db_url, 1)
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    stale = rq.claim(db_url, "ann", lease_seconds=60, now=past)
    assert rq.claim(db_url, "bob", lease_seconds=60, now=past + timedelta(seconds=30)) is None  # still leased
    fresh = rq.claim(db_url, "bob")  # ann's lease has expired
    assert fresh["item"] == item
    rq.submit(db_url, fresh["token"], "reject-instrumental", curator="bob")
    with pytest.raises(rq.LeaseLost):
        rq.submit(db_url, stale["token"], "accept", curator="ann")
    with session_scope(db_url) as session:
        assert session.get(ReviewItem, item).decision == "reject-instrumental"
    assert events(db_url) == {item: 1}


def test_an_expired_lease_nobody_took_still_accepts_its_decision(db_url):
    [item] = make_items(db_url, 1)
    late = rq.claim(db_url, "ann", lease_seconds=1, now=datetime.now(timezone.utc) - timedelta(minutes=5))
    assert rq.submit(db_url, late["token"], "accept", curator="ann")["item"] == item


def test_release_gives_the_item_back(db_url):
    [item] = make_items(db_url, 1)
    lease = rq.claim(db_url, "ann")
    assert rq.claim(db_url, "bob") is None
    assert rq.release(db_url, lease["token"], "ann")
    assert rq.claim(db_url, "bob")["item"] == item


def test_higher_priority_first(db_url):
    items = make_items(db_url, 3)
    with session_scope(db_url) as session:
        session.execute(ReviewAssignment.__table__.update().where(ReviewAssignment.item_id == items[2])
                        .values(priority=99))
    assert rq.claim(db_url, "ann")["item"] == items[2]


def test_undo_restores_the_lyric_and_leases_the_item_again(db_url):
    [item] = make_items(db_url, 1)
    lease = rq.claim(db_url, "ann")
    rq.submit(db_url, lease["token"], "edit", "the right words", curator="ann")
    back = rq.undo_last(db_url, "ann")
    assert back["item"] == item and back["decision"] == "edit" and back["corrected_text"] == "the right words"
    with session_scope(db_url) as session:
        row = session.get(ReviewItem, item)
        candidate = session.get(LyricCandidate, row.candidate_id)
        assert (row.state, row.decision, candidate.verdict) == ("leased", None, "review")
        assert candidate.text.startswith("I walked along the river")
    with pytest.raises(rq.LeaseLost):  # the undone decision's token is dead
        rq.submit(db_url, lease["token"], "accept", curator="ann")
    rq.submit(db_url, back["token"], "accept", curator="ann")
    with pytest.raises(rq.NothingToUndo):
        rq.undo_last(db_url, "bob")
    actions = [e["action"] for e in rq.audit_log(db_url)]
    assert actions == ["decide", "undo", "decide"]


def test_undo_refuses_when_someone_decided_later(db_url):
    [item] = make_items(db_url, 1)
    lease = rq.claim(db_url, "ann")
    rq.submit(db_url, lease["token"], "accept", curator="ann")
    rq.settle(db_url, item, "reject-other", "admin")
    with pytest.raises(rq.NothingToUndo):
        rq.undo_last(db_url, "ann")


def test_overlap_collects_independent_decisions_and_disputes_go_to_an_admin(db_url):
    items = make_items(db_url, 4, overlap=2)
    votes = {"ann": ["accept", "accept", "reject-other", "accept"],
             "bob": ["accept", "reject-not-found", "reject-other", "accept"]}
    for curator, decisions in votes.items():
        for _ in items:
            lease = rq.claim(db_url, curator)
            rq.submit(db_url, lease["token"], decisions[items.index(lease["item"])], curator=curator)
        assert rq.claim(db_url, curator) is None  # never the same item twice
    with session_scope(db_url) as session:
        states = dict(session.execute(select(ReviewItem.id, ReviewItem.state)).all())
    assert states == {items[0]: "decided", items[1]: "disputed", items[2]: "decided", items[3]: "decided"}
    report = rq.agreement(db_url)
    assert [d["item"] for d in report["disputed"]] == [items[1]]
    assert report["cohen"][0]["items"] == 4 and report["cohen"][0]["agree"] == 3
    assert report["cohen"][0]["kappa"] == pytest.approx(rq.cohen_kappa(
        [("accept", "accept"), ("accept", "reject-not-found"), ("reject-other", "reject-other"), ("accept", "accept")]))
    rq.settle(db_url, items[1], "reject-not-found", "admin")
    assert rq.agreement(db_url)["disputed"] == []
    assert rq.progress(db_url)["decided"] == 4


def test_kappas_match_textbook_values():
    # Fleiss (1971) style check: perfect agreement is 1, the Wikipedia worked example is 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert rq.fleiss_kappa(table) == pytest.approx(0.210, abs=1e-3)
    assert rq.fleiss_kappa([[2, 0], [0, 2]]) == 1.0
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert rq.cohen_kappa(pairs) == pytest.approx(0.4)


def test_concurrent_claims_never_share_an_item(db_url):
    items = make_items(db_url, 60)
    decided, errors = [], []

    def curator(name):
        try:
            while (lease := rq.claim(db_url, name)) is not None:
                rq.submit(db_url, lease["token"], "accept", curator=name)
                decided.append(lease["item"])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=curator, args=(f"c{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(decided) == items
    assert set(events(db_url).values()) == {1}
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.state != "decided")) == 0


def test_cli_decide_closes_open_slots(db_url):
    [item] = make_items(db_url, 1)
    lease = rq.claim(db_url, "ann")
    rq.decide(db_url, item, "accept", "cli")
    with pytest.raises(rq.LeaseLost):
        rq.submit(db_url, lease["token"], "reject-other", curator="ann")
    assert rq.claim(db_url, "bob") is None
    assert rq.export_decisions(db_url)[0]["decided_by"] == "cli"


# --- a team's queue: heartbeat, skip, give back and come back, revise, find, reopen ------------

def test_renewed_leases_outlive_their_first_expiry_and_lost_ones_say_so(db_url):
    make_items(db_url, 2)
    t0 = datetime.now(timezone.utc)
    lease = rq.claim(db_url, "ann", lease_seconds=60, now=t0)
    renewed = rq.renew(db_url, [lease["token"], "forged"], "ann", lease_seconds=60, now=t0 + timedelta(seconds=50))
    assert renewed["forged"] is None and renewed[lease["token"]] is not None
    # without the renewal bob would take it over at t0+70; with it the lease still holds
    taken = rq.claim(db_url, "bob", lease_seconds=60, now=t0 + timedelta(seconds=70))
    assert taken["item"] != lease["item"]
    decided = rq.submit(db_url, lease["token"], "accept", curator="ann", now=t0 + timedelta(seconds=100))
    assert decided["replayed"] is False
    assert rq.renew(db_url, [lease["token"]], "ann")[lease["token"]] is None  # decided: nothing to renew
    assert rq.renew(db_url, [taken["token"]], "ann")[taken["token"]] is None  # not hers


def test_skipped_items_go_to_someone_else_first_then_back(db_url):
    items = make_items(db_url, 2)
    first = rq.claim(db_url, "ann")
    rq.skip(db_url, first["token"], "ann")
    second = rq.claim(db_url, "ann")
    assert second["item"] != first["item"]  # not the skipped one while another waits
    assert rq.claim(db_url, "bob")["item"] == first["item"]  # someone else gets it first
    rq.submit(db_url, second["token"], "accept", curator="ann")
    assert rq.claim(db_url, "ann") is None  # bob holds the only one left
    assert events(db_url, "skip") == {first["item"]: 1}
    with pytest.raises(rq.LeaseLost):
        rq.skip(db_url, first["token"], "ann")
    assert sorted(items) == sorted([first["item"], second["item"]])


def test_skipped_item_comes_back_to_its_curator_when_nothing_else_is_left(db_url):
    [item] = make_items(db_url, 1)
    lease = rq.claim(db_url, "ann")
    rq.skip(db_url, lease["token"], "ann")
    assert rq.claim(db_url, "ann")["item"] == item


def test_given_back_claims_return_to_their_curator_on_the_next_login(db_url):
    make_items(db_url, 6)
    mine = [rq.claim(db_url, "ann")["item"] for _ in range(2)]
    assert rq.my_leases(db_url, "ann")[0]["item"] == mine[0]
    assert rq.release_all(db_url, "ann") == 2  # logout
    assert rq.my_leases(db_url, "ann") == []
    with session_scope(db_url) as session:  # everything else becomes more urgent meanwhile
        session.execute(ReviewAssignment.__table__.update().where(ReviewAssignment.item_id.not_in(mine))
                        .values(priority=100))
    back = [rq.claim(db_url, "ann")["item"], rq.claim(db_url, "ann")["item"]]
    assert sorted(back) == sorted(mine)  # ahead of the more urgent items nobody has seen
    rq.release_all(db_url, "ann")
    taken = rq.claim(db_url, "bob", item_id=mine[0])["item"]  # still free: anyone may take them meanwhile
    assert rq.claim(db_url, "ann")["item"] == (set(mine) - {taken}).pop()


def test_a_lost_lease_can_be_claimed_again_when_free(db_url):
    make_items(db_url, 3)
    t0 = datetime.now(timezone.utc)
    lease = rq.claim(db_url, "ann", lease_seconds=1, now=t0)
    later = t0 + timedelta(seconds=5)
    again = rq.claim(db_url, "ann", item_id=lease["item"], now=later)
    assert again["item"] == lease["item"] and again["token"] != lease["token"]
    with pytest.raises(rq.LeaseLost):
        rq.submit(db_url, lease["token"], "accept", curator="ann", now=later)
    assert rq.claim(db_url, "bob", item_id=lease["item"], now=later) is None  # held again by ann


def test_comments_reach_the_audit_log_and_the_export(db_url):
    [item] = make_items(db_url, 1)
    lease = rq.claim(db_url, "ann")
    rq.submit(db_url, lease["token"], "reject-other", curator="ann", comment="  two songs glued together ")
    [event] = rq.audit_log(db_url)
    assert event["after"]["comment"] == "two songs glued together"
    [row] = rq.export_decisions(db_url)
    assert row["comments"] == "ann: two songs glued together"
    with pytest.raises(ValueError, match="at most"):
        rq.submit(db_url, "x", "accept", curator="ann", comment="x" * (rq.MAX_COMMENT + 1))
    with pytest.raises(ValueError, match="not one song"):
        rq.submit(db_url, "x", "edit", "la " * rq.MAX_TEXT, curator="ann")


def test_the_text_hash_follows_every_change_of_the_lyric(db_url):
    """An edit, its undo, a revised decision and a reopened item each change the lyric's text; the text
    hash the duplicate filter looks up must follow, or a copy of the corrected lyric passes unseen."""
    from curation.crawl_store import store_lyric
    from curation.lyrics.filters import filter_pending
    from curation.lyrics.text import text_hash

    from crawlers.lyrics import LyricHit

    items = make_items(db_url, 3)
    with session_scope(db_url) as session:  # as the lyric stage leaves them
        for candidate in session.scalars(select(LyricCandidate)):
            candidate.text_hash = text_hash(candidate.text)

    def hash_of(item):
        with session_scope(db_url) as session:
            candidate = session.get(LyricCandidate, session.get(ReviewItem, item).candidate_id)
            assert candidate.text_hash == text_hash(candidate.text)
            return candidate.text_hash

    original = hash_of(items[0])
    corrected = ("I walked along the harbour in the evening light, the water singing softly to the sky, "
                 "and every gull was calling out your name across the golden fields of home tonight.")
    lease = rq.claim(db_url, "ann", item_id=items[0])
    rq.submit(db_url, lease["token"], "edit", corrected, curator="ann")
    assert hash_of(items[0]) == text_hash(corrected) != original
    again = rq.undo_last(db_url, "ann")
    assert hash_of(items[0]) == original
    rq.submit(db_url, again["token"], "edit", corrected, curator="ann")
    rq.revise(db_url, "ann", items[0], "accept")
    assert hash_of(items[0]) == original
    rq.decide(db_url, items[1], "edit", "boss", "corrected words")
    assert hash_of(items[1]) == text_hash("corrected words")
    rq.reopen(db_url, items[1], "boss")
    assert hash_of(items[1]) != text_hash("corrected words")

    # The curator's corrected lyric owns its text: the same text arriving for another song is a duplicate.
    rq.decide(db_url, items[2], "edit", "boss", corrected)
    with session_scope(db_url) as session:
        session.add(Song(norm_key="copy|x", title="Copy", artist="X"))
        session.flush()
        copy = session.scalar(select(Song.id).where(Song.norm_key == "copy|x"))
    store_lyric(db_url, copy, "lrclib", LyricHit("lrclib", "9", "Copy", "X", 200.0, False, corrected, None, 1.0,
                                                 "exact lookup: test"))
    assert filter_pending(db_url)["review:duplicate"] == 1


def test_recent_decisions_stay_editable_until_a_snapshot_includes_them(db_url):
    items = make_items(db_url, 2, lyric=lambda i: f"original words {i}")
    first = rq.claim(db_url, "ann")
    rq.submit(db_url, first["token"], "edit", "fixed words", curator="ann")
    [recent] = rq.recent_decisions(db_url, "ann")
    assert recent["item"] == first["item"] and recent["editable"] and recent["decision"] == "edit"
    rq.revise(db_url, "ann", first["item"], "reject-instrumental", comment="it is a drum solo")
    with session_scope(db_url) as session:
        item = session.get(ReviewItem, first["item"])
        candidate = session.get(LyricCandidate, item.candidate_id)
        assert item.decision == "reject-instrumental" and candidate.verdict == "rejected"
        assert candidate.text == f"original words {items.index(first['item'])}"  # the edit's text is undone
    assert [e["action"] for e in rq.audit_log(db_url)][:1] == ["revise"]
    with pytest.raises(rq.NotEditable):
        rq.revise(db_url, "bob", first["item"], "accept")  # not bob's decision
    from curation.catalog import SnapshotRecord

    with session_scope(db_url) as session:
        session.add(SnapshotRecord(version="v1", uri="x", manifest_sha256="0" * 64))
    [recent] = rq.recent_decisions(db_url, "ann")
    assert not recent["editable"] and recent["why_locked"] == "in a snapshot"
    with pytest.raises(rq.NotEditable, match="snapshot"):
        rq.revise(db_url, "ann", first["item"], "accept")


def test_admin_finds_items_and_reopens_a_decision(db_url):
    items = make_items(db_url, 12, lyric=lambda i: f"words {i}")
    assert [row["item"] for row in rq.find_items(db_url, "song 11")] == [items[11]]
    assert {row["item"] for row in rq.find_items(db_url, "ARTIST 3")} == {items[3], items[8]}
    assert [row["item"] for row in rq.find_items(db_url, str(items[5]))] == [items[5]]
    assert rq.find_items(db_url, "100%_") == []  # wildcards are literal
    rq.decide(db_url, items[4], "edit", "boss", "corrected words", comment="typo fixed")
    with pytest.raises(ValueError, match="not decided"):
        rq.reopen(db_url, items[5], "boss")
    rq.reopen(db_url, items[4], "boss", comment="check again")
    with session_scope(db_url) as session:
        item = session.get(ReviewItem, items[4])
        candidate = session.get(LyricCandidate, item.candidate_id)
        assert item.state == "pending" and candidate.verdict == "review" and candidate.text == "words 4"
    last = rq.audit_log(db_url, item_id=items[4])[0]
    assert last["action"] == "reopen" and last["before"]["decision"] == "edit" and last["after"]["state"] == "pending"
    claimed = {rq.claim(db_url, f"c{i}")["item"] for i in range(12)}
    assert items[4] in claimed  # back in the queue
