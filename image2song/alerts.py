"""Airflow callbacks: a task that failed for good, a retry, a run past its deadline. Each writes one
clear log line and (for failures and deadlines) a row in the catalog's ``run_alerts``; set
IMAGE2SONG_ALERT_WEBHOOK to also POST it as JSON ``{"text": …}`` (Slack, Mattermost, Teams and most
chat tools accept that; an e-mail relay can too). An alert that cannot be delivered never fails a task."""

from __future__ import annotations

import json
import logging
import urllib.request

from image2song.settings import Settings

log = logging.getLogger("image2song.alerts")


def _deliver(settings: Settings, kind: str, dag_id: str, run_id: str, message: str, **where) -> None:
    try:
        from curation.alerts import record_alert

        record_alert(settings.db_url, kind, dag_id, run_id, message, **where)
    except Exception:  # the catalog may be what is down
        log.exception("could not record the alert in the catalog")
    if settings.alert_webhook:
        try:
            request = urllib.request.Request(settings.alert_webhook, data=json.dumps({"text": message}).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            urllib.request.urlopen(request, timeout=10).close()
        except Exception:
            log.exception("could not post the alert to IMAGE2SONG_ALERT_WEBHOOK")


def task_failed(context) -> None:
    """``on_failure_callback``: the task failed and has no retry left."""
    ti = context["ti"]
    error = context.get("exception")
    where = f"{ti.dag_id}.{ti.task_id}" + (f"[{ti.map_index}]" if ti.map_index is not None and ti.map_index >= 0 else "")
    message = (f"image2song: {where} failed for good after {ti.try_number} tries in run {ti.run_id}: "
               f"{type(error).__name__ + ': ' if error else ''}{error or 'no error given (killed or timed out?)'}")
    log.error(message)
    _deliver(Settings.from_env(), "task_failed", ti.dag_id, ti.run_id, message, task_id=ti.task_id,
             map_index=ti.map_index, try_number=ti.try_number)


def task_retried(context) -> None:
    """``on_retry_callback``: a line in the log only; the retry may well succeed."""
    ti = context["ti"]
    log.warning("image2song: %s.%s try %s failed (%s); Airflow retries it", ti.dag_id, ti.task_id, ti.try_number,
                context.get("exception"))


async def deadline_missed(context=None, **kwargs) -> None:
    """A ``DeadlineAlert`` callback (runs in the triggerer): the run is still going past its deadline."""
    run = (context or {}).get("dag_run") or {}
    deadline = (context or {}).get("deadline") or {}
    dag_id, run_id = run.get("dag_id", kwargs.get("dag_id", "?")), run.get("dag_run_id", "?")
    message = (f"image2song: {dag_id} run {run_id} is past its deadline ({deadline.get('deadline_time')}) "
               f"and still {run.get('state', 'running')}: look at its running tasks")
    log.error(message)
    import asyncio

    await asyncio.to_thread(_deliver, Settings.from_env(), "deadline_missed", dag_id, run_id, message)
