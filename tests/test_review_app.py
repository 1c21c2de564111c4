"""The review web app over real HTTP (uvicorn on loopback): login, CSRF, authorization, escaping,
session expiry, the curator API, admin pages, and 20 curators at once on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import Counter

import pytest
import requests
from sqlalchemy import func, select

from curation.review import queue as rq
from curation.catalog import ReviewEvent, ReviewItem, session_scope
from curation.catalog.models import ReviewAssignment
from curation.review.app import ReviewConfig, create_app, server_config
from curation.review.security import ThrottleConfig
from curation.review.users import add_curator
from test_review_queue import make_items

PASSWORD = "correct horse battery"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@contextlib.contextmanager
def running_app(config: ReviewConfig):
    """The app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(create_app(config)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def client() -> requests.Session:
    """An HTTP client that resends a request whose connection broke, as the page does: every API
    call is safe to resend (a submit is keyed by its lease token)."""
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    retry = Retry(total=4, connect=4, read=4, status=0, other=0, allowed_methods=None, backoff_factor=0.2,
                  raise_on_status=False)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def attempt_login(base: str, name: str, password: str = PASSWORD, *, forwarded: str | None = None,
                  session: requests.Session | None = None) -> requests.Response:
    """One login through the form (its CSRF token first), from ``session`` or a fresh client, with
    ``X-Forwarded-For: forwarded`` when given; the app's answer, whatever it is."""
    session = session or client()
    token = csrf_of(session.get(f"{base}/login").text)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return session.post(f"{base}/login", data={"name": name, "password": password, "csrf": token},
                        headers=headers, allow_redirects=False)


def login(base: str, name: str, password: str = PASSWORD) -> requests.Session:
    """A client logged in as ``name``, carrying its session's CSRF token."""
    session = client()
    response = attempt_login(base, name, password, session=session)
    assert response.status_code == 303, response.text
    session.headers["X-CSRF-Token"] = csrf_of(session.get(f"{base}/").text)
    return session


@pytest.fixture
def app_env(db_url, tmp_path):
    """The review team on each database (curators ann and bob, admin boss, all with ``PASSWORD``) and an
    object store folder: (db_url, store). The other review test modules import it."""
    store = str(tmp_path / "objects")
    add_curator(db_url, "ann", PASSWORD)
    add_curator(db_url, "bob", PASSWORD)
    add_curator(db_url, "boss", PASSWORD, role="admin")
    return db_url, store


def test_anonymous_gets_the_login_page_and_nothing_else(app_env):
    db_url, store = app_env
    make_items(db_url, 2, object_store=store, lyric=lambda i: "secret lyric words")
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        for path in ["/", "/admin", "/admin/audit", "/admin/export.csv", "/static/queue.js", "/nowhere", "/docs"]:
            response = requests.get(base + path, allow_redirects=False)
            assert response.status_code == 303 and response.headers["location"] == "/login", path
            assert "secret" not in response.text
        for path in ["/image/1", "/api/anything"]:
            assert requests.get(base + path).status_code == 401
        anonymous = requests.Session()
        token = csrf_of(anonymous.get(f"{base}/login").text)  # even with a valid pre-login CSRF token
        response = anonymous.post(f"{base}/api/claim", headers={"X-CSRF-Token": token})
        assert response.status_code == 401 and "secret" not in response.text
        page = requests.get(f"{base}/login")
        assert page.status_code == 200 and "Log in" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert requests.get(f"{base}/static/app.css").status_code == 200


def test_login_needs_csrf_and_is_rate_limited(app_env):
    db_url, store = app_env
    with running_app(ReviewConfig(db_url=db_url, object_store=store,
                                  throttle=ThrottleConfig(free_failures=3, base_delay=60))) as base:
        fresh = requests.Session()
        fresh.get(f"{base}/login")
        no_token = fresh.post(f"{base}/login", data={"name": "ann", "password": PASSWORD}, allow_redirects=False)
        assert no_token.status_code == 403
        session = requests.Session()
        token = csrf_of(session.get(f"{base}/login").text)
        for _ in range(3):
            bad = session.post(f"{base}/login", data={"name": "ann", "password": "wrong!!!!", "csrf": token})
            assert bad.status_code == 401 and "Wrong name or password" in bad.text
        blocked = session.post(f"{base}/login", data={"name": "ann", "password": PASSWORD, "csrf": token},
                               allow_redirects=False)
        assert blocked.status_code == 429  # even the right password waits now
        assert login(base, "bob").get(f"{base}/").status_code == 200  # others are not locked out


def test_every_post_needs_the_csrf_token_and_same_origin(app_env):
    db_url, store = app_env
    make_items(db_url, 2, object_store=store)
    app = create_app(ReviewConfig(db_url=db_url))
    posts = sorted({route.path.replace("{item_id}", "1") for route in app.routes
                    if "POST" in getattr(route, "methods", ()) and route.path != "/login"})
    assert {"/api/claim", "/api/submit", "/api/undo", "/admin/settle/1", "/logout"} <= set(posts)
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        boss = login(base, "boss")
        good = boss.headers.pop("X-CSRF-Token")
        for path in posts:
            assert boss.post(base + path, json={}).status_code == 403, path
            assert boss.post(base + path, data={"csrf": "forged"}).status_code == 403, path
        cross = boss.post(f"{base}/api/claim", headers={"X-CSRF-Token": good, "Origin": "http://evil.example"})
        assert cross.status_code == 403
        assert boss.post(f"{base}/api/claim", headers={"X-CSRF-Token": good, "Origin": base}).status_code == 200
        with session_scope(db_url) as session:  # nothing but that last claim happened
            assert session.scalar(select(func.count()).select_from(ReviewEvent)) == 0


def test_curators_cannot_use_admin_pages_and_disabled_accounts_are_out(app_env):
    db_url, store = app_env
    [item, _] = make_items(db_url, 2, object_store=store)
    with running_app(ReviewConfig(db_url=db_url, object_store=store, user_cache_seconds=0)) as base:
        ann = login(base, "ann")
        for path in ["/admin", "/admin/audit", "/admin/export.jsonl", "/admin/find?q=Song"]:
            assert ann.get(base + path).status_code == 403
        assert ann.post(f"{base}/admin/reopen/{item}", data={"csrf": ann.headers["X-CSRF-Token"]}).status_code == 403
        assert ann.post(f"{base}/admin/settle/{item}", data={"decision": "accept",
                                                            "csrf": ann.headers["X-CSRF-Token"]}).status_code == 403
        assert ann.post(f"{base}/admin/curators", data={"name": "ann", "password": "x" * 10, "role": "admin",
                                                        "replace": "yes",
                                                        "csrf": ann.headers["X-CSRF-Token"]}).status_code == 403
        boss = login(base, "boss")
        assert boss.get(f"{base}/admin").status_code == 200
        boss.post(f"{base}/admin/curators", data={"name": "ann", "action": "disable",
                                                  "csrf": boss.headers["X-CSRF-Token"]})
        assert ann.post(f"{base}/api/claim").status_code == 401
        assert ann.get(f"{base}/", allow_redirects=False).headers["location"] == "/login"


def test_sessions_expire(app_env):
    db_url, store = app_env
    with running_app(ReviewConfig(db_url=db_url, object_store=store, session_seconds=1)) as base:
        ann = login(base, "ann")
        assert ann.get(f"{base}/", allow_redirects=False).status_code == 200
        time.sleep(1.5)
        assert ann.get(f"{base}/", allow_redirects=False).headers["location"] == "/login"


def test_hostile_text_is_escaped_everywhere(app_env):
    db_url, store = app_env
    [item] = make_items(db_url, 1, object_store=store, overlap=2, lyric=lambda i: HOSTILE + " la la")
    with session_scope(db_url) as session:
        from curation.catalog import Song

        session.execute(Song.__table__.update().values(title=HOSTILE, artist="=cmd|' /C calc'!A0"))
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        ann, bob, boss = login(base, "ann"), login(base, "bob"), login(base, "boss")
        for who, decision, text in ((ann, "edit", HOSTILE), (bob, "accept", None)):
            lease = who.post(f"{base}/api/claim").json()["item"]
            assert lease["title"] == HOSTILE  # JSON carries the text; the page shows it with textContent
            assert who.post(f"{base}/api/submit", json={"token": lease["token"], "decision": decision,
                                                        "text": text}).status_code == 200
        for path in ["/admin", "/admin/audit", f"/admin/audit?actor={HOSTILE}"]:
            html = boss.get(base + path).text
            assert "<script>alert" not in html and "<img src=x" not in html, path
            assert "&lt;script&gt;alert(" in html, path
        settled = boss.post(f"{base}/admin/settle/{item}", data={"decision": "reject-other",
                                                                 "csrf": boss.headers["X-CSRF-Token"]})
        assert "settled" in settled.text
        csv_text = boss.get(f"{base}/admin/export.csv").text
        assert "'=cmd" in csv_text  # no formula for a spreadsheet to run


def test_curator_api_claim_submit_replay_undo_and_images(app_env):
    db_url, store = app_env
    items = make_items(db_url, 3, object_store=store)
    calls = []
    config = ReviewConfig(db_url=db_url, object_store=store, on_rebuild=lambda: calls.append(1) or "run-7",
                          rebuild_every=2)
    with running_app(config) as base:
        ann = login(base, "ann")
        first = ann.post(f"{base}/api/claim").json()["item"]
        assert first["item"] in items and first["search_url"].startswith("https://")
        image = ann.get(base + first["images"][0])
        assert image.headers["content-type"] == "image/png" and image.content[:4] == b"\x89PNG"
        body = {"token": first["token"], "decision": "accept", "next": True}
        answer = ann.post(f"{base}/api/submit", json=body).json()
        again = ann.post(f"{base}/api/submit", json=body).json()  # double click
        assert answer["result"]["replayed"] is False and again["result"]["replayed"] is True
        assert answer["next"]["item"] != first["item"] and again["next"]["item"] not in (first["item"], answer["next"]["item"])
        bad = ann.post(f"{base}/api/submit", json={"token": answer["next"]["token"], "decision": "edit", "text": " "})
        assert bad.status_code == 422 and "corrected lyric" in bad.json()["error"]
        ann.post(f"{base}/api/submit", json={"token": answer["next"]["token"], "decision": "reject-not-found"})
        undone = ann.post(f"{base}/api/undo").json()
        assert undone["item"]["item"] == answer["next"]["item"] and undone["undone"]["decision"] == "reject-not-found"
        lost = ann.post(f"{base}/api/submit", json={"token": answer["next"]["token"], "decision": "accept"})
        assert lost.status_code == 409 and lost.json()["lost"]
        time.sleep(0.3)
        assert calls == [1]  # two new decisions reached the threshold
        boss = login(base, "boss")
        flash = boss.post(f"{base}/admin/rebuild", data={"csrf": boss.headers["X-CSRF-Token"]}).text
        assert "Airflow run run-7" in flash and len(calls) == 2
        export = boss.get(f"{base}/admin/export.jsonl").text.splitlines()
        assert len(export) == 1 and '"decision": "accept"' in export[0]
        admin_page = boss.get(f"{base}/admin").text
        assert "ann" in admin_page and "Throughput" in admin_page
        released = ann.post(f"{base}/api/release", json={"tokens": [undone["item"]["token"]]}).json()
        assert released == {"released": 1}


def run_curators(base: str, names: list[str], seconds: float = 600) -> tuple[list[int], list[str]]:
    """Each curator logs in and works until the queue is empty: save-and-next, with a retried
    (duplicate) submit now and then. Returns the items each decision was recorded for, and errors."""
    recorded: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def work(name: str, index: int):
        try:
            session = login(base, name)
            item = session.post(f"{base}/api/claim").json()["item"]
            count = 0
            deadline = time.monotonic() + seconds
            while item is not None and time.monotonic() < deadline:
                body = {"token": item["token"], "decision": "accept" if count % 3 else "reject-other", "next": True}
                answer = session.post(f"{base}/api/submit", json=body)
                assert answer.status_code == 200, answer.text
                data = answer.json()
                if count % 5 == index % 5:  # a retry of the same request must not record twice
                    retry = session.post(f"{base}/api/submit", json={**body, "next": False}).json()
                    assert retry["result"]["replayed"] is True
                with lock:
                    recorded.append(data["result"]["item"])
                item = data["next"]
                if item is None:  # as a reopened page does: pick up a claim a resent request left behind
                    held = session.post(f"{base}/api/resume").json()["items"]
                    item = held[0] if held else None
                count += 1
        except Exception as error:  # collected and reported by the test
            with lock:
                errors.append(f"{name}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(name, i)) for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return recorded, errors


def test_twenty_curators_at_once_lose_nothing_and_share_nothing(db_url, tmp_path):
    items = make_items(db_url, 300)
    names = [f"curator{i:02d}" for i in range(20)]
    for name in names:
        add_curator(db_url, name, PASSWORD)
    with running_app(ReviewConfig(db_url=db_url)) as base:
        recorded, errors = run_curators(base, names)
    assert errors == []
    assert sorted(recorded) == items  # every item once: none lost, none decided twice
    with session_scope(db_url) as session:
        decide_events = Counter(session.scalars(select(ReviewEvent.item_id).where(ReviewEvent.action == "decide")))
        assert set(decide_events) == set(items) and set(decide_events.values()) == {1}
        assert session.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.state != "decided")) == 0
        submitted = Counter(session.scalars(select(ReviewAssignment.item_id)
                                            .where(ReviewAssignment.state == "submitted")))
        assert set(submitted.values()) == {1}
    assert sum(row["decisions"] for row in rq.throughput(db_url)) == len(items)


def test_review_commands_start_on_a_fresh_state_folder(tmp_path, monkeypatch):
    """`image2song review serve` (and `add-curator`, the step before it) in a state folder that does not
    exist yet: each creates the catalog there, as `db upgrade` does; a folder that cannot be made is one
    clear line."""
    import io
    import os
    import subprocess
    import sys
    from pathlib import Path

    from curation.review.users import list_curators
    from image2song import cli
    from image2song.settings import Settings
    from tests.test_end_to_end import free_port

    monkeypatch.setenv("IMAGE2SONG_HOME", str(tmp_path / "first" / "state"))
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main(["review", "add-curator", "ann", "--password-stdin"]) == 0
    assert [c["name"] for c in list_curators(Settings.from_env().db_url)] == ["ann"]

    root = Path(__file__).resolve().parent.parent
    home = tmp_path / "fresh" / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE2SONG_")}
    env["IMAGE2SONG_HOME"] = str(home)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "image2song", "review", "serve", "--port", str(port)],
                              cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, answered = time.monotonic() + 120, None
        while answered is None and server.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError):
                answered = requests.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code
            time.sleep(0.2)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert answered == 200, output[-2000:]
    assert (home / "catalog.sqlite").is_file()

    (tmp_path / "a-file").write_text("not a folder")
    env = {**env, "IMAGE2SONG_HOME": str(tmp_path / "a-file" / "state")}
    result = subprocess.run([sys.executable, "-m", "image2song", "db", "upgrade"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"image2song: cannot create the catalog's folder {tmp_path / 'a-file' / 'state'}: Not a directory"]
