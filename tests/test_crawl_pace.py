"""One pace per host for the whole crawl: two shards, each with two worker processes, fetching images
from one host whose robots.txt asks for a Crawl-delay; the host sees the delay kept by all of them
together (the slots are booked in the catalog), not once per process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image as PILImage

from curation.catalog import Image, session_scope

ROOT = Path(__file__).resolve().parent.parent
CRAWL_DELAY = 0.1  # at most 10 requests/s to the host
N_IMAGES = 48

CHILD = """
import sys
from image2song import stages
from image2song.settings import Settings
print(stages.fetch_images(Settings.from_env(), shard=int(sys.argv[1]), shards=2, processes=2, workers=4))
"""


@pytest.mark.timeout(300)
def test_two_shards_with_two_processes_each_keep_one_pace_per_host(http_server, db_url, tmp_path):
    base, routes = http_server
    stamps, lock = [], threading.Lock()
    buffer = io.BytesIO()
    PILImage.new("RGB", (16, 16), (1, 2, 3)).save(buffer, "JPEG")
    data = buffer.getvalue()

    def image(h):
        with lock:
            stamps.append(time.monotonic())
        h.reply(200, data, "image/jpeg")

    routes["/robots.txt"] = lambda h: h.reply(200, f"User-agent: *\nCrawl-delay: {CRAWL_DELAY}\n".encode(), "text/plain")
    for i in range(N_IMAGES):
        routes[f"/img/{i}.jpg"] = image
    with session_scope(db_url) as session:
        session.add_all([Image(url=f"{base}/img/{i}.jpg", status="pending", attempts=0) for i in range(N_IMAGES)])
    env = {**os.environ, "IMAGE2SONG_HOME": str(tmp_path / "home"), "IMAGE2SONG_DB_URL": db_url,
           "IMAGE2SONG_OBJECT_STORE": str(tmp_path / "objects"), "IMAGE2SONG_SITE_URL": base,
           "IMAGE2SONG_CONTACT": "tests@example.invalid", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    shards = [subprocess.Popen([sys.executable, "-c", CHILD, str(shard)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for shard in (0, 1)]
    outputs = [shard.communicate(timeout=240)[0].decode() for shard in shards]
    assert all(shard.returncode == 0 for shard in shards), outputs
    assert len(stamps) == N_IMAGES, outputs
    span = stamps[-1] - stamps[0]
    rate = (len(stamps) - 1) / span
    busiest = max(sum(1 for s in stamps if t <= s < t + 2.0) for t in stamps)
    print(f"{len(stamps)} requests in {span:.2f}s: {rate:.2f} requests/s, at most {busiest} in two seconds "
          f"(limit {1 / CRAWL_DELAY:.0f}/s)")
    # Upper bounds only, with slack for a loaded machine: a process that wakes late for its slot sends it
    # close to the next one. Per-process pacing would give about 20-40 requests/s here.
    assert rate <= 1.25 / CRAWL_DELAY
    assert busiest <= 2 / CRAWL_DELAY + 8


def test_a_slow_down_seen_by_one_process_holds_every_other_and_fades_with_time(db_url):
    """Two pacers on one catalog stand for two worker processes: a 429 with Retry-After that one of them
    saw holds the other's next slot back, and the slow-down is gone after its fade time, not after a
    number of successes."""
    from curation.crawl_store import CatalogPacer

    one, other = CatalogPacer(db_url, fade=2.0, refresh=0.0), CatalogPacer(db_url, fade=2.0, refresh=0.0)
    host = "https://example.org"
    assert not other.busy(host)
    now = time.time()
    assert one.slow_down(host, 0.2, retry_after=0.5, max_penalty=10) == pytest.approx(0.2)
    assert other.busy(host)
    first = other.reserve(host, 0.0)
    second = other.reserve(host, 0.0)
    assert first >= now + 0.5  # nothing before Retry-After, whoever asks
    assert second - first >= 0.05  # and the slow-down (0.2 s, fading) spaces what follows
    time.sleep(max(0.0, first - time.time()) + 2.1)
    assert not other.busy(host)
    other.reserve(host, 0.0)
    assert other.reserve(host, 0.0) <= time.time()  # faded: the next slot is now, no delay left
