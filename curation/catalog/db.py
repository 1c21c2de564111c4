"""Connecting to the catalog and migrating it (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_file(db_url: str) -> Path | None:
    """The file of a SQLite catalog; None when it lives in memory."""
    path = db_url.split("///", 1)[-1]
    return None if "///" not in db_url or path in ("", ":memory:") else Path(path)


def _make_catalog_folder(db_url: str) -> None:
    """Create the folder of a SQLite catalog file (a fresh state folder); one that cannot be made is a
    ValueError that names it."""
    file = _sqlite_file(db_url) if db_url.startswith("sqlite") else None
    if file is None:
        return
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the catalog's folder {file.parent}: {error.strerror or error}") from error


@lru_cache(maxsize=8)
def engine_for(db_url: str) -> Engine:
    """One engine per URL and process. SQLite gets WAL, a busy timeout and foreign keys."""
    if db_url.startswith("sqlite"):
        in_memory = _sqlite_file(db_url) is None
        _make_catalog_folder(db_url)
        # As many connections as the review app has worker threads (40), so twenty curators' requests
        # never queue for a connection (SQLite connections are cheap; writers still take turns).
        pool = {} if in_memory else {"pool_size": 20, "max_overflow": 20}
        engine = create_engine(db_url, connect_args={"timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            # Let SQLAlchemy, not the driver, open transactions, so BEGIN IMMEDIATE is ours to issue.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):  # noqa: ANN001
            connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get("immediate") else "BEGIN")

        return engine
    # A connection per busy web worker (twenty curators at once), so requests do not open new ones.
    return create_engine(db_url, pool_pre_ping=True, pool_size=24, max_overflow=16)


@contextmanager
def session_scope(db_url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    session = sessionmaker(engine_for(db_url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(db_url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    return config


def upgrade(db_url: str, revision: str = "head") -> str:
    """Create or upgrade the catalog to ``revision``; returns the revision it is at."""
    from alembic import command

    _make_catalog_folder(db_url)  # the migrations connect on their own, not through engine_for
    command.upgrade(_alembic_config(db_url), revision)
    return current_revision(db_url)


def current_revision(db_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine_for(db_url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def table_names(db_url: str) -> list[str]:
    return sorted(inspect(engine_for(db_url)).get_table_names())
