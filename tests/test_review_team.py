"""The review app for a real team, over real HTTP (uvicorn on loopback): revocable server-side
sessions, login throttling that never locks an office out, a trusted proxy's forwarded addresses,
bounds on every input of every route, leases handed back and coming back, and the admin's find,
reopen and before/after audit view."""

from __future__ import annotations

import re
import threading

import requests

from curation.review import queue as rq
from curation.review.app import MAX_ID, ReviewConfig, audit_changes, create_app
from curation.review.security import ThrottleConfig, client_address, parse_networks
from curation.review.users import add_curator
from test_review_app import PASSWORD, attempt_login, client, csrf_of, login, run_curators, running_app
from test_review_app import app_env  # noqa: F401 - the review team fixture, used by name
from test_review_queue import make_items

HUGE = "99999999999999999999"


def works(session: requests.Session, base: str) -> bool:
    return session.post(f"{base}/api/claim").status_code == 200


# --- sessions ---------------------------------------------------------------------------------

def test_logout_ends_the_session_even_for_a_copied_cookie(app_env):
    db_url, store = app_env
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        ann = login(base, "ann")
        stolen = client()
        stolen.cookies.update(ann.cookies)
        stolen.headers.update(ann.headers)
        assert works(stolen, base)
        assert ann.post(f"{base}/logout", allow_redirects=False).status_code == 303
        assert stolen.post(f"{base}/api/claim").status_code == 401
        assert stolen.get(f"{base}/", allow_redirects=False).headers["location"] == "/login"


def test_password_change_and_reset_end_every_session_of_that_curator(app_env):
    db_url, store = app_env
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        laptop, phone, bob = login(base, "ann"), login(base, "ann"), login(base, "bob")
        assert "open sessions: <strong id=\"session-count\">2</strong>" in laptop.get(f"{base}/account").text
        wrong = laptop.post(f"{base}/account/password", data={"current": "nope nope", "new": "another secret 1",
                                                              "csrf": laptop.headers["X-CSRF-Token"]})
        assert "Password unchanged: the current password is wrong" in wrong.text and works(phone, base)
        changed = laptop.post(f"{base}/account/password", allow_redirects=False,
                              data={"current": PASSWORD, "new": "another secret 1",
                                    "csrf": laptop.headers["X-CSRF-Token"]})
        assert changed.headers["location"] == "/login"
        assert not works(laptop, base) and not works(phone, base)
        assert works(bob, base)  # nobody else is touched
        again = login(base, "ann", "another secret 1")
        boss = login(base, "boss")  # an admin's reset (replace) ends them too
        boss.post(f"{base}/admin/curators", data={"name": "ann", "password": PASSWORD, "role": "curator",
                                                  "replace": "yes", "csrf": boss.headers["X-CSRF-Token"]})
        assert not works(again, base)


def test_log_out_everywhere_and_disabling_give_claims_back(app_env):
    db_url, store = app_env
    make_items(db_url, 4, object_store=store)
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        laptop, phone = login(base, "ann"), login(base, "ann")
        held = [laptop.post(f"{base}/api/claim").json()["item"]["item"] for _ in range(2)]
        laptop.post(f"{base}/account/logout-everywhere")
        assert not works(laptop, base) and not works(phone, base)
        assert rq.my_leases(db_url, "ann") == []  # given back at once, not in 10 minutes
        ann = login(base, "ann")
        resumed = ann.post(f"{base}/api/resume").json()
        assert resumed["items"] == [] and resumed["remaining"] == 4
        back = {ann.post(f"{base}/api/claim").json()["item"]["item"] for _ in range(2)}
        assert back == set(held)  # her still-free claims come back to her first
        boss = login(base, "boss")
        boss.post(f"{base}/admin/curators", data={"name": "ann", "action": "disable",
                                                  "csrf": boss.headers["X-CSRF-Token"]})
        assert not works(ann, base) and rq.my_leases(db_url, "ann") == []


def test_a_reopened_page_gets_its_live_claims_back(app_env):
    db_url, store = app_env
    make_items(db_url, 5, object_store=store)
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        ann = login(base, "ann")
        held = [ann.post(f"{base}/api/claim").json()["item"]["item"] for _ in range(3)]
        resumed = ann.post(f"{base}/api/resume").json()  # a page opened again (no beacon came)
        assert [view["item"] for view in resumed["items"]] == held[:2]
        assert [lease["item"] for lease in rq.my_leases(db_url, "ann")] == held[:2]  # the third went back


# --- login throttling -------------------------------------------------------------------------

def test_an_office_of_twenty_keeps_working_while_one_mistypes_twenty_times(db_url):
    """Everyone here comes from 127.0.0.1: one office behind one address."""
    items = make_items(db_url, 60)
    names = [f"curator{i:02d}" for i in range(20)]
    for name in names:
        add_curator(db_url, name, PASSWORD)
    answers: list[int] = []
    # A minute's delay after the free failures: each attempt is refused however slowly the machine runs
    # (the doubling itself is tested with a clock of its own below).
    with running_app(ReviewConfig(db_url=db_url, throttle=ThrottleConfig(base_delay=60))) as base:
        def mistype():
            for _ in range(20):
                answers.append(attempt_login(base, names[0], "wrong password").status_code)

        typo = threading.Thread(target=mistype)
        typo.start()
        recorded, errors = run_curators(base, names[1:])
        typo.join()
        assert errors == [] and sorted(recorded) == items  # the other nineteen did all the work
        assert answers[:3] == [401, 401, 401] and set(answers[3:]) == {429}  # growing delays, not guesses
        refused = attempt_login(base, names[0], PASSWORD)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "try again in" in refused.text


def test_guesses_at_one_account_from_many_addresses_are_refused(app_env):
    db_url, store = app_env
    config = ReviewConfig(db_url=db_url, object_store=store, trusted_proxies="127.0.0.1",
                          throttle=ThrottleConfig(base_delay=60))
    with running_app(config) as base:
        codes = [attempt_login(base, "ann", f"guess {i}", forwarded=f"203.0.113.{i % 10}").status_code for i in range(50)]
        assert codes.count(401) == 3 and codes.count(429) == 47  # only 3 guesses were ever checked
        assert attempt_login(base, "bob", PASSWORD, forwarded="203.0.113.1").status_code == 303


def test_a_flooding_address_is_refused_and_others_are_not(app_env):
    db_url, store = app_env
    throttle = ThrottleConfig(address_failures=8)
    with running_app(ReviewConfig(db_url=db_url, object_store=store, throttle=throttle,
                                  trusted_proxies="127.0.0.1/32")) as base:
        codes = [attempt_login(base, f"nobody{i}", "x" * 9, forwarded="198.51.100.7").status_code for i in range(10)]
        assert codes[:8] == [401] * 8 and codes[8:] == [429, 429]
        assert attempt_login(base, "ann", PASSWORD, forwarded="198.51.100.7").status_code == 429
        assert attempt_login(base, "ann", PASSWORD, forwarded="198.51.100.8").status_code == 303


def test_forwarded_addresses_are_ignored_unless_the_proxy_is_trusted(app_env):
    db_url, store = app_env
    throttle = ThrottleConfig(address_failures=3)
    with running_app(ReviewConfig(db_url=db_url, object_store=store, throttle=throttle)) as base:
        for i in range(3):  # a client cannot dodge the limit by writing the header itself
            attempt_login(base, f"nobody{i}", "x" * 9, forwarded=f"192.0.2.{i}")
        assert attempt_login(base, "ann", PASSWORD, forwarded="192.0.2.200").status_code == 429


def test_client_address_reads_forwarded_for_from_the_right():
    proxies = parse_networks("10.0.0.0/8, 127.0.0.1")
    assert client_address("127.0.0.1", "6.6.6.6, 203.0.113.5", proxies) == "203.0.113.5"
    assert client_address("127.0.0.1", "203.0.113.5, 10.1.2.3", proxies) == "203.0.113.5"  # two proxies
    assert client_address("198.51.100.1", "203.0.113.5", proxies) == "198.51.100.1"  # not from a proxy
    assert client_address("127.0.0.1", "203.0.113.5", ()) == "127.0.0.1"  # off by default
    assert client_address("127.0.0.1", "not-an-ip", proxies) == "127.0.0.1"


# --- bounds on every input --------------------------------------------------------------------

LONG_TEXT = "la " * 7000  # 21,000 characters: over the 20,000 a lyric may have
BIG_BODY = b"x" * (300 * 1024)

# (method, path, how the body is sent, body, expected status); "{csrf}" in a form is the session's token
HOSTILE_INPUTS = [
    ("POST", "/api/submit", "raw", b"{not json", 422),
    ("POST", "/api/submit", "json", [1, 2, 3], 422),
    ("POST", "/api/submit", "json", {"token": 12, "decision": "accept"}, 422),
    ("POST", "/api/submit", "json", {"token": "t", "decision": "accept", "surprise": 1}, 422),
    ("POST", "/api/submit", "json", {"token": "t" * 65, "decision": "accept"}, 422),
    ("POST", "/api/submit", "json", {"token": "t", "decision": "edit", "text": LONG_TEXT}, 422),
    ("POST", "/api/submit", "json", {"token": "t", "decision": "accept", "comment": "c" * 2001}, 422),
    ("POST", "/api/submit", "raw", BIG_BODY, 413),
    ("POST", "/api/submit", "chunked", BIG_BODY, 413),
    ("POST", "/api/skip", "json", {"token": None}, 422),
    ("POST", "/api/heartbeat", "json", {"tokens": ["t"] * 21}, 422),
    ("POST", "/api/heartbeat", "json", {"tokens": "t"}, 422),
    ("POST", "/api/reclaim", "json", {"item": int(HUGE)}, 422),
    ("POST", "/api/reclaim", "json", {"item": -1}, 422),
    ("POST", "/api/reclaim", "json", {"item": "one"}, 422),
    ("POST", "/api/revise", "json", {"item": int(HUGE), "decision": "accept"}, 422),
    ("POST", "/api/revise", "json", {"item": 1, "decision": "edit", "text": LONG_TEXT}, 422),
    ("POST", "/api/release", "raw", b"[[[", 422),
    ("POST", "/api/release", "json", {"tokens": ["t"] * 21}, 422),
    ("POST", "/api/release", "form", {"csrf": "{csrf}", "token": ["t"] * 21}, 422),
    ("POST", "/api/claim", "raw", BIG_BODY, 413),
    ("POST", "/api/undo", "raw", BIG_BODY, 413),
    ("POST", "/api/resume", "raw", BIG_BODY, 413),
    ("GET", f"/image/{HUGE}", None, None, 422),
    ("GET", "/image/-5", None, None, 422),
    ("GET", f"/admin/audit?offset={HUGE}", None, None, 422),
    ("GET", "/admin/audit?item=abc", None, None, 422),
    ("GET", f"/admin/audit?item={HUGE}", None, None, 422),
    ("GET", "/admin/audit?actor=" + "a" * 101, None, None, 422),
    ("GET", "/admin/find?q=" + "q" * 201, None, None, 422),
    ("GET", "/admin/export.exe", None, None, 404),
    ("GET", "/static/" + "s" * 41, None, None, 422),
    ("POST", "/admin/overlap", "form", {"csrf": "{csrf}", "overlap": HUGE}, 422),
    ("POST", "/admin/overlap", "form", {"csrf": "{csrf}", "overlap": "0"}, 422),
    ("POST", "/admin/overlap", "form", {"csrf": "{csrf}", "overlap": "many"}, 422),
    ("POST", f"/admin/settle/{HUGE}", "form", {"csrf": "{csrf}", "decision": "accept"}, 422),
    ("POST", "/admin/settle/1", "form", {"csrf": "{csrf}", "decision": "edit", "text": LONG_TEXT}, 422),
    ("POST", f"/admin/reopen/{HUGE}", "form", {"csrf": "{csrf}"}, 422),
    ("POST", "/admin/reopen/1", "form", {"csrf": "{csrf}", "comment": "c" * 2001}, 422),
    ("POST", "/admin/curators", "form", {"csrf": "{csrf}", "name": "n" * 101, "password": "p" * 10}, 422),
    ("POST", "/admin/curators", "form", {"csrf": "{csrf}", "name": "eve", "password": "p" * 2000}, 422),
    ("POST", "/admin/rebuild", "raw", BIG_BODY, 413),
    ("POST", "/account/password", "form", {"csrf": "{csrf}", "current": "x", "new": "p" * 2000}, 422),
    ("POST", "/account/logout-everywhere", "raw", BIG_BODY, 413),
    ("POST", "/logout", "raw", BIG_BODY, 413),
    ("POST", "/login", "form", {"csrf": "{csrf}", "name": "n" * 101, "password": "x"}, 422),
    ("POST", "/login", "form", {"csrf": "{csrf}", "name": "ann", "password": "p" * 2000}, 422),
]


def test_every_route_is_in_the_table_of_hostile_inputs():
    from starlette.routing import Match

    app = create_app(ReviewConfig(db_url="sqlite://"))
    routes = [route for route in app.routes if getattr(route, "methods", None)]
    covered = set()
    for method, path, *_ in HOSTILE_INPUTS:
        scope = {"type": "http", "method": method, "path": path.split("?")[0]}
        covered |= {(method, route.path) for route in routes if route.matches(scope)[0] == Match.FULL}
    every = {(method, route.path) for route in routes for method in route.methods if method != "HEAD"}
    without_input = {("GET", "/"), ("GET", "/login"), ("GET", "/admin"), ("GET", "/account")}  # pages, no parameters
    assert every - covered - without_input == set(), "routes without hostile inputs in the table"


def test_hostile_inputs_get_a_clear_4xx_never_a_500(app_env):
    db_url, store = app_env
    [item] = make_items(db_url, 1, object_store=store)
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        boss = login(base, "boss")
        token = boss.headers["X-CSRF-Token"]
        failures = []
        for method, path, kind, body, expected in HOSTILE_INPUTS:
            kwargs = {}
            if kind == "json":
                kwargs["json"] = body
            elif kind == "raw":
                kwargs["data"] = body
                kwargs["headers"] = {"Content-Type": "application/json"}
            elif kind == "chunked":
                kwargs["data"] = iter([body[i:i + 65536] for i in range(0, len(body), 65536)])
                kwargs["headers"] = {"Content-Type": "application/json"}
            elif kind == "form":
                kwargs["data"] = {k: (token if v == "{csrf}" else v) for k, v in body.items()}
            session = boss if path != "/login" else client()
            if path == "/login":
                kwargs["data"]["csrf"] = csrf_of(session.get(f"{base}/login").text)
            response = session.request(method, base + path, allow_redirects=False, **kwargs)
            message = response.text[:300]
            if response.status_code != expected or (expected in (413, 422) and not message.strip()):
                failures.append(f"{method} {path[:60]} ({kind}): {response.status_code} {message!r}")
        assert failures == []
        assert boss.get(f"{base}/admin").status_code == 200  # still answering, nothing was half done
        assert rq.progress(db_url)["decided"] == 0
        assert rq.find_items(db_url, str(item))[0]["state"] == "pending"


def test_the_admin_overlap_that_once_grew_the_server_is_refused_at_once(app_env):
    db_url, store = app_env
    make_items(db_url, 2, object_store=store)
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        boss = login(base, "boss")
        response = boss.post(f"{base}/admin/overlap", data={"overlap": HUGE, "csrf": boss.headers["X-CSRF-Token"]},
                             timeout=30)
        assert response.status_code == 422 and "overlap must be from 1 to 10" in response.text
        assert MAX_ID == 2 ** 31 - 1


# --- admin: find, reopen, before/after ----------------------------------------------------------

def test_admin_finds_reopens_and_reads_a_before_after_audit(app_env):
    db_url, store = app_env
    items = make_items(db_url, 3, object_store=store, lyric=lambda i: f"first words {i}")
    with running_app(ReviewConfig(db_url=db_url, object_store=store)) as base:
        ann, boss = login(base, "ann"), login(base, "boss")
        lease = ann.post(f"{base}/api/claim").json()["item"]
        ann.post(f"{base}/api/submit", json={"token": lease["token"], "decision": "edit", "text": "better words",
                                             "comment": "the provider had the live version"})
        found = boss.get(f"{base}/admin/find", params={"q": lease["title"]}).text
        assert f'action="/admin/reopen/{lease["item"]}"' in found
        assert boss.get(f"{base}/admin/find", params={"q": "Artist"}).text.count("/admin/reopen/") == 1
        reopened = boss.post(f"{base}/admin/reopen/{lease['item']}", data={"comment": "check the chorus",
                                                                           "csrf": boss.headers["X-CSRF-Token"]})
        assert f"Item {lease['item']} is back in the queue" in reopened.text
        audit = boss.get(f"{base}/admin/audit", params={"item": lease["item"]}).text
        assert re.search(r"<th>decision</th><td class=\"before\" dir=\"auto\"><bdi>edit</bdi></td>"
                         r"<td class=\"arrow\">→</td><td class=\"after\" dir=\"auto\"><bdi>—</bdi></td>", audit)
        assert "the provider had the live version" in audit and "token" not in re.sub(r"csrf-token", "", audit)
        export_ann = ann.get(f"{base}/admin/export.csv")
        assert export_ann.status_code == 403
    assert sorted(items)


def test_audit_changes_show_only_what_changed_and_cut_long_texts():
    changes = audit_changes({"state": "leased", "text": "x" * 2000, "token": "a"},
                            {"state": "decided", "text": "x" * 2000, "token": "b", "comment": "ok"})
    assert [c["field"] for c in changes] == ["state", "comment"]
    long = audit_changes(None, {"text": "y" * 1000})[0]
    assert long["before"] == "—" and long["after"].endswith("(400 more characters)")


def test_login_delays_grow_per_account_and_reset_on_success():
    from curation.review.security import LoginThrottle

    throttle = LoginThrottle(ThrottleConfig(free_failures=3, base_delay=1, max_delay=8, forget_after=3600))
    waits = []
    now = 1000.0
    for _ in range(8):  # each attempt as soon as it is allowed
        wait, _why = throttle.wait_seconds("Ann", "10.0.0.1", now)
        now += wait
        waits.append(round(wait, 3))
        throttle.failed("ann", "10.0.0.1", now)
    assert waits == [0, 0, 0, 1, 2, 4, 8, 8]  # 3 free, then doubling, capped
    assert throttle.wait_seconds("ann", "10.9.9.9", now)[1] == "account"  # any address: it is the account
    assert throttle.wait_seconds("bob", "10.0.0.1", now) == (0.0, "")  # the address is not locked
    throttle.succeeded("ANN")
    assert throttle.wait_seconds("ann", "10.0.0.1", now) == (0.0, "")
    throttle.failed("carol", "10.0.0.2", now)
    assert throttle.wait_seconds("carol", "10.0.0.2", now + 3601) == (0.0, "")  # forgotten after an hour
