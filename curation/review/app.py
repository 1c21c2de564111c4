"""The review web app (FastAPI): curators work the queue one item at a time, admins watch it.

Safety: anonymous requests get the login page (pages) or 401 (API, images) and nothing else; every
POST carries the session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) and a
same-origin ``Origin`` when the browser sends one. Sessions live in the catalog (``sessions``): the
signed cookie only names one, so logout, a password change, a disabled account and "log out
everywhere" end them at once. Failed logins slow the targeted account down with growing delays and
an address that floods is refused (``security.LoginThrottle``). Every input is bounded: bodies
(413), JSON shapes, sizes and integer ranges (422 with a message). Templates autoescape, user text
is isolated for bidirectional display, and the page script only sets ``textContent``, under a
Content-Security-Policy without inline script.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from curation.review import queue as rq
from curation.review import sessions, users
from curation.review.security import (
    BodyLimit, LoginThrottle, SecurityHeaders, ThrottleConfig, client_address, parse_networks, retry_after,
)

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PUBLIC_PATHS = {"/login", "/static/app.css"}
STATIC = {"app.css": "text/css; charset=utf-8", "queue.js": "text/javascript; charset=utf-8"}
DECISION_LABELS = {
    "accept": ("Accept", "a"), "edit": ("Edit lyric", "e"), "reject-non-english": ("Not English", "n"),
    "reject-not-found": ("Not found", "f"), "reject-instrumental": ("Instrumental", "i"),
    "reject-other": ("Other problem", "o"),
}
MAX_ID = 2 ** 31 - 1  # ids are 32-bit integers in the catalog
MAX_TOKENS = 20  # leases one request may name (a page holds two)
ItemId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


@dataclass
class ReviewConfig:
    db_url: str
    object_store: str | None = None
    secret_key: str | None = None  # None: a random key, sessions end when the server stops
    lease_seconds: int = rq.LEASE_SECONDS
    idle_seconds: int = 2 * 3600
    session_seconds: int = 12 * 3600
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    trusted_proxies: str | tuple = ()  # proxies whose X-Forwarded-For is believed (none by default)
    max_body_bytes: int = 256 * 1024  # a 20,000-character lyric as escaped JSON fits
    secure_cookies: bool = False  # set behind an HTTPS reverse proxy
    on_rebuild: Callable[[], str] | None = None  # e.g. triggers Airflow's refresh DAG, returns a run id
    rebuild_every: int | None = None  # trigger on_rebuild after this many new decisions
    user_cache_seconds: float = 5.0  # sessions and accounts checked at most this often (other processes)
    extra: dict = field(default_factory=dict)


class NotLoggedIn(Exception):
    pass


class Forbidden(Exception):
    pass


class BadInput(Exception):
    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


# --- JSON bodies: exact shapes with bounds (extra keys, wrong types, sizes → 422) -----------------

class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Token = Annotated[str, Field(max_length=64)]
Decision = Annotated[str, Field(max_length=40)]
Text = Annotated[str | None, Field(max_length=rq.MAX_TEXT)]
Comment = Annotated[str | None, Field(max_length=rq.MAX_COMMENT)]


class SubmitBody(Body):
    token: Token
    decision: Decision
    text: Text = None
    comment: Comment = None
    next: bool = False


class TokenBody(Body):
    token: Token
    next: bool = False


class TokensBody(Body):
    tokens: Annotated[list[Token], Field(max_length=MAX_TOKENS)] = []


class ItemBody(Body):
    item: Annotated[int, Field(ge=1, le=MAX_ID)]


class ReviseBody(Body):
    item: Annotated[int, Field(ge=1, le=MAX_ID)]
    decision: Decision
    text: Text = None
    comment: Comment = None


def form_text(form, name: str, max_length: int, *, required: bool = False) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise BadInput(f"{name} must be text, not a file")
    if len(value) > max_length:
        raise BadInput(f"{name} has at most {max_length:,} characters")
    if required and not value.strip():
        raise BadInput(f"{name} is required")
    return value


def form_int(form, name: str, low: int, high: int) -> int:
    raw = form_text(form, name, 20)
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f"{name} must be a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise BadInput(f"{name} must be from {low} to {high}")
    return value


def create_app(config: ReviewConfig) -> FastAPI:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.globals["decisions"] = DECISION_LABELS
    throttle = LoginThrottle(config.throttle)
    trusted = parse_networks(config.trusted_proxies)
    user_cache: dict[str, tuple[float, dict | None]] = {}
    live_sessions: dict[str, tuple[float, str]] = {}  # session id -> (checked until, curator)
    rebuild = {"count": 0, "lock": threading.Lock(), "last": None}
    hashing = threading.BoundedSemaphore(4)  # argon2 takes 64 MiB a check: a login burst waits its turn
    store = None
    if config.object_store:
        from curation.object_store import ObjectStore

        store = ObjectStore(config.object_store)

    def account(name: str) -> dict | None:
        """The account behind a session, cached a few seconds (a disabled account is out within them)."""
        hit = user_cache.get(name)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        found = users.get_curator(config.db_url, name)
        user_cache[name] = (time.monotonic() + config.user_cache_seconds, found)
        return found

    def forget(name: str) -> None:
        """This process drops what it cached about ``name``'s account and sessions."""
        user_cache.pop(name, None)
        for sid, (_, owner) in list(live_sessions.items()):
            if owner == name:
                live_sessions.pop(sid, None)

    def session_user(request: Request) -> dict | None:
        sid = request.session.get("sid")
        if not sid or not isinstance(sid, str):
            return None
        hit = live_sessions.get(sid)
        if hit and hit[0] > time.monotonic():
            name = hit[1]
        else:
            found = sessions.check(config.db_url, sid, config.idle_seconds)
            if found is None:
                live_sessions.pop(sid, None)
                return None
            name, seconds_left = found
            live_sessions[sid] = (time.monotonic() + min(config.user_cache_seconds, seconds_left), name)
        found = account(name)
        if not found or not found["active"]:
            return None
        return found

    def csrf_token(request: Request) -> str:
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(32)
        return request.session["csrf"]

    async def guard(request: Request) -> None:
        """Every route: anonymous gets the login page only; every POST needs the CSRF token."""
        path = request.url.path
        if request.method == "POST":
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
                raise Forbidden("cross-origin request")
            expected = request.session.get("csrf")
            sent = request.headers.get("x-csrf-token")
            if sent is None and request.headers.get("content-type", "").startswith(
                    ("application/x-www-form-urlencoded", "multipart/form-data")):
                sent = (await request.form(max_files=0, max_fields=100)).get("csrf")
            if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent, expected):
                raise Forbidden("missing or wrong CSRF token; reload the page")
        if path in PUBLIC_PATHS:
            return
        user = await run_in_threadpool(session_user, request)
        if user is None:
            request.session.clear()
            raise NotLoggedIn()
        request.state.user = user
        if path.startswith("/admin") and user["role"] != "admin":
            raise Forbidden("admins only")

    app = FastAPI(title="image2song review", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(guard)])

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/image/")) or request.method == "POST" and \
            "application/json" in request.headers.get("content-type", "")

    def anonymous(request: Request) -> Response:
        if wants_json(request):
            return JSONResponse({"error": "log in first", "login": "/login"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, _error):
        return anonymous(request)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, error):
        if wants_json(request):
            return JSONResponse({"error": str(error)}, status_code=403)
        return PlainTextResponse(f"Forbidden: {error}", status_code=403)

    def bad(request: Request, message: str, status: int) -> Response:
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=status)
        return PlainTextResponse(f"Bad request: {message}", status_code=status)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, error: BadInput):
        return bad(request, str(error), error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        """Malformed JSON, a wrong shape, too long a text or an integer out of range: 422 and what to fix
        (anonymous callers learn nothing but that they must log in)."""
        if getattr(request.state, "user", None) is None and request.url.path not in PUBLIC_PATHS:
            if await run_in_threadpool(session_user, request) is None:
                return anonymous(request)
        problems = []
        for problem in error.errors()[:5]:
            if problem.get("type") == "json_invalid":
                problems.append("the body is not valid JSON")
                continue
            where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path"))
            problems.append(f"{where or 'body'}: {problem.get('msg', 'invalid')}"[:200])
        return bad(request, "; ".join(problems) or "invalid request", 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error):
        if await run_in_threadpool(session_user, request) is None:  # unknown paths tell anonymous callers nothing
            return anonymous(request)
        return PlainTextResponse(str(error.detail), status_code=error.status_code)

    def page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        user = getattr(request.state, "user", None)
        flash = request.session.pop("flash", None)
        html = env.get_template(template).render(user=user, csrf=csrf_token(request), flash=flash, **context)
        return HTMLResponse(html, status_code=status)

    # --- login, sessions, account ---------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        if session_user(request):
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html")

    @app.post("/login")
    async def login(request: Request):
        form = await request.form(max_files=0, max_fields=100)
        name = form_text(form, "name", 100)
        password = form_text(form, "password", users.MAX_PASSWORD)
        address = client_address(request.client.host if request.client else None,
                                 request.headers.get("x-forwarded-for"), trusted)
        wait, why = throttle.wait_seconds(name, address)
        if wait > 0:
            message = (f"Too many failed attempts for this account; try again in {retry_after(wait)} s."
                       if why == "account" else "Too many failed logins from your address; wait a few minutes.")
            response = page(request, "login.html", status=429, error=message, name=name)
            response.headers["retry-after"] = retry_after(wait)
            return response

        def check():
            with hashing:
                return users.authenticate(config.db_url, name, password)

        user = await run_in_threadpool(check)
        if user is None:
            throttle.failed(name, address)
            return page(request, "login.html", status=401, error="Wrong name or password.", name=name)
        throttle.succeeded(name)
        sid = await run_in_threadpool(sessions.start, config.db_url, user["name"], config.session_seconds)
        request.session.clear()  # a fresh session (and CSRF token) at login
        request.session.update(sid=sid, csrf=secrets.token_urlsafe(32))
        user_cache.pop(user["name"], None)
        return RedirectResponse("/", status_code=303)

    def end_this_session(request: Request) -> None:
        sid = request.session.get("sid")
        if sid:
            sessions.end(config.db_url, sid)
            live_sessions.pop(sid, None)
        request.session.clear()

    @app.post("/logout")
    def logout(request: Request):
        name = request.state.user["name"]
        end_this_session(request)
        rq.release_all(config.db_url, name)  # her claims go back now; they return to her first next time
        return RedirectResponse("/login", status_code=303)

    @app.get("/account", response_class=HTMLResponse)
    def account_page(request: Request):
        return page(request, "account.html", sessions=sessions.count(config.db_url, request.state.user["name"]))

    @app.post("/account/logout-everywhere")
    def logout_everywhere(request: Request):
        name = request.state.user["name"]
        sessions.end_all(config.db_url, name)
        forget(name)
        request.session.clear()
        rq.release_all(config.db_url, name)
        return RedirectResponse("/login", status_code=303)

    @app.post("/account/password")
    async def change_password(request: Request):
        form = await request.form(max_files=0, max_fields=100)
        name = request.state.user["name"]
        current = form_text(form, "current", users.MAX_PASSWORD)
        new = form_text(form, "new", users.MAX_PASSWORD)
        try:
            await run_in_threadpool(users.change_password, config.db_url, name, current, new)
        except ValueError as error:
            request.session["flash"] = f"Password unchanged: {error}"
            return RedirectResponse("/account", status_code=303)
        forget(name)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)  # every session ended, this one too

    @app.get("/static/{name}")
    def static(name: Annotated[str, PathParam(max_length=40)]):
        if name not in STATIC:
            raise StarletteHTTPException(404)
        return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                        headers={"cache-control": "private, max-age=300"})

    # --- the curator's page and its API ---------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def queue_page(request: Request):
        return page(request, "queue.html", lease_seconds=config.lease_seconds)

    def leased_view(lease: dict | None) -> dict | None:
        if lease is None:
            return None
        view = rq.item_view(config.db_url, lease["item"])
        view["images"] = [f"/image/{image}" for image in view["images"]]
        return {**view, "token": lease["token"], "expires_at": lease["expires_at"],
                "lease_seconds": config.lease_seconds}

    def claim_next(user: dict) -> dict | None:
        return leased_view(rq.claim(config.db_url, user["name"], lease_seconds=config.lease_seconds))

    def status(name: str) -> dict:
        return {"remaining": rq.remaining(config.db_url), "recent": rq.recent_decisions(config.db_url, name)}

    @app.post("/api/claim")
    def api_claim(request: Request):
        return {"item": claim_next(request.state.user)}

    @app.post("/api/resume")
    def api_resume(request: Request):
        """A page opening: the curator's live claims (at most two) come back to it, with her status."""
        name = request.state.user["name"]
        leases = rq.my_leases(config.db_url, name)
        for extra in leases[2:]:
            rq.release(config.db_url, extra["token"], name)
        return {"items": [leased_view(lease) for lease in leases[:2]], **status(name)}

    @app.post("/api/heartbeat")
    def api_heartbeat(request: Request, body: TokensBody):
        """The open page renews its leases; answers each lease's new expiry (null: lost) and the status."""
        name = request.state.user["name"]
        leases = rq.renew(config.db_url, body.tokens, name, lease_seconds=config.lease_seconds)
        return {"leases": leases, **status(name)}

    @app.post("/api/reclaim")
    def api_reclaim(request: Request, body: ItemBody):
        """Claim one item again after its lease was lost (when it is still free)."""
        lease = rq.claim(config.db_url, request.state.user["name"], lease_seconds=config.lease_seconds,
                         item_id=body.item)
        return {"item": leased_view(lease)}

    def after_decision() -> None:
        if not (config.on_rebuild and config.rebuild_every):
            return
        with rebuild["lock"]:
            rebuild["count"] += 1
            if rebuild["count"] < config.rebuild_every:
                return
            rebuild["count"] = 0
        threading.Thread(target=trigger_rebuild, args=("threshold",), daemon=True).start()

    def trigger_rebuild(why: str) -> str:
        try:
            run = config.on_rebuild()
            rebuild["last"] = {"why": why, "run": run, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
            log.info("snapshot rebuild triggered (%s): %s", why, run)
            return run
        except Exception as error:
            rebuild["last"] = {"why": why, "error": str(error)[:300], "at": time.strftime("%Y-%m-%d %H:%M:%S")}
            log.warning("snapshot rebuild (%s) failed: %s", why, error)
            raise

    @app.post("/api/submit")
    def api_submit(request: Request, body: SubmitBody):
        user = request.state.user
        try:
            result = rq.submit(config.db_url, body.token, body.decision, body.text, curator=user["name"],
                               comment=body.comment)
        except rq.LeaseLost as error:
            return JSONResponse({"error": str(error), "lost": True}, status_code=409)
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=422)
        if not result["replayed"]:
            after_decision()
        return {"result": result, "next": claim_next(user) if body.next else None}

    @app.post("/api/skip")
    def api_skip(request: Request, body: TokenBody):
        user = request.state.user
        try:
            result = rq.skip(config.db_url, body.token, user["name"])
        except rq.LeaseLost as error:
            return JSONResponse({"error": str(error), "lost": True}, status_code=409)
        return {"result": result, "next": claim_next(user) if body.next else None}

    @app.post("/api/revise")
    def api_revise(request: Request, body: ReviseBody):
        name = request.state.user["name"]
        try:
            result = rq.revise(config.db_url, name, body.item, body.decision, body.text, body.comment)
        except rq.NotEditable as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=422)
        return {"result": result, "recent": rq.recent_decisions(config.db_url, name)}

    @app.post("/api/undo")
    def api_undo(request: Request):
        try:
            lease = rq.undo_last(config.db_url, request.state.user["name"], lease_seconds=config.lease_seconds)
        except rq.NothingToUndo as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        return {"item": leased_view(lease), "undone": {"decision": lease["decision"],
                                                       "corrected_text": lease["corrected_text"],
                                                       "comment": lease["comment"]}}

    @app.post("/api/release")
    async def api_release(request: Request):
        if "application/json" in request.headers.get("content-type", ""):
            try:
                tokens = TokensBody.model_validate_json(await request.body()).tokens
            except ValueError as error:
                raise BadInput(f"expected {{\"tokens\": [up to {MAX_TOKENS} lease tokens]}}: "
                               f"{str(error).splitlines()[0][:120]}") from None
        else:  # the page's beacon when it closes: a form with its CSRF token
            tokens = (await request.form(max_files=0, max_fields=MAX_TOKENS + 2)).getlist("token")
            if len(tokens) > MAX_TOKENS or any(not isinstance(t, str) or len(t) > 64 for t in tokens):
                raise BadInput(f"at most {MAX_TOKENS} lease tokens of 64 characters")
        name = request.state.user["name"]
        released = await run_in_threadpool(lambda: sum(rq.release(config.db_url, t, name) for t in tokens))
        return {"released": released}

    @app.get("/image/{image_id}")
    def image(image_id: ItemId):
        record = rq.image_record(config.db_url, image_id)
        if record is None or store is None:
            return JSONResponse({"error": "no such image"}, status_code=404)
        sha256, content_type = record
        if not content_type.startswith("image/") or "svg" in content_type:
            content_type = "application/octet-stream"  # never let stored bytes run as a page or script
        from curation.crawl_store import image_key

        try:
            data = store.get(image_key(sha256, record[1]))
        except FileNotFoundError:
            return JSONResponse({"error": "image bytes missing"}, status_code=404)
        return Response(data, media_type=content_type, headers={"cache-control": "private, max-age=86400, immutable"})

    # --- admin ----------------------------------------------------------------------------------

    @app.get("/admin", response_class=HTMLResponse)
    def admin(request: Request):
        return page(request, "admin.html", progress=rq.progress(config.db_url),
                    throughput=rq.throughput(config.db_url), agreement=rq.agreement(config.db_url),
                    curators=users.list_curators(config.db_url), rebuild_enabled=config.on_rebuild is not None,
                    rebuild_every=config.rebuild_every, rebuild_last=rebuild["last"])

    @app.get("/admin/find", response_class=HTMLResponse)
    def admin_find(request: Request, q: Annotated[str, Query(max_length=200)] = ""):
        rows = rq.find_items(config.db_url, q) if q.strip() else []
        return page(request, "find.html", q=q, rows=rows)

    @app.post("/admin/reopen/{item_id}")
    async def admin_reopen(request: Request, item_id: ItemId):
        form = await request.form(max_files=0, max_fields=100)
        comment = form_text(form, "comment", rq.MAX_COMMENT)
        try:
            rq.reopen(config.db_url, item_id, request.state.user["name"], comment or None)
        except (ValueError, LookupError) as error:
            return back(request, f"Not reopened: {error}", f"/admin/find?q={item_id}")
        return back(request, f"Item {item_id} is back in the queue.", f"/admin/find?q={item_id}")

    @app.get("/admin/audit", response_class=HTMLResponse)
    def audit(request: Request, offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
              item: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
              actor: Annotated[str, Query(max_length=100)] = ""):
        rows = rq.audit_log(config.db_url, limit=100, offset=offset, item_id=item, actor=actor or None)
        for row in rows:
            row["changes"] = audit_changes(row["before"], row["after"])
        return page(request, "audit.html", rows=rows, offset=offset, item=item, actor=actor)

    @app.get("/admin/export.{fmt}")
    def export(fmt: Annotated[str, PathParam(max_length=10)]):
        if fmt not in ("jsonl", "csv"):
            raise StarletteHTTPException(404)
        rows = rq.export_decisions(config.db_url)
        if fmt == "jsonl":
            body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            return Response(body, media_type="application/x-ndjson",
                            headers={"content-disposition": 'attachment; filename="review-decisions.jsonl"'})
        buffer = io.StringIO()
        fields = ["item", "song_id", "title", "artist", "decision", "verdict", "decided_by", "decided_at",
                  "corrected_text", "votes", "comments"]
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for row in rows:  # cells starting like a formula are quoted for spreadsheets
            writer.writerow({k: ("'" + v if isinstance(v, str) and v[:1] in "=+-@\t\r" else v)
                             for k, v in row.items()})
        return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'attachment; filename="review-decisions.csv"'})

    def back(request: Request, message: str, to: str = "/admin") -> RedirectResponse:
        request.session["flash"] = message
        return RedirectResponse(to, status_code=303)

    @app.post("/admin/settle/{item_id}")
    async def admin_settle(request: Request, item_id: ItemId):
        form = await request.form(max_files=0, max_fields=100)
        decision = form_text(form, "decision", 40, required=True)
        text = form_text(form, "text", rq.MAX_TEXT) or None
        comment = form_text(form, "comment", rq.MAX_COMMENT) or None
        try:
            result = rq.settle(config.db_url, item_id, decision, request.state.user["name"], text, comment)
        except (ValueError, LookupError) as error:
            return back(request, f"Not settled: {error}")
        return back(request, f"Item {result['item']} settled: {result['decision']}.")

    @app.post("/admin/overlap")
    async def admin_overlap(request: Request):
        form = await request.form(max_files=0, max_fields=100)
        overlap = form_int(form, "overlap", 1, 10)
        changed = rq.set_overlap(config.db_url, overlap, request.state.user["name"])
        return back(request, f"{changed} waiting items now want {overlap} independent decision(s).")

    @app.post("/admin/rebuild")
    def admin_rebuild(request: Request):
        if config.on_rebuild is None:
            return back(request, "No Airflow is configured for rebuilds (serve with --airflow-url).")
        try:
            run = trigger_rebuild(f"admin {request.state.user['name']}")
        except Exception as error:
            return back(request, f"Rebuild not triggered: {error}")
        return back(request, f"Snapshot rebuild triggered: Airflow run {run}.")

    @app.post("/admin/curators")
    async def admin_curators(request: Request):
        form = await request.form(max_files=0, max_fields=100)
        name = form_text(form, "name", 100, required=True)
        try:
            if form.get("action") == "disable":
                await run_in_threadpool(users.set_active, config.db_url, name, False)
                message = f"Curator {name} disabled; their sessions ended and their claims went back."
            else:
                replace = form.get("replace") == "yes"
                await run_in_threadpool(lambda: users.add_curator(
                    config.db_url, name, form_text(form, "password", users.MAX_PASSWORD),
                    form_text(form, "role", 20) or "curator", replace=replace))
                message = f"Curator {name} saved." + (" Their old sessions ended." if replace else "")
        except (ValueError, LookupError) as error:
            message = f"Not saved: {error}"
        forget(name)
        return back(request, message)

    app.add_middleware(SessionMiddleware, secret_key=config.secret_key or secrets.token_urlsafe(32),
                       session_cookie="image2song_review", max_age=config.idle_seconds, same_site="strict",
                       https_only=config.secure_cookies)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.state.config = config
    return app


AUDIT_HIDDEN = {"token"}
AUDIT_SHOWN_CHARACTERS = 600


def audit_changes(before: dict | None, after: dict | None) -> list[dict]:
    """An audit event as a readable before/after table: only the fields that changed (all of them for
    an event with no "before"), long texts cut with a note of how much is left out."""
    before, after = before or {}, after or {}

    def shown(value) -> str:
        if value is None:
            return "—"
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        if len(text) > AUDIT_SHOWN_CHARACTERS:
            return f"{text[:AUDIT_SHOWN_CHARACTERS]}… ({len(text) - AUDIT_SHOWN_CHARACTERS:,} more characters)"
        return text

    changes = []
    for key in sorted(set(before) | set(after), key=lambda k: (k not in ("state", "decision", "verdict"), k)):
        if key in AUDIT_HIDDEN or before.get(key) == after.get(key):
            continue
        changes.append({"field": key, "before": shown(before.get(key)), "after": shown(after.get(key))})
    return changes


def server_config(app, **options):
    """uvicorn settings chosen for twenty curators on a busy machine (the serve command and the tests
    use the same): connections stay open longer than a curator thinks, so the server never closes one
    that a client is about to reuse (that race is a "connection reset"); a deep accept backlog; no
    concurrency cap that would answer 503; a graceful stop."""
    import uvicorn

    defaults = dict(log_level="warning", access_log=False, proxy_headers=False, timeout_keep_alive=75,
                    backlog=2048, timeout_graceful_shutdown=5, h11_max_incomplete_event_size=64 * 1024)
    return uvicorn.Config(app, **{**defaults, **options})


def serve(config: ReviewConfig, host: str = "127.0.0.1", port: int = 8070) -> None:
    """Run the app with uvicorn (one process: the login throttle and rebuild counter live in memory)."""
    import uvicorn

    uvicorn.Server(server_config(create_app(config), host=host, port=port, log_level="info")).run()
