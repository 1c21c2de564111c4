"""Airflow's safeguards for our DAGs, in one place: retries with exponential backoff, execution
timeouts, pools, failure callbacks and run deadlines. Cheap to import (the DAG files use it at parse)."""

from __future__ import annotations

import os
from datetime import timedelta

# Heavy tasks take a slot of a pool; `image2song airflow …` creates the pools before the scheduler
# starts (a task in a pool that does not exist never runs). Slots: pool name → (slots, description).
ACCELERATOR_POOL = "accelerator"
HEAVY_CPU_POOL = "heavy_cpu"
# Celery workers on GPU hosts listen on this queue (`image2song airflow cluster --queues gpu`); the
# LocalExecutor ignores queues.
GPU_QUEUE = os.environ.get("IMAGE2SONG_GPU_QUEUE", "gpu")


def pools() -> dict[str, tuple[int, str]]:
    cores = os.cpu_count() or 1
    return {
        ACCELERATOR_POOL: (int(os.environ.get("IMAGE2SONG_ACCELERATOR_SLOTS", "1")),
                           "tasks that use the GPU (tagging, training): one per accelerator"),
        HEAVY_CPU_POOL: (int(os.environ.get("IMAGE2SONG_HEAVY_CPU_SLOTS", str(max(1, cores // 2)))),
                         "CPU-heavy tasks (image fetch and decode, snapshots, evaluation)"),
    }


def _retry_delay() -> timedelta:
    # Tests and the scale-out check shorten it; production keeps the default.
    return timedelta(seconds=float(os.environ.get("IMAGE2SONG_RETRY_DELAY_SECONDS", "30")))


def task_args(*, retries: int, timeout: timedelta, pool: str | None = None, queue: str | None = None) -> dict:
    """Arguments for ``@task(...)``: retries back off exponentially (30 s, 1 min, 2 min … up to 10 min)."""
    from image2song import alerts

    args = {"retries": retries, "retry_delay": _retry_delay(), "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=10), "execution_timeout": timeout,
            "on_failure_callback": alerts.task_failed, "on_retry_callback": alerts.task_retried}
    if pool:
        args["pool"] = pool
    if queue:
        args["queue"] = queue
    return args


# Network-bound tasks retry more: a host that is down for a few minutes is the common case.
NETWORK = {"retries": 3}
LOCAL = {"retries": 1}


def run_deadline(after: timedelta):
    """A DAG-level deadline alert: past ``after`` from queueing, the run is reported (log, catalog,
    webhook) while it goes on; ``dagrun_timeout`` is the hard stop."""
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=after,
                         callback=AsyncCallback("image2song.alerts.deadline_missed"))
