"""Settings: read once from the environment by the shells, then passed down as plain arguments.

Every setting has a default that works on a fresh machine (the embedded default: SQLite catalog,
local object store, demo world on loopback). Override with environment variables:

IMAGE2SONG_HOME           state folder (catalog, objects, snapshots, models, Airflow metadata); default ./state
IMAGE2SONG_DB_URL         catalog database URL; default SQLite file in the state folder
IMAGE2SONG_OBJECT_STORE   fsspec URL or folder for image bytes; default <home>/objects
IMAGE2SONG_SITE_URL       the sharing site to crawl; default the demo site
IMAGE2SONG_LYRICS_URL     the LRCLIB-compatible lyric API; default the demo API
IMAGE2SONG_CONTACT        an e-mail address or URL where site owners reach whoever runs the crawler; it goes
                          into the User-Agent (image2song/VERSION (+CONTACT)); without it only loopback is crawled
IMAGE2SONG_ALLOW_NETWORKS comma-separated networks or host names the crawler may reach although they are not
                          public (loopback, private, link-local…); default: loopback when the site or the lyric
                          API is on loopback (the demo world), else none
IMAGE2SONG_HOST_DELAY     seconds between two requests to one host, shared by every worker process and shard
                          (loopback is exempt); default 0.5, i.e. at most 2 requests/s per host
IMAGE2SONG_WORD_VECTORS   "glove-6b-50d" (packaged), "word2vec-english" / "word2vec-snapshot" (trained here on all
                          packaged English text / on the snapshot's lyrics), or a path to word2vec vectors
IMAGE2SONG_REFRESH_SCHEDULE  the refresh DAG's schedule (cron or preset); "none" for manual runs only
IMAGE2SONG_SEED           the seed of split membership and training; default 0
IMAGE2SONG_DATASET_LICENSE  the licence under which snapshots are shared (the datasheet states it)
IMAGE2SONG_MAINTAINER     who maintains the snapshots and how to reach them (the datasheet states it)
IMAGE2SONG_RETENTION      how long snapshots are kept and how removal requests are handled (datasheet)
IMAGE2SONG_ALERT_WEBHOOK  URL that failure and deadline alerts are POSTed to as JSON {"text": …}; default none
IMAGE2SONG_FAILURE_THRESHOLDS  per-stage failure rates past which a stage (and its run) fails, e.g.
                          "fetch_lyrics=0.05,fetch_images=0.1"; unnamed stages keep their defaults
IMAGE2SONG_TAG_STORE      folder or fsspec URL of the tag store (each image tagged once per tagger); default <home>/tags
IMAGE2SONG_TAG_BACKEND    image tagger: "efficientnet-lite0" (packaged) or "faster-rcnn" (needs a checkpoint)
IMAGE2SONG_TAG_CHECKPOINT the faster-rcnn backend's checkpoint (label map beside it as <checkpoint>.labels.json)
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
DEFAULT_LICENSE = ("no licence granted: for research use by the operator only; images, lyrics and post "
                   "metadata remain their owners' (set IMAGE2SONG_DATASET_LICENSE)")
DEFAULT_MAINTAINER = "the operator of this image2song installation (set IMAGE2SONG_MAINTAINER to a name and contact)"
DEFAULT_RETENTION = ("snapshots are kept until the maintainer deletes them; a post removed at its source or on "
                     "request is left out of the next snapshot, and older snapshots holding it are deleted on "
                     "request (set IMAGE2SONG_RETENTION)")


# The share of a stage's records that may fail (they are retried next run) before the stage fails the
# run: post pages and lyric requests fail only when a service is down, lyrics break a filter only when
# the filters are broken; image hosts fail more often.
DEFAULT_FAILURE_THRESHOLDS = {"crawl_posts": 0.05, "fetch_images": 0.10, "fetch_lyrics": 0.05,
                              "filter_lyrics": 0.05}


def parse_thresholds(text: str) -> dict[str, float]:
    """ "stage=rate,stage=rate" over the defaults; a clear error for anything else."""
    thresholds = dict(DEFAULT_FAILURE_THRESHOLDS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        stage, _, rate = item.partition("=")
        stage = stage.strip()
        if stage not in DEFAULT_FAILURE_THRESHOLDS:
            raise ValueError(f"IMAGE2SONG_FAILURE_THRESHOLDS: unknown stage {stage!r} "
                             f"(stages: {', '.join(DEFAULT_FAILURE_THRESHOLDS)})")
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"IMAGE2SONG_FAILURE_THRESHOLDS: {item!r}: the rate must be a number from 0 to 1")
        thresholds[stage] = value
    return thresholds


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    object_store: str
    site_url: str
    lyrics_url: str
    contact: str
    allow_networks: tuple[str, ...]
    host_delay: float
    word_vectors: str
    refresh_schedule: str = "@daily"
    seed: int = 0
    dataset_license: str = DEFAULT_LICENSE
    maintainer: str = DEFAULT_MAINTAINER
    retention: str = DEFAULT_RETENTION
    tag_store: str = ""  # empty: <home>/tags
    tag_backend: str = "efficientnet-lite0"
    tag_checkpoint: str = ""
    review_trusted_proxies: str = ""
    failure_thresholds: str = ""
    alert_webhook: str = ""

    def failure_threshold(self, stage: str) -> float:
        return parse_thresholds(self.failure_thresholds)[stage]

    @property
    def user_agent(self) -> str | None:
        """The crawler's User-Agent: the project, its version and the operator's contact (None without
        a contact: the HTTP layer then talks to loopback only)."""
        from image2song import __version__

        return f"image2song/{__version__} (+{self.contact}; dataset research crawler)" if self.contact else None

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
        parse_thresholds(env.get("IMAGE2SONG_FAILURE_THRESHOLDS", ""))  # a typo fails here, not mid-run
        site_url = env.get("IMAGE2SONG_SITE_URL", f"http://127.0.0.1:{DEMO_SITE_PORT}")
        lyrics_url = env.get("IMAGE2SONG_LYRICS_URL", f"http://127.0.0.1:{DEMO_LYRICS_PORT}")
        return cls(
            home=home,
            db_url=env.get("IMAGE2SONG_DB_URL", f"sqlite:///{home / 'catalog.sqlite'}"),
            object_store=env.get("IMAGE2SONG_OBJECT_STORE", str(home / "objects")),
            site_url=site_url,
            lyrics_url=lyrics_url,
            contact=env.get("IMAGE2SONG_CONTACT", "").strip(),
            allow_networks=_allow_networks(env, site_url, lyrics_url),
            host_delay=float(env.get("IMAGE2SONG_HOST_DELAY", "0.5")),
            word_vectors=env.get("IMAGE2SONG_WORD_VECTORS", "glove-6b-50d"),
            refresh_schedule=env.get("IMAGE2SONG_REFRESH_SCHEDULE", "@daily"),
            seed=int(env.get("IMAGE2SONG_SEED", "0")),
            dataset_license=env.get("IMAGE2SONG_DATASET_LICENSE", DEFAULT_LICENSE),
            maintainer=env.get("IMAGE2SONG_MAINTAINER", DEFAULT_MAINTAINER),
            retention=env.get("IMAGE2SONG_RETENTION", DEFAULT_RETENTION),
            failure_thresholds=env.get("IMAGE2SONG_FAILURE_THRESHOLDS", ""),
            alert_webhook=env.get("IMAGE2SONG_ALERT_WEBHOOK", ""),
            tag_store=env.get("IMAGE2SONG_TAG_STORE", str(home / "tags")),
            tag_backend=env.get("IMAGE2SONG_TAG_BACKEND", "efficientnet-lite0"),
            tag_checkpoint=env.get("IMAGE2SONG_TAG_CHECKPOINT", ""),
            review_trusted_proxies=env.get("IMAGE2SONG_REVIEW_TRUSTED_PROXIES", ""),
        )

    def to_env(self) -> dict[str, str]:
        """The same settings as environment variables, for child processes (Airflow tasks)."""
        names = {
            "home": "IMAGE2SONG_HOME", "db_url": "IMAGE2SONG_DB_URL",
            "object_store": "IMAGE2SONG_OBJECT_STORE", "site_url": "IMAGE2SONG_SITE_URL",
            "lyrics_url": "IMAGE2SONG_LYRICS_URL", "contact": "IMAGE2SONG_CONTACT",
            "allow_networks": "IMAGE2SONG_ALLOW_NETWORKS", "host_delay": "IMAGE2SONG_HOST_DELAY",
            "word_vectors": "IMAGE2SONG_WORD_VECTORS", "refresh_schedule": "IMAGE2SONG_REFRESH_SCHEDULE",
            "seed": "IMAGE2SONG_SEED", "dataset_license": "IMAGE2SONG_DATASET_LICENSE",
            "maintainer": "IMAGE2SONG_MAINTAINER", "retention": "IMAGE2SONG_RETENTION",
            "tag_store": "IMAGE2SONG_TAG_STORE",
            "tag_backend": "IMAGE2SONG_TAG_BACKEND", "tag_checkpoint": "IMAGE2SONG_TAG_CHECKPOINT",
            "review_trusted_proxies": "IMAGE2SONG_REVIEW_TRUSTED_PROXIES",
            "failure_thresholds": "IMAGE2SONG_FAILURE_THRESHOLDS",
            "alert_webhook": "IMAGE2SONG_ALERT_WEBHOOK",
        }
        def text(value) -> str:
            return ",".join(value) if isinstance(value, tuple) else str(value)

        return {names[f.name]: text(getattr(self, f.name)) for f in fields(self)}


def _allow_networks(env, *urls: str) -> tuple[str, ...]:
    """IMAGE2SONG_ALLOW_NETWORKS, or loopback when a configured service lives there (the demo world)."""
    import ipaddress
    from urllib.parse import urlsplit

    if "IMAGE2SONG_ALLOW_NETWORKS" in env:
        return tuple(part.strip() for part in env["IMAGE2SONG_ALLOW_NETWORKS"].split(",") if part.strip())

    def loopback(url: str) -> bool:
        host = urlsplit(url).hostname or ""
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    return ("127.0.0.0/8", "::1/128") if any(loopback(url) for url in urls) else ()
