"""Kill the crawl with SIGKILL mid-way, for real, and start it again: nothing lost, nothing duplicated.

A loopback sharing site serves list pages, post pages and images; the crawl (``stages.crawl`` then
``stages.fetch_images`` with worker processes) runs in a subprocess that the test kills with SIGKILL
while posts are being stored, again while images are being stored, and once more at a random moment;
then it runs to the end. The catalog and the object store must then hold exactly the expected posts,
songs and images, once each; worker processes of a killed run must not linger.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from curation.catalog import CrawlUrl, Image, Post, Song, session_scope

ROOT = Path(__file__).resolve().parent.parent
N_POSTS, PER_PAGE = 240, 20

CHILD = """
import os, sys
from image2song import stages
from image2song.settings import Settings
settings = Settings.from_env()
stages.crawl(settings, workers=4)
stages.fetch_images(settings, workers=4, processes=2)
print("FINISHED")
"""


def noise_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def serve_site(routes) -> None:
    pages = -(-N_POSTS // PER_PAGE)

    def list_page(h):
        page = int(h.path.split("page=")[1]) if "page=" in h.path else 1
        links = "".join(f'<a class="post-link" href="/post/p{i}">{i}</a>'
                        for i in range((page - 1) * PER_PAGE, min(N_POSTS, page * PER_PAGE)))
        nxt = f'<a rel="next" href="/posts?page={page + 1}">next</a>' if page < pages else ""
        h.reply(200, f"<html><body>{links}{nxt}</body></html>".encode())

    def post_page(i):
        def handler(h):
            time.sleep(0.01)
            h.reply(200, (f'<html><body><article class="post" data-post-id="p{i}">'
                          f'<img class="post-image" src="/img/{i}.jpg"><span class="song-title">Song {i % 60}</span>'
                          f'<span class="song-artist">Artist {i % 60}</span><span class="favorites">{i}</span>'
                          f"</article></body></html>").encode())
        return handler

    def image(i):
        data = noise_jpeg(i)

        def handler(h):
            time.sleep(0.03)
            h.reply(200, data, "image/jpeg")
        return handler

    routes["/posts"] = list_page
    for i in range(N_POSTS):
        routes[f"/post/p{i}"] = post_page(i)
        routes[f"/img/{i}.jpg"] = image(i)


def counts(db_url: str, objects: Path | None = None) -> dict:
    with session_scope(db_url) as session:
        return {"posts": session.scalar(select(func.count()).select_from(Post)),
                "objects": sum(1 for _ in objects.rglob("*.jpg")) if objects and objects.exists() else 0,
                "stored": session.scalar(select(func.count()).select_from(Image).where(Image.status == "stored"))}


def start(env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(process: subprocess.Popen, condition, db_url: str, objects: Path, timeout: float = 90) -> bool:
    """SIGKILL the crawl as soon as ``condition(counts)`` holds; False when it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            now = counts(db_url, objects)
        except Exception:  # the catalog is being written: look again
            now = None
        if now and condition(now):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    process.kill()
    raise AssertionError("the crawl made no progress")


def children_gone(pids: set[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {pid for pid in pids if Path(f"/proc/{pid}").exists()
                 and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()}
        if not alive:
            return True
        time.sleep(0.1)
    return False


def worker_pids(process: subprocess.Popen) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == process.pid:
                    found.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


@pytest.mark.timeout(600)
def test_sigkill_at_any_moment_then_resume_loses_and_duplicates_nothing(http_server, db_url, tmp_path):
    base, routes = http_server
    serve_site(routes)
    env = {**os.environ, "IMAGE2SONG_HOME": str(tmp_path / "home"), "IMAGE2SONG_DB_URL": db_url,
           "IMAGE2SONG_OBJECT_STORE": str(tmp_path / "objects"), "IMAGE2SONG_SITE_URL": base,
           "IMAGE2SONG_CONTACT": "tests@example.invalid", "TQDM_DISABLE": "1",
           "PYTHONPATH": str(ROOT)}
    kills = 0
    # 1. while post pages are being stored (a first batch is in, the rest is not)
    process = start(env)
    kills += kill_when(process, lambda c: 0 < c["posts"] < N_POSTS, db_url, tmp_path / "objects")
    # 2. while images are being fetched and stored (worker processes must end with their parent)
    process = start(env)
    seen_workers: set[int] = set()

    def images_half_way(c):
        seen_workers.update(worker_pids(process))
        return 0 < c["objects"] and c["stored"] < N_POSTS

    if kill_when(process, images_half_way, db_url, tmp_path / "objects"):
        kills += 1
        assert children_gone(seen_workers - {process.pid}), "worker processes outlived their killed parent"
    # 3. at a random moment
    process = start(env)
    time.sleep(random.Random(7).uniform(0.5, 3.0))
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills >= 2, "the crawl finished before it could be killed: make the site slower"
    # 4. to the end
    process = start(env)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0 and "FINISHED" in output, output[-3000:]

    with session_scope(db_url) as session:
        posts = session.execute(select(Post.external_id, Post.favorite_count)).all()
        assert sorted(p.external_id for p in posts) == sorted(f"p{i}" for i in range(N_POSTS))  # none lost, none twice
        assert {p.external_id: p.favorite_count for p in posts} == {f"p{i}": i for i in range(N_POSTS)}
        assert session.scalar(select(func.count()).select_from(Song)) == 60
        images = session.execute(select(Image.url, Image.status, Image.sha256, Image.duplicate_of)).all()
        assert len(images) == N_POSTS and {i.status for i in images} == {"stored"}
        assert all(i.duplicate_of is None for i in images)  # noise images: no near-duplicates
        urls = session.execute(select(CrawlUrl.url, CrawlUrl.status).where(CrawlUrl.kind == "post")).all()
        assert len(urls) == len({u.url for u in urls}) == N_POSTS and {u.status for u in urls} == {"done"}
    stored = sorted(p.name.split(".")[0] for p in (tmp_path / "objects").rglob("*.jpg"))
    assert stored == sorted(i.sha256 for i in images)  # each image's bytes once, and nothing else
    # Re-fetching after a kill is bounded: at most the batches in flight were fetched again.
    post_hits = sum(n for path, n in routes.hits.items() if path.startswith("/post/"))
    assert N_POSTS <= post_hits <= N_POSTS + kills * (100 + 8)


def test_a_finished_crawl_runs_again_without_refetching(http_server, db_url, tmp_path):
    """A second run is incremental: post pages are not fetched again, images are not downloaded again."""
    base, routes = http_server
    serve_site(routes)
    from image2song import stages
    from image2song.settings import Settings

    settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path), "IMAGE2SONG_DB_URL": db_url,
                                  "IMAGE2SONG_OBJECT_STORE": str(tmp_path / "objects"),
                                  "IMAGE2SONG_SITE_URL": base, "IMAGE2SONG_CONTACT": "t@example.invalid"})
    first = stages.crawl(settings, workers=8)
    assert first["new_posts"] == N_POSTS and first["crawl_state"]["post:done"] == N_POSTS
    assert {k: v for k, v in stages.fetch_images(settings, workers=8).items() if k in ("stored", "failed")} == {
        "stored": N_POSTS, "failed": 0}
    hits = dict(routes.hits)
    again = stages.crawl(settings, workers=8)
    assert (again["discovered"], again["attempted"], again["new_posts"]) == (0, 0, 0)
    assert (stages.fetch_images(settings)["stored"], stages.fetch_images(settings)["attempted"]) == (0, 0)
    def pages(h):  # list pages and robots.txt are read again on every run; nothing else is
        return {p: n for p, n in h.items() if p not in ("/posts", "/robots.txt")}

    assert pages(routes.hits) == pages(hits)


CHILD_POSTS = """
from image2song import stages
from image2song.settings import Settings
stages.crawl(Settings.from_env(), workers=8)
print("FINISHED")
"""


@pytest.mark.timeout(300)
def test_a_kill_while_slow_pages_are_in_flight_keeps_every_page_already_fetched(http_server, db_url, tmp_path):
    """Results are recorded as they complete, not in order: with four post pages that take seconds and
    thirty-six quick ones, the quick ones are in the catalog while the slow ones are still in flight; a
    SIGKILL then loses none of them, and the resumed crawl fetches only the four."""
    base, routes = http_server
    n, slow = 40, {3, 13, 23, 33}

    def list_page(h):
        links = "".join(f'<a class="post-link" href="/post/p{i}">{i}</a>' for i in range(n))
        h.reply(200, f"<html><body>{links}</body></html>".encode())

    def post_page(i):
        def handler(h):
            time.sleep(8.0 if i in slow else 0.01)
            h.reply(200, (f'<html><body><article class="post" data-post-id="p{i}">'
                          f'<img class="post-image" src="/img/{i}.jpg"><span class="song-title">Song {i}</span>'
                          f'<span class="song-artist">Artist</span></article></body></html>').encode())
        return handler

    routes["/posts"] = list_page
    for i in range(n):
        routes[f"/post/p{i}"] = post_page(i)
    env = {**os.environ, "IMAGE2SONG_HOME": str(tmp_path / "home"), "IMAGE2SONG_DB_URL": db_url,
           "IMAGE2SONG_SITE_URL": base, "IMAGE2SONG_CONTACT": "tests@example.invalid", "TQDM_DISABLE": "1",
           "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", CHILD_POSTS], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    assert kill_when(process, lambda c: c["posts"] >= n - len(slow), db_url, tmp_path / "objects", timeout=60), \
        "the quick pages were not recorded while the slow ones were in flight"
    with session_scope(db_url) as session:
        kept = set(session.scalars(select(Post.external_id)))
    assert kept == {f"p{i}" for i in range(n) if i not in slow}
    process = subprocess.Popen([sys.executable, "-c", CHILD_POSTS], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0 and "FINISHED" in output, output[-3000:]
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Post)) == n
    assert all(routes.hits[f"/post/p{i}"] == 1 for i in range(n) if i not in slow)
