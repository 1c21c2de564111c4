"""refresh: discover posts → crawl post shards → plan image shards → fetch image shards → reconcile
the object store → lyrics → filter → enqueue review → snapshot (emits the snapshot Asset).

Wiring only: each task calls one stage of image2song.stages; heavy imports happen inside the stages.
A stage past its failure threshold fails its task (retried with backoff), so a run whose stages
failed never reaches build_snapshot. The DAG starts paused: its schedule begins when an operator
unpauses it (no run, let alone a backfill, on the first start of Airflow).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from image2song import stages
from image2song.assets import SNAPSHOT
from image2song.safeguards import HEAVY_CPU_POOL, LOCAL, NETWORK, run_deadline, task_args
from image2song.settings import Settings

_schedule = Settings.from_env().refresh_schedule
minutes, hours = (lambda n: timedelta(minutes=n)), (lambda n: timedelta(hours=n))


@dag(
    dag_id="refresh",
    schedule=None if _schedule == "none" else _schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=True,
    dagrun_timeout=hours(12),
    deadline=run_deadline(hours(6)),
    tags=["image2song"],
    params={
        "max_pages": Param(None, type=["null", "integer"], minimum=1, description="list pages to walk at most (2000 when empty)"),
        "test_songs": Param(100, type="integer", minimum=1, description="split A: songs held out for test"),
    },
    doc_md=__doc__,
)
def refresh():
    @task(**task_args(**LOCAL, timeout=minutes(10)))
    def migrate_catalog() -> dict:
        return stages.migrate(Settings.from_env())

    @task(**task_args(**NETWORK, timeout=minutes(30)))
    def discover_posts(params: dict | None = None) -> list[dict]:
        return stages.plan_crawl(Settings.from_env(), max_pages=params["max_pages"])["shards"]

    @task(**task_args(**NETWORK, timeout=hours(2)))
    def crawl_posts(shard: dict) -> dict:
        return stages.crawl(Settings.from_env(), discover=False, **shard)

    @task(**task_args(**LOCAL, timeout=minutes(10)))
    def plan_images() -> list[dict]:
        return stages.plan_images(Settings.from_env())["shards"]

    @task(**task_args(**NETWORK, timeout=hours(3), pool=HEAVY_CPU_POOL))
    def fetch_images(shard: dict) -> dict:
        return stages.fetch_images(Settings.from_env(), **shard)

    @task(**task_args(**LOCAL, timeout=minutes(30)))
    def reconcile_objects() -> dict:
        return stages.reconcile_objects(Settings.from_env())

    @task(**task_args(**NETWORK, timeout=hours(3)))
    def fetch_lyrics() -> dict:
        return stages.fetch_lyrics(Settings.from_env())

    @task(**task_args(**LOCAL, timeout=hours(1)))
    def filter_lyrics() -> dict:
        return stages.filter_lyrics(Settings.from_env())

    @task(**task_args(**LOCAL, timeout=minutes(30)))
    def enqueue_review() -> dict:
        return stages.enqueue_review(Settings.from_env())

    @task(outlets=[SNAPSHOT], **task_args(**LOCAL, timeout=hours(1), pool=HEAVY_CPU_POOL))
    def build_snapshot(params: dict | None = None) -> dict:
        result = stages.build_snapshot(Settings.from_env(), test_songs=params["test_songs"])
        if not result["published"]:
            # A skipped task emits no Asset event, so an unchanged snapshot does not retrain.
            raise AirflowSkipException(f"approved data unchanged since snapshot {result['version']}")
        get_current_context()["outlet_events"][SNAPSHOT].extra = {
            "version": result["version"], "path": result["path"], "counts": result["counts"],
            "datasheet": result["datasheet"]}
        return result

    # Large crawls are cut into shards (by catalog row id), mapped over with dynamic task mapping.
    post_shards = discover_posts()
    migrate_catalog() >> post_shards
    crawled = crawl_posts.expand(shard=post_shards)
    image_shards = plan_images()
    crawled >> image_shards
    # Reconciling runs after every image shard, never beside one (it deletes blobs no row refers to).
    (fetch_images.expand(shard=image_shards) >> reconcile_objects() >> fetch_lyrics() >> filter_lyrics()
     >> enqueue_review() >> build_snapshot())


refresh()
