"""Short transactions for the review app's tables: reads, and writes that queue on SQLite.

SQLite lets one writer in at a time, and a transaction that reads first and writes later can be
refused outright ("database is locked") when another writer got in between. So every write here
starts with ``BEGIN IMMEDIATE`` (it takes the write lock up front, waiting its turn), and the
writers of one process queue on a Python lock first rather than in SQLite's sleeping busy handler.
PostgreSQL gets plain transactions (claims lock rows with SKIP LOCKED).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy.orm import Session

from curation.catalog import engine_for

_sqlite_writers: dict[str, threading.Lock] = {}
_sqlite_writers_guard = threading.Lock()


@contextmanager
def reading(db_url: str) -> Iterator[Session]:
    session = Session(engine_for(db_url), expire_on_commit=False)
    try:
        with session.begin():
            yield session
    finally:
        session.close()


@contextmanager
def writing(db_url: str) -> Iterator[Session]:
    """A short write transaction: ``BEGIN IMMEDIATE`` on SQLite (writers queue on a Python lock first),
    a plain transaction on PostgreSQL."""
    engine = engine_for(db_url)
    if engine.dialect.name != "sqlite":
        session = Session(engine, expire_on_commit=False)
        try:
            with session.begin():
                yield session
        finally:
            session.close()
        return
    with _sqlite_writers_guard:
        lock = _sqlite_writers.setdefault(db_url, threading.Lock())
    with lock, engine.connect() as connection:
        connection.info["immediate"] = True
        try:
            session = Session(bind=connection, expire_on_commit=False)
            try:
                with session.begin():
                    yield session
            finally:
                session.close()
        finally:
            connection.info.pop("immediate", None)
