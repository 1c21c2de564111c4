"""Settings: read once from the environment by the shells, then passed down as plain arguments.

Every setting has a default that works on a fresh machine (the embedded default: SQLite catalog,
local object store, demo world on loopback). Override with environment variables:

IMAGE2SONG_HOME           state folder (catalog, objects, snapshots, models, Airflow metadata); default ./state
IMAGE2SONG_DB_URL         catalog database URL; default SQLite file in the state folder
IMAGE2SONG_OBJECT_STORE   fsspec URL or folder for image bytes; default <home>/objects
IMAGE2SONG_SITE_URL       the sharing site to crawl; default the demo site
IMAGE2SONG_LYRICS_URL     the LRCLIB-compatible lyric API; default the demo API
IMAGE2SONG_USER_AGENT     the crawler's User-Agent (say who you are and how to reach you)
IMAGE2SONG_WORD_VECTORS   "glove-6b-50d" (packaged) or a path to word2vec vectors
IMAGE2SONG_REFRESH_SCHEDULE  the refresh DAG's schedule (cron or preset); "none" for manual runs only
IMAGE2SONG_SEED           the seed of split membership and training; default 0
IMAGE2SONG_REVIEW_TRUSTED_PROXIES  reverse proxies (addresses or networks, comma-separated) whose
                          X-Forwarded-For the review app believes; default none
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_SITE_PORT = 8765
DEMO_LYRICS_PORT = 8766


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    object_store: str
    site_url: str
    lyrics_url: str
    user_agent: str
    word_vectors: str
    refresh_schedule: str = "@daily"
    seed: int = 0
    review_trusted_proxies: str = ""

    @property
    def snapshots(self) -> Path:
        return self.home / "snapshots"

    @property
    def runs(self) -> Path:
        """Training runs: tags, models and evaluation reports, one folder per run."""
        return self.home / "runs"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def demo_corpus(self) -> Path:
        return self.home / "demo-corpus"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        # In a source checkout the state folder sits beside airflow.cfg, wherever the command runs.
        default_home = PROJECT_ROOT / "state" if (PROJECT_ROOT / "airflow.cfg").exists() else Path("state")
        home = Path(env.get("IMAGE2SONG_HOME", default_home)).expanduser().resolve()
        return cls(
            home=home,
            db_url=env.get("IMAGE2SONG_DB_URL", f"sqlite:///{home / 'catalog.sqlite'}"),
            object_store=env.get("IMAGE2SONG_OBJECT_STORE", str(home / "objects")),
            site_url=env.get("IMAGE2SONG_SITE_URL", f"http://127.0.0.1:{DEMO_SITE_PORT}"),
            lyrics_url=env.get("IMAGE2SONG_LYRICS_URL", f"http://127.0.0.1:{DEMO_LYRICS_PORT}"),
            user_agent=env.get(
                "IMAGE2SONG_USER_AGENT",
                "image2song/0.1 (dataset research crawler; contact: set IMAGE2SONG_USER_AGENT)",
            ),
            word_vectors=env.get("IMAGE2SONG_WORD_VECTORS", "glove-6b-50d"),
            refresh_schedule=env.get("IMAGE2SONG_REFRESH_SCHEDULE", "@daily"),
            seed=int(env.get("IMAGE2SONG_SEED", "0")),
            review_trusted_proxies=env.get("IMAGE2SONG_REVIEW_TRUSTED_PROXIES", ""),
        )

    def to_env(self) -> dict[str, str]:
        """The same settings as environment variables, for child processes (Airflow tasks)."""
        names = {
            "home": "IMAGE2SONG_HOME", "db_url": "IMAGE2SONG_DB_URL",
            "object_store": "IMAGE2SONG_OBJECT_STORE", "site_url": "IMAGE2SONG_SITE_URL",
            "lyrics_url": "IMAGE2SONG_LYRICS_URL", "user_agent": "IMAGE2SONG_USER_AGENT",
            "word_vectors": "IMAGE2SONG_WORD_VECTORS", "refresh_schedule": "IMAGE2SONG_REFRESH_SCHEDULE",
            "seed": "IMAGE2SONG_SEED", "review_trusted_proxies": "IMAGE2SONG_REVIEW_TRUSTED_PROXIES",
        }
        return {names[f.name]: str(getattr(self, f.name)) for f in fields(self)}
