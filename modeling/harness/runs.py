"""Run folders: ``<runs root>/<snapshot>/<run key>/`` with ``run.json`` (parameters, time) and one
experiment per tag vocabulary and split, ``<vocabulary>/split-<a|b>/`` (models, ``training.json``,
``evaluation.json``, ``per_song.csv``). The run key is the Airflow run id where there is one, else a
hash of the parameters (``p-`` + 10 hex digits), so runs with other parameters never overwrite each other
and a re-run with the same parameters resumes in the same folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path


def run_key(params: dict, run_id: str | None = None) -> str:
    if run_id:
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", run_id).strip("_")
    return "p-" + hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_folder(runs_root: str | os.PathLike, snapshot: str, key: str, params: dict | None = None) -> Path:
    """The run's folder, created with its ``run.json`` on first use."""
    path = Path(runs_root) / snapshot / key
    path.mkdir(parents=True, exist_ok=True)
    meta = path / "run.json"
    if params is not None and not meta.exists():
        meta.write_text(json.dumps({"run_key": key, "snapshot": snapshot, "params": params,
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2, default=str))
    return path


def experiment_folder(run_dir: str | os.PathLike, vocabulary: str, split: str) -> Path:
    return Path(run_dir) / vocabulary / f"split-{split}"


def snapshot_runs(runs_root: str | os.PathLike, snapshot: str) -> list[tuple[str, Path]]:
    """Every run of a snapshot, oldest first (by the creation time in ``run.json``)."""
    found = []
    for meta in (Path(runs_root) / snapshot).glob("*/run.json"):
        found.append((json.loads(meta.read_text()).get("created", ""), meta.parent.name, meta.parent))
    return [(key, path) for _, key, path in sorted(found)]
