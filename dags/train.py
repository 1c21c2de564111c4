"""train: on a new snapshot (or triggered with params): extract tags (in the `accelerator` pool; images
already in the tag store are not tagged again) → train per tag vocabulary and split (the paper's model, its
baselines and the hybrid on the first vocabulary, the paper's model alone on the others) → evaluate →
report (emits the model Asset with the headline figures).

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
        "model": Param("bilstm+attention", enum=["bilstm+attention", "bilstm"],
                       description="the paper's model with or without its tag attention"),
        "loss": Param("mse", enum=["mse", "cosine", "margin"], description="the paper's model's loss"),
        "tag_vocabularies": Param(list(stages.TRAIN_DEFAULTS["tag_vocabularies"]), type="array", minItems=1,
                                  uniqueItems=True, items={"enum": ["obj", "attr", "obj+attr", "imagenet"]},
                                  description="image tags, one experiment each per split; the first gets every model "
                                              "and baseline, the others the paper's model alone (the paper's Table 2: "
                                              "obj, attr, obj+attr), unless baselines_on is every"),
        "baselines_on": Param(stages.TRAIN_DEFAULTS["baselines_on"], enum=list(stages.BASELINES_ON),
                              description="train the baselines, the permuted-lyrics control and the hybrid on the "
                                          "first tag vocabulary only (first) or on every one (every)"),
        "word_vectors": Param(None, type=["null", "string"],
                              description="glove-6b-50d, word2vec-english, word2vec-snapshot or a word2vec file "
                                          "(empty: IMAGE2SONG_WORD_VECTORS)"),
        "epochs": Param(30, type="integer", minimum=1, maximum=500, description="at most this many epochs (early stopping)"),
        "bilstm_epochs": Param(None, type=["null", "integer"], minimum=1, maximum=500,
                               description="at most this many epochs for the BiLSTM models (the paper's, the permuted "
                                           "control, the Attentive Reader); empty: epochs"),
        "seed": Param(None, type=["null", "integer"], description="training seed (empty: IMAGE2SONG_SEED)"),
        "baselines": Param(list(stages.BASELINES), type="array", uniqueItems=True, items={"enum": list(stages.BASELINES)},
                           description="baselines to train and report beside the paper's model (neighbours adds the "
                                       "hybrid)"),
        "device": Param("auto", type="string", pattern="^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="where images are tagged and models trained: auto (a GPU when present), cpu, "
                                    "cuda or cuda:N"),
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
        return stages.extract_tags(Settings.from_env(), snapshot, vocabulary=params["tag_vocabularies"][0],
                                   device=params["device"])

    @task(**task_args(**LOCAL, timeout=minutes(10)))
    def experiments(params: dict | None = None) -> list[dict]:
        return [{"vocabulary": v, "split": s} for v in params["tag_vocabularies"] for s in params["splits"]]

    @task(**task_args(**LOCAL, timeout=hours(6), pool=ACCELERATOR_POOL, queue=GPU_QUEUE))
    def train_models(experiment: dict, snapshot: str, tags: dict, params: dict | None = None) -> dict:
        return stages.train(Settings.from_env(), snapshot, tags["tags_paths"], split=experiment["split"],
                            vocabulary=experiment["vocabulary"], params=params, device=params["device"],
                            run_id=get_current_context()["run_id"])

    @task(**task_args(**LOCAL, timeout=hours(1), pool=HEAVY_CPU_POOL))
    def evaluate_models(model: dict) -> dict:
        return stages.evaluate(Settings.from_env(), model["experiment_dir"])

    @task(outlets=[MODEL], **task_args(**LOCAL, timeout=minutes(30)))
    def report(evaluations: list[dict], snapshot: str) -> dict:
        summary = stages.report(Settings.from_env(), list(evaluations), snapshot)
        get_current_context()["outlet_events"][MODEL].extra = {
            k: summary[k] for k in ("snapshot", "run_key", "run_dir", "report", "headline")}
        return summary

    snapshot = choose_snapshot()
    tags = extract_tags(snapshot)
    models = train_models.partial(snapshot=snapshot, tags=tags).expand(experiment=experiments())
    report(evaluate_models.expand(model=models), snapshot)


train()
