"""train: on a new snapshot (or triggered with params): extract tags → train the paper's model and its baselines
per tag vocabulary and split → evaluate → report (emits the model Asset with the headline figures).

Wiring only: each task calls one stage of image2song.stages; heavy imports happen inside the stages.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from image2song.assets import MODEL, SNAPSHOT
from image2song import stages
from image2song.settings import Settings


@dag(
    dag_id="train",
    schedule=[SNAPSHOT],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["image2song"],
    params={
        "snapshot": Param(None, type=["null", "string"], description="snapshot folder (the triggering or latest one when empty)"),
        "splits": Param(["a", "b"], type="array", items={"enum": ["a", "b"]}, minItems=1),
        "model": Param("bilstm+attention", enum=["bilstm+attention", "bilstm"],
                       description="the paper's model with or without its tag attention"),
        "loss": Param("mse", enum=["mse", "cosine", "margin"], description="the paper's model's loss"),
        "tag_vocabularies": Param(None, type=["null", "array"], items={"enum": ["obj", "attr", "obj+attr", "imagenet"]},
                                  description="tag vocabularies to train on (empty: every one the tags stage made)"),
        "word_vectors": Param(None, type=["null", "string"],
                              description="glove-6b-50d or a word2vec file path (empty: IMAGE2SONG_WORD_VECTORS)"),
        "epochs": Param(30, type="integer", minimum=1, maximum=500, description="at most this many epochs (early stopping)"),
        "seed": Param(None, type=["null", "integer"], description="training seed (empty: IMAGE2SONG_SEED)"),
        "baselines": Param(["attentive-reader", "psi", "minilm", "conse", "control", "popularity"], type="array",
                           items={"enum": ["attentive-reader", "psi", "minilm", "conse", "control", "popularity"]},
                           description="baselines to train and report beside the paper's model (control adds the hybrid)"),
    },
    doc_md=__doc__,
)
def train():
    @task
    def choose_snapshot(params: dict | None = None) -> str:
        events = get_current_context().get("triggering_asset_events") or {}
        for asset_events in events.values():
            if asset_events:
                return asset_events[-1].extra["path"]
        return stages.resolve_snapshot(Settings.from_env(), params["snapshot"])

    @task
    def extract_tags(snapshot: str) -> dict:
        return stages.extract_tags(Settings.from_env(), snapshot)

    @task
    def experiments(tags: dict, params: dict | None = None) -> list[dict]:
        vocabularies = params["tag_vocabularies"] or sorted(tags["tags_paths"])
        return [{"vocabulary": v, "split": s} for v in vocabularies for s in params["splits"]]

    @task
    def train_models(experiment: dict, snapshot: str, tags: dict, params: dict | None = None) -> dict:
        return stages.train(Settings.from_env(), snapshot, tags["tags_paths"], split=experiment["split"],
                            vocabulary=experiment["vocabulary"], params=params,
                            run_id=get_current_context()["run_id"])

    @task
    def evaluate_models(model: dict) -> dict:
        return stages.evaluate(Settings.from_env(), model["experiment_dir"])

    @task(outlets=[MODEL])
    def report(evaluations: list[dict], snapshot: str) -> dict:
        summary = stages.report(Settings.from_env(), list(evaluations), snapshot)
        get_current_context()["outlet_events"][MODEL].extra = {
            k: summary[k] for k in ("snapshot", "run_key", "run_dir", "report", "headline")}
        return summary

    snapshot = choose_snapshot()
    tags = extract_tags(snapshot)
    models = train_models.partial(snapshot=snapshot, tags=tags).expand(experiment=experiments(tags))
    report(evaluate_models.expand(model=models), snapshot)


train()
