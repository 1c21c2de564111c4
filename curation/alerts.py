"""Operator alerts kept in the catalog (``run_alerts``): what failed for good, and runs past their
deadline. Airflow's callbacks write them; anyone can list them (``image2song airflow alerts``)."""

from __future__ import annotations

from sqlalchemy import select

from curation.catalog import RunAlert, session_scope


def record_alert(db_url: str, kind: str, dag_id: str, run_id: str, message: str, *, task_id: str | None = None,
                 map_index: int | None = None, try_number: int | None = None) -> int:
    with session_scope(db_url) as session:
        alert = RunAlert(kind=kind, dag_id=dag_id, run_id=run_id, task_id=task_id,
                         map_index=None if map_index is None or map_index < 0 else map_index,
                         try_number=try_number, message=message[:4000])
        session.add(alert)
        session.flush()
        return alert.id


def recent_alerts(db_url: str, limit: int = 20) -> list[dict]:
    with session_scope(db_url) as session:
        rows = session.scalars(select(RunAlert).order_by(RunAlert.id.desc()).limit(limit))
        return [{"id": a.id, "kind": a.kind, "dag_id": a.dag_id, "run_id": a.run_id, "task_id": a.task_id,
                 "map_index": a.map_index, "try_number": a.try_number, "message": a.message,
                 "at": a.created_at.isoformat()} for a in rows]
