"""Operations: stages fail loudly past their failure thresholds when a service goes away mid-run,
keep what succeeded, and a run after the service returns ends where a clean run ends."""

from __future__ import annotations

import shutil
import threading

import pytest

from image2song import stages
from image2song.settings import Settings, parse_thresholds

TINY_POSTS = 300


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from image2song.demo.corpus import build_corpus

    folder = tmp_path_factory.mktemp("corpus")
    build_corpus(folder, seed=0, n_posts=TINY_POSTS)
    return folder


def _settings(home, **extra) -> Settings:
    from tests.test_end_to_end import free_port

    home.mkdir(parents=True, exist_ok=True)
    return Settings.from_env({"IMAGE2SONG_HOME": str(home), "IMAGE2SONG_SITE_URL": f"http://127.0.0.1:{free_port()}",
                              "IMAGE2SONG_LYRICS_URL": f"http://127.0.0.1:{free_port()}", **extra})


def _world(corpus, settings: Settings):
    from image2song.demo.servers import DemoWorld

    return DemoWorld(corpus, site_port=_port(settings.site_url), lyrics_port=_port(settings.lyrics_url))


def _go_away_after(world, method: str, calls: int, then=None):
    """After ``calls`` calls of the world's ``method``, stop the world (both servers refuse connections
    from then on), or run ``then`` instead."""
    original, count, lock, gone = getattr(world, method), [0], threading.Lock(), threading.Event()

    def go_away():
        try:
            (then or world.stop)()
        finally:  # never leave the waiting handlers hanging
            gone.set()

    def counting(*args, **kwargs):
        with lock:
            count[0] += 1
            if count[0] == calls:
                threading.Thread(target=go_away).start()
        if count[0] >= calls:  # no answer gets out once the outage began
            gone.wait(30)
        return original(*args, **kwargs)

    setattr(world, method, counting)


def _verdicts(db_url: str) -> dict:
    from sqlalchemy import select

    from curation.catalog import LyricCandidate, Song, session_scope

    with session_scope(db_url) as session:
        rows = session.execute(select(Song.norm_key, LyricCandidate.verdict, LyricCandidate.text_hash)
                               .join(LyricCandidate, LyricCandidate.song_id == Song.id))
        return {key: (verdict, text) for key, verdict, text in rows}


def _crawl_and_images(settings: Settings) -> None:
    stages.migrate(settings)
    stages.crawl(settings)
    stages.fetch_images(settings)


def test_lyric_api_outage_fails_the_stage_and_the_next_run_matches_a_clean_run(corpus, tmp_path):
    clean = _settings(tmp_path / "clean")
    with _world(corpus, clean):
        _crawl_and_images(clean)
        stages.fetch_lyrics(clean)
        stages.filter_lyrics(clean)
    clean_snapshot = stages.build_snapshot(clean, test_songs=4)

    settings = _settings(tmp_path / "outage")
    world = _world(corpus, settings).start()
    try:
        _crawl_and_images(settings)
        songs = len(_verdicts(clean.db_url))
        _go_away_after(world, "_lookup", songs // 3)
        with pytest.raises(stages.StageFailed) as failed:
            stages.fetch_lyrics(settings)
    finally:
        world.stop()
    message = str(failed.value)
    assert message.startswith(f"fetch_lyrics: lyric API {settings.lyrics_url} unreachable: ")
    assert "songs failed" in message and "threshold 5%" in message and "Connection refused" in message
    # It stops asking once the stage must fail: not every remaining song waits out its retries.
    counts = failed.value.counts
    assert counts["given_up"] > 0 and counts["attempted"] + counts["given_up"] == songs
    assert f"gave up on the {counts['given_up']:,} not tried yet" in message
    # What was answered before the outage is kept; the failed songs wait as "error" (or were not asked).
    kept = {key: v for key, v in _verdicts(settings.db_url).items() if v[0] != "error"}
    assert 0 < len(kept) < songs
    # The refresh stops at the failed stage: nothing is published from it.
    from curation.snapshots import list_snapshots

    assert list_snapshots(settings.db_url) == []

    with _world(corpus, settings):  # the API is back: the next run asks only the songs that failed
        again = stages.fetch_lyrics(settings)
        assert again["attempted"] == songs - len(kept) and again["failed"] == 0
        stages.filter_lyrics(settings)
    assert _verdicts(settings.db_url) == _verdicts(clean.db_url)
    snapshot = stages.build_snapshot(settings, test_songs=4)
    assert snapshot["published"] and snapshot["counts"] == clean_snapshot["counts"]


def test_site_outage_mid_crawl_fails_the_stage_and_a_rerun_completes(corpus, tmp_path):
    settings = _settings(tmp_path)
    world = _world(corpus, settings).start()
    try:
        stages.migrate(settings)
        _go_away_after(world, "_post_page", 40)
        with pytest.raises(stages.StageFailed) as failed:
            stages.crawl(settings)
    finally:
        world.stop()
    assert f"crawl_posts: post source {settings.site_url} unreachable" in str(failed.value)
    assert failed.value.counts["given_up"] > 0
    with _world(corpus, settings):
        again = stages.crawl(settings)
    assert again["failed"] == 0
    done = again["crawl_state"]
    assert done.get("post:error", 0) == 0 and done["post:done"] > 40


def test_object_store_outage_mid_fetch_fails_the_stage_and_a_rerun_leaves_no_orphans(corpus, tmp_path):
    # The store is reached through a link, so the outage can begin in one atomic step: renaming the
    # folder away would leave a moment in which a worker's makedirs recreates it.
    objects, mount = tmp_path / "objects", tmp_path / "objects-mount"
    objects.mkdir()
    mount.symlink_to(objects)
    (tmp_path / "not-a-folder").write_text("every write under a file fails")
    settings = _settings(tmp_path, IMAGE2SONG_OBJECT_STORE=str(mount))

    def point_mount_at(target):
        swap = tmp_path / "mount-swap"
        swap.symlink_to(target)
        swap.replace(mount)

    with _world(corpus, settings) as world:
        stages.migrate(settings)
        stages.crawl(settings)
        _go_away_after(world, "_image", 30, then=lambda: point_mount_at(tmp_path / "not-a-folder"))
        with pytest.raises(stages.StageFailed) as failed:
            stages.fetch_images(settings)
        assert "fetch_images: object store unavailable" in str(failed.value)
        point_mount_at(objects)
        again = stages.fetch_images(settings)
    assert again["failed"] == 0 and again["attempted"] == failed.value.counts["failed"]
    # Writes cut off mid-way may have left half-written files: reconciling removes them, and then the
    # store holds exactly the blobs the catalog refers to.
    stages.reconcile_objects(settings)
    again = stages.reconcile_objects(settings)
    assert (again["removed_orphans"], again["removed_partials"], again["missing"]) == (0, 0, 0)
    assert again["objects"] == len(list(objects.rglob("*.jpg")))


def test_a_few_failures_under_the_threshold_pass_with_a_warning(caplog):
    counts = {"attempted": 100, "failed": 4, "failures": [("song 1", "FetchError: HTTP 503")]}
    assert stages.check_failures("fetch_lyrics", counts, 0.05, service="lyric API", unit="songs") is counts
    assert "4 of 100 songs failed" in caplog.text
    # Past the rate but fewer than MIN_FAILURES_TO_FAIL: a flaky song does not fail every run.
    small = {"attempted": 3, "failed": 2, "failures": []}
    stages.check_failures("fetch_lyrics", small, 0.05, service="lyric API", unit="songs")
    with pytest.raises(stages.StageFailed, match="answered with server errors: 6 of 10 songs"):
        stages.check_failures("fetch_lyrics", {"attempted": 10, "failed": 6,
                                               "failures": [("s", "FetchError: u: HTTP 503 (after 4 attempts)")] * 6},
                              0.05, service="lyric API", unit="songs")


def test_failure_thresholds_setting():
    assert parse_thresholds("") == {"crawl_posts": 0.05, "fetch_images": 0.10, "fetch_lyrics": 0.05,
                                    "filter_lyrics": 0.05}
    assert parse_thresholds("fetch_lyrics=0.2")["fetch_lyrics"] == 0.2
    assert parse_thresholds("filter_lyrics=0.5")["filter_lyrics"] == 0.5
    with pytest.raises(ValueError, match="unknown stage 'fetch_lyric'"):
        Settings.from_env({"IMAGE2SONG_FAILURE_THRESHOLDS": "fetch_lyric=0.2"})
    with pytest.raises(ValueError, match="from 0 to 1"):
        parse_thresholds("fetch_images=5%")
    settings = Settings.from_env({"IMAGE2SONG_FAILURE_THRESHOLDS": "fetch_images=0.3"})
    assert Settings.from_env(settings.to_env()).failure_threshold("fetch_images") == 0.3


def test_reconcile_removes_orphan_blobs_and_requeues_missing_ones(db_url, tmp_path):
    from sqlalchemy import select

    from crawlers.images import validate_image
    from curation.catalog import Image, session_scope
    from curation.crawl_store import reconcile_objects
    from curation.object_store import ObjectStore
    from tests.catalog_factory import fill_catalog, jpeg

    fill_catalog(db_url, songs=2, posts_per_song=2)
    store = ObjectStore(str(tmp_path / "objects"))
    seeds = [song * 1000 + post for song in range(2) for post in range(2)]
    keys = [store.put(validate_image(jpeg(seed), declared_type="image/jpeg").data, ".jpg") for seed in seeds]
    store.fs.rm(f"{store.root}/{keys[0]}")  # a referenced blob gone
    orphan = store.put(validate_image(jpeg(99), declared_type="image/jpeg").data, ".jpg")  # its record was lost
    partial = f"{store.root}/{keys[1]}.1a2b3c4d.partial"  # a write killed halfway
    store.fs.pipe(partial, b"half")
    (tmp_path / "objects" / "README").write_text("not a blob: left alone")

    assert reconcile_objects(db_url, store) == {"objects": 3, "removed_orphans": 1, "removed_partials": 1,
                                                "missing": 1}
    assert not store.exists(orphan) and not store.fs.exists(partial) and store.exists(keys[1])
    assert (tmp_path / "objects" / "README").exists()
    with session_scope(db_url) as session:
        pending = session.scalars(select(Image.url).where(Image.status == "pending")).all()
    assert len(pending) == 1  # the image whose blob vanished is fetched again next run
    assert reconcile_objects(db_url, store)["removed_orphans"] == 0


CHILD = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _all_gone(pids, timeout: float = 15) -> bool:
    import time

    deadline = time.monotonic() + timeout  # a killed orphan takes a moment to die on a loaded machine
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_services_restart_what_dies_and_stop_every_child(tmp_path):
    """The supervisor behind `image2song airflow ui` and `cluster`, with stand-in components that start
    children of their own (as the scheduler starts executor workers)."""
    import sys
    import time

    import psutil

    from image2song.airflow_env import AirflowServices

    said = []
    services = AirflowServices(Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path)}), port=1, say=said.append)
    services.commands = {"scheduler": [sys.executable, "-c", CHILD], "triggerer": [sys.executable, "-c", CHILD]}
    services.spawn_all()
    try:
        def family(name):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # wait until the component has started its child
                parent = psutil.Process(services.processes[name].pid)
                if parent.children():
                    return [parent.pid] + [c.pid for c in parent.children()]
                time.sleep(0.2)
            raise AssertionError(f"{name} started no child")

        old = family("scheduler")
        services.kill("scheduler")
        assert services.check() == ["scheduler"]
        assert "scheduler exited" in said[-1] and "restarting" in said[-1]
        assert _all_gone(old), "the dead scheduler's children must go too"
        everything = family("scheduler") + family("triggerer")
        assert services.check() == []
    finally:
        services.stop(timeout=10)
    assert _all_gone(everything)


def test_failure_callback_logs_records_and_posts_the_alert(tmp_path, caplog, monkeypatch):
    import asyncio
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from types import SimpleNamespace

    from curation.alerts import recent_alerts
    from image2song import alerts

    posted = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"IMAGE2SONG_HOME": str(tmp_path), "IMAGE2SONG_ALERT_WEBHOOK": f"http://127.0.0.1:{server.server_address[1]}/"}
    settings = Settings.from_env(env)
    stages.migrate(settings)
    for key, value in env.items():  # the callbacks read the settings as a task does: from the environment
        monkeypatch.setenv(key, value)
    try:
        ti = SimpleNamespace(dag_id="refresh", task_id="fetch_lyrics", run_id="manual__1", map_index=-1, try_number=4)
        error = stages.StageFailed("fetch_lyrics", "fetch_lyrics: lyric API unreachable: 61 of 470 songs failed", {})
        alerts.task_failed({"ti": ti, "exception": error})
        asyncio.run(alerts.deadline_missed(context={"dag_run": {"dag_id": "train", "dag_run_id": "asset__2",
                                                                "state": "running"},
                                                    "deadline": {"deadline_time": "2026-12-03T12:00:00Z"}}))
    finally:
        server.shutdown()
    failed, late = reversed(recent_alerts(settings.db_url))
    assert (failed["kind"], failed["dag_id"], failed["task_id"], failed["try_number"]) == \
        ("task_failed", "refresh", "fetch_lyrics", 4)
    assert "refresh.fetch_lyrics failed for good after 4 tries" in failed["message"]
    assert "lyric API unreachable: 61 of 470 songs failed" in failed["message"]
    assert (late["kind"], late["dag_id"], late["run_id"]) == ("deadline_missed", "train", "asset__2")
    assert [p["text"] for p in posted] == [failed["message"], late["message"]]
    assert "failed for good" in caplog.text
