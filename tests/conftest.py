"""Shared fixtures: catalogs on SQLite and (when it answers) PostgreSQL, and a loopback HTTP server."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as error:  # any driver or network failure means: not here
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"


@pytest.fixture(scope="session")
def postgres_server():
    why_not = _postgres_available()
    if why_not:
        pytest.skip(f"PostgreSQL does not answer at 127.0.0.1:5432 ({why_not}); the PostgreSQL variant is skipped")
    return POSTGRES_ADMIN_URL


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """An empty, migrated catalog on each database."""
    from curation.catalog import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        upgrade(url)
        yield url
        return
    from sqlalchemy import create_engine, text

    admin = create_engine(request.getfixturevalue("postgres_server"), isolation_level="AUTOCOMMIT")
    name = f"image2song_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    yield url
    from curation.catalog.db import engine_for

    engine_for(url).dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class Routes:
    """Handlers by path for the loopback server: ``routes["/x"] = fn(handler)``."""

    def __init__(self):
        self.handlers = {}
        self.hits: dict[str, int] = {}

    def __setitem__(self, path, handler):
        self.handlers[path] = handler


@pytest.fixture
def http_server():
    """A real HTTP server on loopback whose routes a test sets; yields (base_url, routes)."""
    routes = Routes()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            path = self.path.split("?", 1)[0]
            routes.hits[path] = routes.hits.get(path, 0) + 1
            handler = routes.handlers.get(path)
            if handler is None:
                self.reply(404, b"not found", "text/plain")
            else:
                handler(self)

        def reply(self, status, body=b"", content_type="text/html; charset=utf-8", headers=None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    routes["/robots.txt"] = lambda h: h.reply(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()
