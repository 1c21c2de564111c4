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
