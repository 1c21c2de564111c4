"""The DAG files: they import cleanly, parse fast, and do no heavy work at import."""

from __future__ import annotations

import json
import subprocess
import sys

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
heavy = sorted(m for m in ("torch", "torchvision", "gensim", "modeling", "crawlers", "curation", "requests", "bs4")
               if m in sys.modules)
print(json.dumps({"errors": {k: v[-300:] for k, v in dags.import_errors.items()}, "dags": sorted(dags.dag_ids),
                  "timings": timings, "heavy": heavy,
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
                                         "plan_images"]
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
                                        "epochs": 3, "seed": 7, "baselines": ["conse"], "word_vectors": "x.bin"},
             "bad loss": {"loss": "hinge"}, "bad model": {"model": "transformer"}, "bad vocabulary": {"tag_vocabularies": ["colors"]},
             "bad baseline": {"baselines": ["bm25"]}, "zero epochs": {"epochs": 0}}
    result = subprocess.run([sys.executable, "-c", PARAMS, json.dumps(confs)], cwd=PROJECT_ROOT,
                            env=airflow_environment(settings), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts = json.loads(result.stdout.strip().splitlines()[-1])
    assert verdicts["defaults"] == verdicts["chosen"] == "ok"
    assert all(v == "ParamValidationError" for k, v in verdicts.items() if k.startswith(("bad", "zero"))), verdicts
