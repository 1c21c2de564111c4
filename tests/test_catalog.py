"""The catalog: migrations create the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from curation.catalog import Base, Song, current_revision, engine_for, session_scope, upgrade
from curation.catalog.db import table_names

TABLES = {"sources", "crawl_urls", "posts", "images", "songs", "lyric_candidates", "review_items",
          "review_events", "snapshots", "run_alerts"}


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from curation.catalog.db import _alembic_config

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def test_upgrade_creates_every_table(db_url):
    assert TABLES <= set(table_names(db_url))
    assert current_revision(db_url) == head_revision()


def test_migrations_match_the_models(db_url):
    with engine_for(db_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_upgrade_is_idempotent_and_keeps_rows(db_url):
    with session_scope(db_url) as session:
        session.add(Song(norm_key="a|b", title="A", artist="B"))
    upgrade(db_url)
    with session_scope(db_url) as session:
        assert session.scalar(select(Song.title)) == "A"


def test_unique_song_key_is_enforced(db_url):
    import pytest
    from sqlalchemy.exc import IntegrityError

    with session_scope(db_url) as session:
        session.add(Song(norm_key="x|y", title="X", artist="Y"))
    with pytest.raises(IntegrityError):
        with session_scope(db_url) as session:
            session.add(Song(norm_key="x|y", title="X again", artist="Y"))


def test_sqlite_catalog_uses_wal(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    upgrade(url)
    with engine_for(url).connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
