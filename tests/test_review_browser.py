"""The review app in a real headless Chromium (Debian's, driven by Playwright): log in, claim,
decide by keyboard, edit, undo; hostile lyric text shows as text."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select

from curation.catalog import LyricCandidate, ReviewEvent, ReviewItem, session_scope
from curation.review.app import ReviewConfig
from curation.review.users import add_curator
from test_review_app import HOSTILE, PASSWORD, running_app
from test_review_queue import make_items

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (make setup installs it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_curator_works_the_queue_by_keyboard(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    from curation.catalog import upgrade

    upgrade(db_url)
    store = str(tmp_path / "objects")
    items = make_items(db_url, 4, object_store=store,
                       lyric=lambda i: (HOSTILE + " la la la") if i == 0 else f"plain words of song {i}")
    add_curator(db_url, "ann", PASSWORD)
    dialogs = []
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        page = browser.new_page()
        page.set_default_timeout(60_000)  # two shared cores under a full test run can be slow
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(base + "/")
        assert page.url.endswith("/login")
        page.fill("input[name=name]", "ann")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#item:not([hidden])")
        page.wait_for_function("() => document.querySelector('#status').textContent.includes('next item ready')")

        def current() -> str:
            return page.text_content("#item-id")

        def wait_shown(item: str, same: bool = False) -> None:
            try:
                page.wait_for_function(
                    "([item, same]) => (document.querySelector('#item-id').textContent === item) === same",
                    arg=[item, same])
            except Exception as error:  # say what the page said, so a failure can be told apart
                raise AssertionError(f"waiting for {item} {'on' if same else 'off'} screen: status "
                                     f"{page.text_content('#status')!r}, message {page.text_content('#message')!r}, "
                                     f"focus {page.evaluate('document.activeElement.id')!r}") from error

        # the first item (highest priority is the last created): images load, text is text
        seen = [current()]
        page.wait_for_function("() => [...document.querySelectorAll('#images img')].every(i => i.naturalWidth > 0)")
        assert page.get_attribute("#search", "href").startswith("https://")

        page.keyboard.press("a")  # accept: the next item is on screen at once
        wait_shown(seen[0])
        seen.append(current())

        page.keyboard.press("e")  # edit and save a corrected lyric
        page.wait_for_selector("#corrected:focus")
        page.fill("#corrected", "the corrected words\nsecond line")
        page.keyboard.press("Control+Enter")
        wait_shown(seen[1])
        seen.append(current())

        page.keyboard.press("u")  # undo the edit: that item comes back
        wait_shown(seen[1], same=True)
        assert "Undone: edit" in page.text_content("#status")
        page.keyboard.press("n")  # decide it again: not English
        wait_shown(seen[2], same=True)

        while page.is_visible("#item"):  # work the rest, checking the hostile lyric on the way
            if HOSTILE in (page.text_content("#lyric") or ""):
                assert page.locator("#lyric img").count() == 0 and page.locator("#lyric script").count() == 0
            shown = current()
            page.keyboard.press("i")
            page.wait_for_function("(shown) => document.querySelector('#item-id').textContent !== shown "
                                   "|| !document.querySelector('#empty').hidden", arg=shown)
            if not page.is_visible("#empty"):
                continue
            break
        page.wait_for_selector("#empty:not([hidden])")
        assert dialogs == []

    with session_scope(db_url) as session:
        rows = {item.id: item for item in session.scalars(select(ReviewItem))}
        assert all(row.state == "decided" for row in rows.values())
        second = int(seen[1].lstrip("#"))
        assert rows[second].decision == "reject-non-english" and rows[second].corrected_text is None
        assert session.get(LyricCandidate, rows[second].candidate_id).text == f"plain words of song {items.index(second)}"
        assert rows[int(seen[0].lstrip("#"))].decision == "accept"
        actions = [e.action for e in session.scalars(select(ReviewEvent).order_by(ReviewEvent.id))]
        assert actions.count("undo") == 1 and actions.count("decide") == len(items) + 1


def test_curator_page_for_a_team(browser, tmp_path):
    """Heartbeat and lease timer, a lost lease that keeps the text and claims again, skip, a comment,
    the key-help overlay, items remaining, the recent-decisions sidebar, and bidi-isolated titles."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from curation.catalog import Song
    from curation.catalog.models import ReviewAssignment
    from curation.review import queue as rq

    db_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    from curation.catalog import upgrade

    upgrade(db_url)
    store = str(tmp_path / "objects")
    items = make_items(db_url, 6, object_store=store)
    with session_scope(db_url) as session:  # a right-to-left override in every title
        session.execute(update(Song).values(title="\u202e" + Song.title))
    add_curator(db_url, "ann", PASSWORD)
    lease_seconds = 9
    with running_app(ReviewConfig(db_url=db_url, object_store=store, lease_seconds=lease_seconds)) as base:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(base + "/login")
        page.fill("input[name=name]", "ann")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_function("() => document.querySelector('#status').textContent.includes('next item ready')")
        page.wait_for_function("() => /^\\d+$/.test(document.querySelector('#remaining').textContent)")
        assert page.text_content("#remaining") == str(len(items))
        page.wait_for_function("() => /^\\d:\\d\\d left$/.test(document.querySelector('#lease-left').textContent)")

        # bidi: the override stays inside the title; the artist is still shown after (right of) it
        title_box, artist_box = page.locator("#title").bounding_box(), page.locator("#artist").bounding_box()
        assert artist_box["x"] > title_box["x"] + title_box["width"] - 1
        assert page.get_attribute("#lyric", "dir") == "auto"

        def current() -> int:
            return int(page.text_content("#item-id").lstrip("#"))

        def wait_off(item: int) -> None:
            page.wait_for_function("(item) => document.querySelector('#item-id').textContent !== '#' + item", arg=item)

        # help overlay: ? opens, Esc closes; keys do not decide while it is open
        page.keyboard.press("?")
        page.wait_for_selector("#help:not([hidden])")
        first = current()
        page.keyboard.press("a")
        assert current() == first
        page.keyboard.press("Escape")
        page.wait_for_selector("#help", state="hidden")

        # an open editor keeps its lease past the first expiry (the heartbeat renews it)
        page.keyboard.press("e")
        page.wait_for_selector("#corrected:focus")
        page.fill("#corrected", "kept through the heartbeat")
        held = {lease["item"]: datetime.fromisoformat(lease["expires_at"]) for lease in rq.my_leases(db_url, "ann")}
        assert len(held) == 2 and first in held  # the one on screen and the pre-claimed next one
        latest_expiry = max(held.values())
        page.wait_for_function(f"() => Date.now() > {(latest_expiry + timedelta(seconds=1)).timestamp() * 1000}")
        renewed = {lease["item"] for lease in rq.my_leases(db_url, "ann")}  # live leases only
        assert renewed == set(held)  # both outlived their first expiry: the heartbeat renewed them
        page.keyboard.press("Control+Enter")
        wait_off(first)
        page.wait_for_function("() => document.querySelectorAll('#recent-list li').length === 1")
        assert rq.find_items(db_url, str(first))[0]["decision"] == "edit"

        # a lease lost anyway (taken over while the editor is open): the text stays, claim it again
        second = current()
        assert second in held  # the pre-claimed item, kept all along
        page.keyboard.press("e")
        page.wait_for_selector("#corrected:focus")
        page.fill("#corrected", "my careful words")
        with session_scope(db_url) as session:
            session.execute(update(ReviewAssignment).where(ReviewAssignment.item_id == second)
                            .values(lease_expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        bob = rq.claim(db_url, "bob", item_id=second)
        assert bob is not None
        page.wait_for_selector("#lost:not([hidden])")
        assert page.input_value("#lost-text") == "my careful words"
        page.click("#reclaim")
        page.wait_for_function("() => document.querySelector('#message').textContent.includes('Someone else has')")
        rq.release(db_url, bob["token"], "bob")
        page.click("#reclaim")
        page.wait_for_selector("#corrected:focus")
        assert current() == second and page.input_value("#corrected") == "my careful words"
        page.keyboard.press("Control+Enter")
        wait_off(second)

        # skip: the item goes back (to someone else first)
        skipped = current()
        page.keyboard.press("k")
        wait_off(skipped)

        # a comment goes with the decision
        commented = current()
        page.keyboard.press("c")
        page.wait_for_selector("#comment:focus")
        page.keyboard.type("chorus is from another song")
        page.keyboard.press("Enter")
        page.keyboard.press("o")
        wait_off(commented)
        page.wait_for_function("() => document.querySelectorAll('#recent-list li').length === 3")
        assert "chorus is from another song" in page.text_content("#recent-list li:first-child")

        # the sidebar changes a recent decision
        page.click("#recent-list li:first-child button.change")
        page.wait_for_selector("#revise:not([hidden])")
        page.select_option("#revise-decision", "reject-instrumental")
        page.click("#revise-save")
        page.wait_for_function("() => document.querySelector('#recent-list li:first-child .recent-decision')"
                               ".textContent === 'reject-instrumental'")
        page.wait_for_function(f"() => document.querySelector('#remaining').textContent === '{len(items) - 3}'")

    with session_scope(db_url) as session:
        from curation.catalog.models import ReviewAssignment as Slot

        slots = {slot.item_id: slot for slot in session.scalars(select(Slot))}
        assert slots[second].corrected_text == "my careful words" and slots[second].lease_owner == "ann"
        assert slots[commented].decision == "reject-instrumental"
        assert slots[commented].comment == "chorus is from another song"
        assert slots[skipped].state in ("open", "leased") and slots[skipped].decision is None
        actions = [e.action for e in session.scalars(select(ReviewEvent).order_by(ReviewEvent.id))]
        assert actions.count("skip") == 1 and actions.count("revise") == 1
