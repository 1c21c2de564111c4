"""The DAG files: they import cleanly, parse fast, and do no heavy work at import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from image2song.airflow_env import airflow_environment
from image2song.settings import PROJECT_ROOT, Settings

PROBE = r"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
timings = {}
for name in ("refresh", "train"):
    t0 = time.perf_counter()
    bag = DagBag(dag_folder=f"dags/{name}.py")
    timings[name] = time.perf_counter() - t0
    assert not bag.import_errors, bag.import_errors
dags = DagBag(dag_folder="dags")
# The bare ``modeling`` package is cheap by contract (names only, e.g. the baselines a DAG param lists);
# none of its modules may load.
heavy = sorted(m for m in sys.modules if m.startswith("modeling.")
               or m in ("torch", "torchvision", "gensim", "crawlers", "curation", "requests", "bs4"))
guards = {d: {t.task_id: {"retries": t.retries, "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                          "pool": t.pool, "on_failure": bool(t.on_failure_callback)} for t in dags.dags[d].tasks}
          for d in dags.dag_ids}
runs = {d: {"timeout": dags.dags[d].dagrun_timeout.total_seconds() if dags.dags[d].dagrun_timeout else None,
            "deadlines": len(dags.dags[d].deadline or []), "paused_at_creation": dags.dags[d].is_paused_upon_creation}
        for d in dags.dag_ids}
try:
    dags.dags["train"].params.get_param("splits").resolve(["a", "a"])
    duplicate_splits = "accepted"
except Exception as error:
    duplicate_splits = type(error).__name__
print(json.dumps({"errors": {k: v[-300:] for k, v in dags.import_errors.items()}, "dags": sorted(dags.dag_ids),
                  "timings": timings, "heavy": heavy, "guards": guards, "runs": runs,
                  "duplicate_splits": duplicate_splits,
                  "tasks": {d: sorted(dags.dags[d].task_ids) for d in dags.dag_ids}}))
"""


def probe(tmp_path) -> dict:
    settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path)})
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=PROJECT_ROOT, env=airflow_environment(settings),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dags_import_cheaply(tmp_path):
    found = probe(tmp_path)
    assert found["errors"] == {}
    assert found["dags"] == ["refresh", "train"]
    assert found["heavy"] == [], f"DAG files imported heavy modules at parse time: {found['heavy']}"
    # The first file pays for importing the Airflow SDK; each DAG's own parse is well under a second.
    assert found["timings"]["train"] < 1.0, found["timings"]
    assert found["tasks"]["refresh"] == ["build_snapshot", "crawl_posts", "discover_posts", "enqueue_review",
                                         "fetch_images", "fetch_lyrics", "filter_lyrics", "migrate_catalog",
                                         "plan_images", "reconcile_objects"]
    assert found["tasks"]["train"] == ["choose_snapshot", "evaluate_models", "experiments", "extract_tags", "report",
                                       "train_models"]


PARAMS = r"""
import copy, json
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder="dags/train.py").dags["train"]
verdicts = {}
for name, conf in json.loads(__import__("sys").argv[1]).items():
    params = copy.deepcopy(dag.params)
    try:
        params.update(conf)
        params.validate()
        verdicts[name] = "ok"
    except Exception as error:
        verdicts[name] = type(error).__name__
print(json.dumps(verdicts))
"""


def test_train_params_are_validated(tmp_path):
    settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path)})
    confs = {"defaults": {}, "chosen": {"model": "bilstm", "loss": "margin", "tag_vocabularies": ["obj+attr"],
                                        "epochs": 3, "bilstm_epochs": 2, "seed": 7, "baselines": ["conse", "neighbours"],
                                        "word_vectors": "x.bin"},
             "baselines everywhere": {"tag_vocabularies": ["attr", "imagenet"], "baselines_on": "every"},
             "bad loss": {"loss": "hinge"}, "bad model": {"model": "transformer"}, "bad vocabulary": {"tag_vocabularies": ["colors"]},
             "bad repeated vocabulary": {"tag_vocabularies": ["obj", "obj"]}, "bad no vocabulary": {"tag_vocabularies": []},
             "bad baselines_on": {"baselines_on": "some"},
             "bad baseline": {"baselines": ["bm25"]}, "zero epochs": {"epochs": 0}, "zero bilstm epochs": {"bilstm_epochs": 0}}
    result = subprocess.run([sys.executable, "-c", PARAMS, json.dumps(confs)], cwd=PROJECT_ROOT,
                            env=airflow_environment(settings), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts = json.loads(result.stdout.strip().splitlines()[-1])
    assert verdicts["defaults"] == verdicts["chosen"] == verdicts["baselines everywhere"] == "ok"
    assert all(v == "ParamValidationError" for k, v in verdicts.items() if k.startswith(("bad", "zero"))), verdicts


DEFAULT_PARAMS = r"""
import json
from airflow.dag_processing.dagbag import DagBag
params = DagBag(dag_folder="dags/train.py").dags["train"].params
print(json.dumps({k: params[k] for k in ("tag_vocabularies", "baselines_on")}))
"""


def test_the_train_dag_reports_the_paper_model_on_the_paper_vocabularies_by_default(tmp_path):
    from image2song import stages

    settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path)})
    result = subprocess.run([sys.executable, "-c", DEFAULT_PARAMS], cwd=PROJECT_ROOT, env=airflow_environment(settings),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    defaults = json.loads(result.stdout.strip().splitlines()[-1])
    assert defaults == {"tag_vocabularies": ["obj+attr", "obj", "attr"], "baselines_on": "first"}
    # The CLI takes the same defaults; every model on the first vocabulary, the paper's model alone on the others.
    p = stages.train_params(settings, {})
    assert {k: p[k] for k in defaults} == defaults
    assert [stages.experiment_models(p, v) for v in ("obj", "attr")] == [["paper"], ["paper"]]
    assert stages.experiment_models(p, "obj+attr")[:2] == ["paper", "permuted"] and "hybrid" in stages.experiment_models(p, "obj+attr")
    every = stages.train_params(settings, {"baselines_on": "every", "baselines": ["conse"]})
    assert stages.experiment_models(every, "attr") == ["paper", "permuted", "conse"]
    assert "hybrid" not in stages.experiment_models(stages.train_params(settings, {"baselines": ["control"]}), "obj+attr")
    for bad in ({"tag_vocabularies": ["obj", "obj"]}, {"baselines_on": "some"}, {"tag_vocabularies": []},
                {"baselines": ["bm25"]}):
        with pytest.raises(ValueError):
            stages.train_params(settings, bad)


HEAVY = {"fetch_images": "heavy_cpu", "build_snapshot": "heavy_cpu", "extract_tags": "accelerator",
         "train_models": "accelerator", "evaluate_models": "heavy_cpu"}


def test_every_task_has_retries_a_timeout_and_a_failure_callback(tmp_path):
    found = probe(tmp_path)
    for dag_id, tasks in found["guards"].items():
        for task_id, guard in tasks.items():
            assert guard["retries"] >= 1 and guard["timeout"] and guard["on_failure"], (dag_id, task_id, guard)
            assert guard["pool"] == HEAVY.get(task_id, "default_pool"), (dag_id, task_id, guard)
    # Network-bound tasks retry more than local ones.
    assert found["guards"]["refresh"]["fetch_lyrics"]["retries"] > found["guards"]["refresh"]["filter_lyrics"]["retries"]
    for dag_id, run in found["runs"].items():
        assert run["timeout"] and run["deadlines"] == 1, (dag_id, run)
    # The scheduled DAG waits for an operator: no run on Airflow's first start.
    assert found["runs"]["refresh"]["paused_at_creation"] is True
    # A split asked twice is refused, not trained twice into one folder.
    assert found["duplicate_splits"] == "ParamValidationError"
