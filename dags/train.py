"""train: on a new snapshot (or triggered with params): extract tags (in the `accelerator` pool; images
already in the tag store are not tagged again) → train per split → evaluate → report (emits the model Asset).

Wiring only: each task calls one stage of image2song.stages; heavy imports happen inside the stages.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from image2song import stages
from image2song.assets import MODEL, SNAPSHOT
from image2song.safeguards import ACCELERATOR_POOL, GPU_QUEUE, HEAVY_CPU_POOL, LOCAL, run_deadline, task_args
from image2song.settings import Settings

minutes, hours = (lambda n: timedelta(minutes=n)), (lambda n: timedelta(hours=n))


@dag(
    dag_id="train",
    schedule=[SNAPSHOT],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    dagrun_timeout=hours(24),
    deadline=run_deadline(hours(12)),
    tags=["image2song"],
    params={
        "snapshot": Param(None, type=["null", "string"], description="snapshot folder (the triggering or latest one when empty)"),
        "splits": Param(["a", "b"], type="array", items={"enum": ["a", "b"]}, minItems=1, uniqueItems=True),
        "epochs": Param(5, type="integer", minimum=1, maximum=500),
        "attention": Param(False, type="boolean", description="the paper's tag attention"),
        "tag_vocabulary": Param("obj+attr", enum=["obj", "attr", "obj+attr", "imagenet"],
                                description="image tags the model sees (the paper's Table 2: obj, attr, obj+attr)"),
        "device": Param("auto", type="string", pattern="^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="where images are tagged: auto (a GPU when present), cpu, cuda or cuda:N"),
    },
    doc_md=__doc__,
)
def train():
    @task(**task_args(**LOCAL, timeout=minutes(10)))
    def choose_snapshot(params: dict | None = None) -> str:
        events = get_current_context().get("triggering_asset_events") or {}
        for asset_events in events.values():
            if asset_events:
                return asset_events[-1].extra["path"]
        return stages.resolve_snapshot(Settings.from_env(), params["snapshot"])

    @task(**task_args(**LOCAL, timeout=hours(4), pool=ACCELERATOR_POOL, queue=GPU_QUEUE))
    def extract_tags(snapshot: str, params: dict | None = None) -> dict:
        return stages.extract_tags(Settings.from_env(), snapshot, vocabulary=params["tag_vocabulary"],
                                   device=params["device"])

    @task(**task_args(**LOCAL, timeout=minutes(10)))
    def splits(params: dict | None = None) -> list[str]:
        return list(params["splits"])

    @task(**task_args(**LOCAL, timeout=hours(6), pool=ACCELERATOR_POOL, queue=GPU_QUEUE))
    def train_model(split: str, snapshot: str, tags: dict, params: dict | None = None) -> dict:
        return stages.train(Settings.from_env(), snapshot, tags["tags_path"], split=split,
                            epochs=params["epochs"], attention=params["attention"])

    @task(**task_args(**LOCAL, timeout=hours(1), pool=HEAVY_CPU_POOL))
    def evaluate_model(model: dict, snapshot: str, tags: dict) -> dict:
        return stages.evaluate(Settings.from_env(), model["model_dir"], snapshot, tags["tags_path"])

    @task(outlets=[MODEL], **task_args(**LOCAL, timeout=minutes(30)))
    def report(evaluations: list[dict], snapshot: str) -> dict:
        summary = stages.report(Settings.from_env(), list(evaluations), snapshot)
        get_current_context()["outlet_events"][MODEL].extra = summary
        return summary

    snapshot = choose_snapshot()
    tags = extract_tags(snapshot)
    models = train_model.partial(snapshot=snapshot, tags=tags).expand(split=splits())
    evaluations = evaluate_model.partial(snapshot=snapshot, tags=tags).expand(model=models)
    report(evaluations, snapshot)


train()
