"""`image2song demo`: the demo world through both DAGs under a real Airflow scheduler.

It builds the corpus once (kept in the state folder), serves the demo site and lyric API on
loopback, starts `airflow standalone`, triggers `refresh`, follows the `train` run that the new
snapshot's Asset triggers, and prints where everything is with a results table.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

from image2song.settings import Settings

REFRESH_TIMEOUT = 1200
TRAIN_TIMEOUT = 1500


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _port(url: str) -> int:
    return urlsplit(url).port or 80


def ensure_corpus(settings: Settings, n_posts: int | None = None, scale: str = "demo") -> None:
    """Build the demo corpus in the state folder unless it is there already, built the same way."""
    import json

    from image2song.demo.corpus import SCALES, build_corpus

    n_posts = SCALES[scale].n_posts if n_posts is None else n_posts
    folder = settings.demo_corpus
    if (folder / "posts.jsonl").exists():
        info_path = folder / "corpus.json"
        # corpora built before corpus.json existed were all demo-scale
        info = json.loads(info_path.read_text()) if info_path.exists() else {"scale": "demo", "n_posts": n_posts}
        if (info.get("scale"), info.get("n_posts")) != (scale, n_posts):
            raise RuntimeError(
                f"the corpus in {folder} was built at scale {info.get('scale')!r} with {info.get('n_posts')} posts, "
                f"not {scale!r} with {n_posts}: its catalog and snapshots belong to that corpus. Use another "
                "state folder (IMAGE2SONG_HOME) for another scale, or remove that one."
            )
        return
    _say(f"building the {scale} corpus ({n_posts} posts) in {folder} …")
    build_corpus(folder, seed=settings.seed, scale=scale, n_posts=n_posts)


@contextmanager
def demo_world(settings: Settings):
    from image2song.demo.servers import DemoWorld

    world = DemoWorld(settings.demo_corpus, site_port=_port(settings.site_url),
                      lyrics_port=_port(settings.lyrics_url))
    try:
        world.start()
    except OSError as error:
        raise RuntimeError(f"cannot serve the demo world on {settings.site_url} / {settings.lyrics_url}: {error}. "
                           "Is another demo running? Set IMAGE2SONG_SITE_URL / IMAGE2SONG_LYRICS_URL "
                           "to other ports.") from error
    _say(f"demo sharing site on {world.site_url}, lyric API on {world.lyrics_url}")
    try:
        yield world
    finally:
        world.stop()


def serve_demo(settings: Settings, n_posts: int | None = None, scale: str = "demo") -> int:
    ensure_corpus(settings, n_posts, scale)
    with demo_world(settings):
        _say("serving until Ctrl-C")
        while True:
            time.sleep(3600)


def serve_airflow_ui(settings: Settings) -> int:
    """Airflow's UI and scheduler, plus the demo world when the settings point at it. A component that
    dies is reported and restarted; Ctrl-C or SIGTERM stops everything."""
    from image2song.airflow_env import AirflowServices, airflow_command, stop_on_sigterm

    stop_on_sigterm()
    airflow_command(settings, ["db", "migrate"], capture=True)
    with demo_world(settings) if (settings.demo_corpus / "posts.jsonl").exists() else _nothing():
        with AirflowServices(settings, say=_say) as airflow:
            _say(f"Airflow UI on {airflow.url} (component logs in {airflow.log_dir}); Ctrl-C stops it. "
                 "The refresh DAG starts paused: unpause it to start its schedule.")
            try:
                airflow.supervise()
            except KeyboardInterrupt:
                _say("stopping Airflow …")
    return 0


@contextmanager
def _nothing():
    yield None


def _progress(dag_id: str, api, run_id: str):
    done: set[str] = set()

    def show(states: dict[str, str]) -> None:
        for task_id, state in states.items():
            if state in ("success", "failed", "upstream_failed", "skipped") and task_id not in done:
                done.add(task_id)
                detail = ""
                if state == "success":
                    try:
                        detail = _short(api.xcom(dag_id, run_id, task_id))
                    except RuntimeError:
                        pass
                _say(f"  {dag_id}.{task_id}: {state} {detail}")
        running = [t for t, s in states.items() if s in ("running", "queued", "scheduled")]
        if running:
            _say(f"  {dag_id}: running {', '.join(running)} ({len(done)}/{len(states)} done)")

    return show


def _short(value) -> str:
    if isinstance(value, list):
        return f"({len(value)} mapped)"
    if isinstance(value, dict):
        keep = {k: v for k, v in value.items() if not isinstance(v, (dict, list)) and k not in ("table",)}
        return str(keep)[:160]
    return str(value)[:160]


def _wait_asset_run(api, dag_id: str, after: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in api.runs(dag_id):
            if run["run_type"] == "asset_triggered" and (run.get("queued_at") or "") >= after:
                return run["dag_run_id"]
        time.sleep(2)
    raise TimeoutError(f"no asset-triggered {dag_id} run appeared in {timeout:.0f}s")


def run_demo(settings: Settings, *, n_posts: int | None = None, scale: str = "demo", test_songs: int = 100,
             fresh: bool = False) -> int:
    from image2song import stages
    from image2song.airflow_env import AirflowApi, AirflowServices, airflow_command, stop_on_sigterm

    started = time.monotonic()
    # During the demo the refresh DAG runs when we trigger it, not on its schedule.
    settings = dataclasses.replace(settings, refresh_schedule="none")
    if fresh and settings.home.exists():
        corpus = settings.demo_corpus
        for child in settings.home.iterdir():
            if child != corpus:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    settings.home.mkdir(parents=True, exist_ok=True)
    ensure_corpus(settings, n_posts, scale)
    _say("preparing the catalog and Airflow's metadata database …")
    stages.migrate(settings)
    airflow_command(settings, ["db", "migrate"], capture=True)
    stop_on_sigterm()
    with demo_world(settings), AirflowServices(settings, say=_say) as airflow:
        _say(f"Airflow is up on {airflow.url} (component logs in {airflow.log_dir})")
        api = AirflowApi(airflow.url)
        api.wait_for_dags(["refresh", "train"])
        for dag_id in ("refresh", "train"):
            api.unpause(dag_id)
        refresh_id = api.trigger("refresh", {"test_songs": test_songs})
        _say(f"triggered refresh ({refresh_id})")
        refresh = api.wait_for_run("refresh", refresh_id, timeout=REFRESH_TIMEOUT,
                                   on_progress=_progress("refresh", api, refresh_id))
        if refresh["state"] != "success":
            _say(f"refresh {refresh['state']}: see the task logs in the Airflow UI (`image2song airflow ui`)")
            return 1
        states = api.task_states("refresh", refresh_id)
        if states.get("build_snapshot") == "skipped":
            _say("the approved data are unchanged since the last snapshot: training on it again")
            train_id = api.trigger("train")
        else:
            _say("snapshot published; waiting for the train run its Asset triggers …")
            train_id = _wait_asset_run(api, "train", refresh["queued_at"], timeout=120)
        train = api.wait_for_run("train", train_id, timeout=TRAIN_TIMEOUT,
                                 on_progress=_progress("train", api, train_id))
        if train["state"] != "success":
            _say(f"train {train['state']}: see the task logs in the Airflow UI (`image2song airflow ui`)")
            return 1
        summary = api.xcom("train", train_id, "report")
    pending = stages.enqueue_review(settings)["pending"]
    minutes = (time.monotonic() - started) / 60
    print(f"""
image2song demo finished in {minutes:.1f} min.

  snapshot   {summary['snapshot']}
  models     {', '.join(s['model_dir'] for s in summary['splits'].values())}
  report     {summary['report']}
  catalog    {settings.db_url}

{summary['table']}

{pending} lyrics wait for a curator; they join a later snapshot once decided.
  See them:      image2song review list
  Decide one:    image2song review decide ITEM accept
  Airflow UI:    image2song airflow ui   (shows both DAGs and these runs)
""")
    return 0
