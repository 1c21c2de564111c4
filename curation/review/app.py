"""The review web app (FastAPI): curators work the queue one item at a time, admins watch it.

Safety: anonymous requests get the login page (pages) or 401 (API, images) and nothing else; every
POST carries the session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) and a
same-origin ``Origin`` when the browser sends one; sessions are signed cookies that expire after
``idle_seconds`` without a request and ``session_seconds`` after login; failed logins are limited
per name and per client address. Templates autoescape and the page script only sets
``textContent``, under a Content-Security-Policy without inline script.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from curation.review import queue as rq
from curation.review import users

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PUBLIC_PATHS = {"/login", "/static/app.css"}
STATIC = {"app.css": "text/css; charset=utf-8", "queue.js": "text/javascript; charset=utf-8"}
DECISION_LABELS = {
    "accept": ("Accept", "a"), "edit": ("Edit lyric", "e"), "reject-non-english": ("Not English", "n"),
    "reject-not-found": ("Not found", "f"), "reject-instrumental": ("Instrumental", "i"),
    "reject-other": ("Other problem", "o"),
}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store"),
]


@dataclass
class ReviewConfig:
    db_url: str
    object_store: str | None = None
    secret_key: str | None = None  # None: a random key, sessions end when the server stops
    lease_seconds: int = rq.LEASE_SECONDS
    idle_seconds: int = 2 * 3600
    session_seconds: int = 12 * 3600
    login_failures: int = 5  # per name and address, within login_window seconds
    login_window: int = 300
    secure_cookies: bool = False  # set behind an HTTPS reverse proxy
    on_rebuild: Callable[[], str] | None = None  # e.g. triggers Airflow's refresh DAG, returns a run id
    rebuild_every: int | None = None  # trigger on_rebuild after this many new decisions
    user_cache_seconds: float = 5.0
    extra: dict = field(default_factory=dict)


class NotLoggedIn(Exception):
    pass


class Forbidden(Exception):
    pass


class SecurityHeaders:
    """Pure ASGI middleware: the same protective headers on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in SECURITY_HEADERS if name not in names]
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class LoginLimiter:
    """Failed logins per key (name@address, and address) in a sliding window."""

    def __init__(self, failures: int, window: int):
        self.failures, self.window = failures, window
        self.seen: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque:
        stamps = self.seen[key]
        while stamps and stamps[0] < now - self.window:
            stamps.popleft()
        return stamps

    def blocked(self, keys: list[tuple[str, int]]) -> bool:
        now = time.monotonic()
        with self.lock:
            return any(len(self._recent(key, now)) >= limit for key, limit in keys)

    def fail(self, keys: list[tuple[str, int]]) -> None:
        now = time.monotonic()
        with self.lock:
            for key, _ in keys:
                self._recent(key, now).append(now)

    def forget(self, key: str) -> None:
        with self.lock:
            self.seen.pop(key, None)


def create_app(config: ReviewConfig) -> FastAPI:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.globals["decisions"] = DECISION_LABELS
    limiter = LoginLimiter(config.login_failures, config.login_window)
    user_cache: dict[str, tuple[float, dict | None]] = {}
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

    def session_user(request: Request) -> dict | None:
        session = request.session
        name, login_at = session.get("user"), session.get("login_at", 0)
        if not name or time.time() - login_at > config.session_seconds:
            return None
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
                sent = (await request.form()).get("csrf")
            if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent, expected):
                raise Forbidden("missing or wrong CSRF token; reload the page")
        if path in PUBLIC_PATHS:
            return
        user = session_user(request)
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

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, _error):
        if wants_json(request):
            return JSONResponse({"error": "log in first", "login": "/login"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, error):
        if wants_json(request):
            return JSONResponse({"error": str(error)}, status_code=403)
        return PlainTextResponse(f"Forbidden: {error}", status_code=403)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error):
        if session_user(request) is None:  # unknown paths tell anonymous callers nothing
            return RedirectResponse("/login", status_code=303) if not wants_json(request) else \
                JSONResponse({"error": "log in first"}, status_code=401)
        return PlainTextResponse(str(error.detail), status_code=error.status_code)

    def page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        user = getattr(request.state, "user", None)
        flash = request.session.pop("flash", None)
        html = env.get_template(template).render(user=user, csrf=csrf_token(request), flash=flash, **context)
        return HTMLResponse(html, status_code=status)

    # --- login ------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        if session_user(request):
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html")

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        name, password = str(form.get("name", ""))[:100], str(form.get("password", ""))
        address = request.client.host if request.client else "?"
        keys = [(f"user:{name.lower()}@{address}", config.login_failures),
                (f"addr:{address}", config.login_failures * 4)]
        if limiter.blocked(keys):
            return page(request, "login.html", status=429, error="Too many failed attempts; wait a few minutes.")
        from starlette.concurrency import run_in_threadpool

        def check():
            with hashing:
                return users.authenticate(config.db_url, name, password)

        user = await run_in_threadpool(check)
        if user is None:
            limiter.fail(keys)
            return page(request, "login.html", status=401, error="Wrong name or password.", name=name)
        limiter.forget(keys[0][0])
        request.session.clear()  # a fresh session (and CSRF token) at login
        request.session.update(user=user["name"], login_at=int(time.time()), csrf=secrets.token_urlsafe(32))
        user_cache.pop(user["name"], None)
        return RedirectResponse("/", status_code=303)

    @app.post("/logout")
    def logout(request: Request):
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/static/{name}")
    def static(name: str):
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
        return {**view, "token": lease["token"], "expires_at": lease["expires_at"]}

    def claim_next(user: dict) -> dict | None:
        return leased_view(rq.claim(config.db_url, user["name"], lease_seconds=config.lease_seconds))

    @app.post("/api/claim")
    def api_claim(request: Request):
        return {"item": claim_next(request.state.user)}

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
    async def api_submit(request: Request):
        body = await request.json()
        user = request.state.user
        token, decision = str(body.get("token", "")), str(body.get("decision", ""))
        text = body.get("text")
        text = str(text) if text is not None else None
        from starlette.concurrency import run_in_threadpool

        def work():
            try:
                result = rq.submit(config.db_url, token, decision, text, curator=user["name"])
            except rq.LeaseLost as error:
                return JSONResponse({"error": str(error), "lost": True}, status_code=409)
            except ValueError as error:
                return JSONResponse({"error": str(error)}, status_code=400)
            if not result["replayed"]:
                after_decision()
            return {"result": result, "next": claim_next(user) if body.get("next") else None}

        return await run_in_threadpool(work)

    @app.post("/api/undo")
    def api_undo(request: Request):
        try:
            lease = rq.undo_last(config.db_url, request.state.user["name"], lease_seconds=config.lease_seconds)
        except rq.NothingToUndo as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        return {"item": leased_view(lease), "undone": {"decision": lease["decision"],
                                                       "corrected_text": lease["corrected_text"]}}

    @app.post("/api/release")
    async def api_release(request: Request):
        if "application/json" in request.headers.get("content-type", ""):
            tokens = (await request.json()).get("tokens", [])
        else:
            tokens = (await request.form()).getlist("token")
        name = request.state.user["name"]
        released = sum(rq.release(config.db_url, str(t), name) for t in tokens[:20])
        return {"released": released}

    @app.get("/image/{image_id}")
    def image(image_id: int):
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

    @app.get("/admin/audit", response_class=HTMLResponse)
    def audit(request: Request, offset: int = 0, item: int | None = None, actor: str | None = None):
        offset = max(0, offset)
        rows = rq.audit_log(config.db_url, limit=100, offset=offset, item_id=item, actor=actor or None)
        for row in rows:
            row["before_json"] = json.dumps(row["before"], ensure_ascii=False, sort_keys=True)
            row["after_json"] = json.dumps(row["after"], ensure_ascii=False, sort_keys=True)
        return page(request, "audit.html", rows=rows, offset=offset, item=item, actor=actor or "")

    @app.get("/admin/export.{fmt}")
    def export(fmt: str):
        rows = rq.export_decisions(config.db_url)
        if fmt == "jsonl":
            body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            return Response(body, media_type="application/x-ndjson",
                            headers={"content-disposition": 'attachment; filename="review-decisions.jsonl"'})
        if fmt == "csv":
            buffer = io.StringIO()
            fields = ["item", "song_id", "title", "artist", "decision", "verdict", "decided_by", "decided_at",
                      "corrected_text", "votes"]
            writer = csv.DictWriter(buffer, fieldnames=fields)
            writer.writeheader()
            for row in rows:  # cells starting like a formula are quoted for spreadsheets
                writer.writerow({k: ("'" + v if isinstance(v, str) and v[:1] in "=+-@\t\r" else v)
                                 for k, v in row.items()})
            return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8",
                            headers={"content-disposition": 'attachment; filename="review-decisions.csv"'})
        raise StarletteHTTPException(404)

    def back(request: Request, message: str, to: str = "/admin") -> RedirectResponse:
        request.session["flash"] = message
        return RedirectResponse(to, status_code=303)

    @app.post("/admin/settle/{item_id}")
    async def admin_settle(request: Request, item_id: int):
        form = await request.form()
        try:
            result = rq.settle(config.db_url, item_id, str(form.get("decision", "")), request.state.user["name"],
                               str(form.get("text") or "") or None)
        except (ValueError, LookupError) as error:
            return back(request, f"Not settled: {error}")
        return back(request, f"Item {result['item']} settled: {result['decision']}.")

    @app.post("/admin/overlap")
    async def admin_overlap(request: Request):
        form = await request.form()
        try:
            overlap = int(str(form.get("overlap", "")))
            changed = rq.set_overlap(config.db_url, overlap, request.state.user["name"])
        except ValueError as error:
            return back(request, f"Overlap unchanged: {error}")
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
        form = await request.form()
        name = str(form.get("name", ""))
        try:
            if form.get("action") == "disable":
                users.set_active(config.db_url, name, False)
                message = f"Curator {name} disabled."
            else:
                users.add_curator(config.db_url, name, str(form.get("password", "")),
                                  str(form.get("role", "curator")), replace=form.get("replace") == "yes")
                message = f"Curator {name} saved."
        except (ValueError, LookupError) as error:
            message = f"Not saved: {error}"
        user_cache.pop(name, None)
        return back(request, message)

    app.add_middleware(SessionMiddleware, secret_key=config.secret_key or secrets.token_urlsafe(32),
                       session_cookie="image2song_review", max_age=config.idle_seconds, same_site="strict",
                       https_only=config.secure_cookies)
    app.add_middleware(SecurityHeaders)
    app.state.config = config
    return app


def serve(config: ReviewConfig, host: str = "127.0.0.1", port: int = 8070) -> None:
    """Run the app with uvicorn (one process: the login limiter and rebuild counter live in memory)."""
    import uvicorn

    # Curators think for seconds between requests: keep their connections open that long.
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", access_log=False, proxy_headers=False,
                timeout_keep_alive=60)
