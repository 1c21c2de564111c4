"""The scale-out deployment, proven (`make scaleout-test`; skipped by `make test`): `image2song airflow
cluster`'s services on loopback with two Celery workers, Airflow's metadata and the catalog on PostgreSQL
(fresh databases), Redis as the broker. It runs refresh and train on a tiny demo corpus through the REST
API while faults are injected — one Celery worker SIGKILLed while `fetch_images` runs, the scheduler
killed and restarted during `train` — then checks the snapshot equals an embedded-default run's (the
same stages in one process on SQLite), the metrics agree, nothing is duplicated or orphaned, and no
process is left behind.

Tolerance: the same seed gives the same snapshot exactly; training in another process on the same data
may differ in float rounding, so R@10 may differ by at most 5 points and the median rank by 10% (+1).
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.skipif(
    os.environ.get("IMAGE2SONG_SCALEOUT_TEST") != "1", reason="the scale-out check runs with `make scaleout-test`")]

TINY_POSTS = 300
TEST_SONGS = 4
TRAIN_PARAMS = {"splits": ["b"], "tag_vocabularies": ["obj+attr"], "epochs": 3, "baselines": ["conse"], "seed": 0}
REDIS_DB = 11  # this check's own Redis database; queues are named per run, so parallel runs do not mix
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _redis_why_not() -> str | None:
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_connect_timeout=3).ping()
        return None
    except Exception as error:
        return f"{type(error).__name__}: {error}"


@pytest.fixture
def databases(postgres_server):
    from sqlalchemy import create_engine, text

    why_not = _redis_why_not()
    if why_not:
        pytest.skip(f"Redis does not answer at 127.0.0.1:6379 ({why_not}); the scale-out check is skipped")
    names = [f"i2s_scaleout_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("airflow", "catalog")]
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield [f"{PG}/{name}" for name in names]
    from curation.catalog.db import engine_for

    engine_for(f"{PG}/{names[1]}").dispose()
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _slow_images(world, seconds: float) -> None:
    """The demo site serves images slowly, so that fetch_images runs long enough to be killed."""
    original = world._image

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    world._image = slow


def _busy_worker(services) -> str:
    """The Celery worker whose process tree runs a task now (a task runs in a child of the worker)."""
    import psutil

    sizes = {}
    for name, process in services.processes.items():
        if name.startswith("worker-"):
            try:
                sizes[name] = len(psutil.Process(process.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                sizes[name] = 0
    return max(sizes, key=sizes.get)


def _wait(api, services, dag_id: str, run_id: str, timeout: float, on_states=None) -> dict:
    """Poll the run, playing supervisor (restart what died) as `image2song airflow cluster` does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check()
        run = api.run(dag_id, run_id)
        if on_states:
            on_states(api.task_states(dag_id, run_id))
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(2)
    raise TimeoutError(f"{dag_id} run {run_id} did not finish in {timeout:.0f}s: {api.task_states(dag_id, run_id)}")


def _processes_of(home: str) -> list:
    import psutil

    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.pid != os.getpid() and process.environ().get("IMAGE2SONG_HOME") == home:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_cluster_runs_refresh_and_train_through_faults(tmp_path, databases):
    from image2song import stages
    from image2song.airflow_env import AirflowApi, AirflowServices, airflow_command, cluster_environment
    from image2song.demo.corpus import build_corpus
    from image2song.demo.servers import DemoWorld
    from image2song.settings import Settings
    from tests.test_end_to_end import free_port

    metadata_url, catalog_url = databases
    corpus = tmp_path / "corpus"
    build_corpus(corpus, seed=0, n_posts=TINY_POSTS)
    run_tag = uuid.uuid4().hex[:8]
    queues = {"AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"i2s-{run_tag}", "IMAGE2SONG_GPU_QUEUE": f"i2s-gpu-{run_tag}"}
    home = tmp_path / "cluster"
    home.mkdir()
    world = DemoWorld(corpus, site_port=free_port(), lyrics_port=free_port()).start()
    _slow_images(world, 0.3)
    base = {"IMAGE2SONG_SITE_URL": world.site_url, "IMAGE2SONG_LYRICS_URL": world.lyrics_url,
            "IMAGE2SONG_REFRESH_SCHEDULE": "none"}
    cluster = Settings.from_env({**base, "IMAGE2SONG_HOME": str(home), "IMAGE2SONG_DB_URL": catalog_url,
                                 "IMAGE2SONG_OBJECT_STORE": f"file://{home / 'objects'}"})
    password = uuid.uuid4().hex
    env = cluster_environment(cluster, metadata_url=metadata_url, broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
                              port=free_port(), admin_password=password)
    env.update(queues)
    env.update({"IMAGE2SONG_RETRY_DELAY_SECONDS": "3",
                # A worker killed mid-task is noticed after this long without a heartbeat (default 300 s).
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5"})
    services = AirflowServices(cluster, env=env, workers=2,
                               queues=",".join(queues.values()), say=lambda m: print(m, flush=True))
    killed = {}
    try:
        stages.migrate(cluster)
        airflow_command(cluster, ["db", "migrate"], capture=True, env=env)
        services.start(timeout=400)
        with pytest.raises(RuntimeError, match="HTTP 401"):  # no login, no API: not "every visitor is admin"
            AirflowApi(services.url).runs("refresh")
        api = AirflowApi(services.url, "admin", password)
        api.wait_for_dags(["refresh", "train"], timeout=240)

        # Every task shows retries, a timeout and (heavy ones) a pool, as the scheduler serves them.
        heavy = {"fetch_images", "build_snapshot", "extract_tags", "train_models", "evaluate_models"}
        for dag_id in ("refresh", "train"):
            for t in api.tasks(dag_id):
                assert t["retries"] >= 1 and t["execution_timeout"], (dag_id, t["task_id"], t)
                assert (t["pool"] != "default_pool") == (t["task_id"] in heavy), (dag_id, t["task_id"], t["pool"])
        api.unpause("refresh")

        # refresh, with one Celery worker SIGKILLed while fetch_images runs.
        refresh_id = api.trigger("refresh", {"test_songs": TEST_SONGS})

        def instances():  # one entry per task instance: a mapped task has one per shard
            return api._call("GET", f"/dags/refresh/dagRuns/{refresh_id}/taskInstances")["task_instances"]

        def kill_during_fetch(states):
            if not killed and any(t.startswith("fetch_images") for t, s in states.items() if s == "running"):
                time.sleep(2)
                killed["running"] = {(ti["task_id"], ti["map_index"]) for ti in instances() if ti["state"] == "running"}
                killed["worker"] = _busy_worker(services)
                services.kill(killed["worker"], signal.SIGKILL)

        refresh = _wait(api, services, "refresh", refresh_id, 900, kill_during_fetch)
        assert refresh["state"] == "success", api.task_states("refresh", refresh_id)
        assert killed, "fetch_images finished before a worker could be killed"
        # The killed worker's task instance (one of those running at the kill) failed its try, and a retry
        # finished it; which one of them the worker held is not known, so one of them must show a retry.
        tries = {(ti["task_id"], ti["map_index"]): ti["try_number"] for ti in instances()}
        assert max((tries[key] for key in killed["running"]), default=0) >= 2, (killed, tries)

        # train, with small parameters (the snapshot's Asset event is dropped: the demo's end-to-end test
        # covers that chain; here the defaults would train every baseline for 30 epochs), and the
        # scheduler killed (and restarted by the supervisor) mid-run.
        dropped = api.session.delete(f"{api.base}/dags/train/assets/queuedEvents", timeout=30)
        assert dropped.status_code in (204, 404), dropped.text
        train_id = api.trigger("train", TRAIN_PARAMS)
        api.unpause("train")
        scheduler_killed = []

        def kill_scheduler(states):
            if not scheduler_killed and any(s == "running" for s in states.values()):
                services.kill("scheduler", signal.SIGKILL)
                scheduler_killed.append(True)

        train = _wait(api, services, "train", train_id, 1200, kill_scheduler)
        assert scheduler_killed and services.restarts.get("scheduler", 0) >= 1
        assert train["state"] == "success", api.task_states("train", train_id)
        summary = api.xcom("train", train_id, "report")
    finally:
        services.stop()
        world_running = world
    try:
        # Nothing duplicated or orphaned: the object store holds exactly what the catalog refers to.
        reconciled = stages.reconcile_objects(cluster)
        assert (reconciled["removed_orphans"], reconciled["removed_partials"], reconciled["missing"]) == (0, 0, 0)

        # The embedded default (the same stages in one process, SQLite, local folders) on the same corpus.
        embedded = Settings.from_env({**base, "IMAGE2SONG_HOME": str(tmp_path / "embedded")})
        (tmp_path / "embedded").mkdir()
        stages.migrate(embedded)
        stages.crawl(embedded)
        stages.fetch_images(embedded)
        stages.fetch_lyrics(embedded)
        stages.filter_lyrics(embedded)
        stages.enqueue_review(embedded)
        snapshot = stages.build_snapshot(embedded, test_songs=TEST_SONGS)
    finally:
        world_running.stop()
    assert reconciled["objects"] == stages.reconcile_objects(embedded)["objects"]
    # Membership: the same posts, images and songs. (Which songs go to which split is seeded over
    # catalog row ids, which differ when posts are crawled in another order: not compared here.)
    from curation.snapshots.reader import read_table

    def members(path):
        rows = read_table(path, "triplets", columns=["external_id", "image_sha256", "title", "artist"])
        return sorted(map(tuple, rows.astype(str).values))

    assert members(snapshot["path"]) == members(summary["snapshot"])

    # Metrics: the cluster's model against the same stages trained here, in one process, on its snapshot.
    tags = stages.extract_tags(embedded, summary["snapshot"])
    experiment = stages.train(embedded, summary["snapshot"], tags["tags_paths"], split="b", vocabulary="obj+attr",
                              params=TRAIN_PARAMS)
    local = stages.report(embedded, [stages.evaluate(embedded, experiment["experiment_dir"])],
                          summary["snapshot"])["headline"]
    assert set(local) == set(summary["headline"]) and local, (local, summary["headline"])
    for name, figures in local.items():
        theirs = summary["headline"][name]
        if figures["R@10"] is not None:
            assert abs(figures["R@10"] - theirs["R@10"]) <= 5.0, (name, figures, theirs)
        assert abs(figures["MedR"] - theirs["MedR"]) <= 0.1 * figures["MedR"] + 1, (name, figures, theirs)

    # Nothing the cluster started is left.
    deadline = time.monotonic() + 30
    while _processes_of(str(home)) and time.monotonic() < deadline:
        time.sleep(1)
    left = _processes_of(str(home))
    assert not left, [p.cmdline()[:4] for p in left]
