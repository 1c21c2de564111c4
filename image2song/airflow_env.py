"""Running Airflow on the embedded default: the environment, the `airflow` command, a standalone
server (scheduler, dag-processor, api-server, triggerer) and the REST calls the demo makes."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import requests

from image2song.settings import PROJECT_ROOT, Settings

DEFAULT_PORT = 8080


def airflow_environment(settings: Settings, port: int | None = None) -> dict[str, str]:
    """os.environ plus what Airflow and our tasks need; the user never exports anything by hand."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env()}
    # Airflow's components must share one signing secret; a secret per state folder, made once.
    secret_file = settings.airflow_home / "secret_key"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    secret = secret_file.read_text().strip()
    env.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secret)
    env.setdefault("AIRFLOW__API__SECRET_KEY", secret)
    env.update({
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW_CONFIG": os.environ.get("AIRFLOW_CONFIG", str(PROJECT_ROOT / "airflow.cfg")),
        "IMAGE2SONG_ROOT": str(PROJECT_ROOT),
        "IMAGE2SONG_AIRFLOW_PORT": str(port or os.environ.get("IMAGE2SONG_AIRFLOW_PORT", DEFAULT_PORT)),
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        # `airflow standalone` starts its components by name: they must be this environment's.
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    })
    return env


def airflow_command(settings: Settings, args: list[str], *, check: bool = True, capture: bool = False,
                    port: int | None = None) -> subprocess.CompletedProcess:
    """Run ``airflow <args>`` with our environment."""
    return subprocess.run([sys.executable, "-m", "airflow", *args], env=airflow_environment(settings, port),
                          check=check, text=True, capture_output=capture)


# Airflow pools the DAGs use: a task in a pool that does not exist never starts.
POOLS = {"accelerator": (1, "image tagging on the GPU (or all CPU cores): one tagging job at a time")}

_ENSURE_POOLS = """
import json, sys
from airflow.models.pool import Pool
for name, (slots, description) in json.loads(sys.argv[1]).items():
    if Pool.get_pool(name) is None:
        Pool.create_or_update_pool(name, slots, description, include_deferred=False)
        print(f"created Airflow pool {name} ({slots} slot(s))")
"""


def ensure_pools(settings: Settings, pools: dict[str, tuple[int, str]] | None = None) -> None:
    """Create the pools the DAGs need when missing (after ``airflow db migrate``); slots changed by an
    operator (``airflow pools set accelerator 2 …``) are left as they are."""
    import json

    subprocess.run([sys.executable, "-c", _ENSURE_POOLS, json.dumps(pools or POOLS)],
                   env=airflow_environment(settings), check=True)


def _restore_sigint() -> None:
    # A shell starting us in the background makes children ignore SIGINT; Airflow stops on SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Standalone:
    """``airflow standalone`` as a child process, logging to <airflow home>/standalone.log."""

    def __init__(self, settings: Settings, port: int | None = None):
        self.settings = settings
        self.env = airflow_environment(settings, port)
        self.port = int(self.env["IMAGE2SONG_AIRFLOW_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = settings.airflow_home / "standalone.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "Standalone":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "standalone"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_restore_sigint, start_new_session=True)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"airflow standalone exited with {self.process.returncode}; see {self.log_path}")
            try:
                health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=2).json()
                if health.get("scheduler", {}).get("status") == "healthy":
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow did not become healthy in {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 45) -> None:
        """SIGINT to `airflow standalone`, which stops its components; then whatever is left in its
        process group is killed, so nothing outlives the demo or a test."""
        if not self.process:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def __enter__(self) -> "Standalone":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class AirflowApi:
    """The few REST v2 calls the CLI needs (the embedded default makes every local caller an admin)."""

    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/") + "/api/v2"
        self.session = requests.Session()

    def _call(self, method: str, path: str, **kwargs):
        response = self.session.request(method, self.base + path, timeout=30, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"Airflow {method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            errors = self._call("GET", "/importErrors").get("import_errors", [])
            if errors:
                raise RuntimeError("DAG import errors:\n" + "\n".join(e["stack_trace"][-800:] for e in errors))
            known = {d["dag_id"] for d in self._call("GET", "/dags", params={"limit": 100})["dags"]}
            if set(dag_ids) <= known:
                return
            time.sleep(2)
        raise TimeoutError(f"DAGs {dag_ids} did not appear in {timeout:.0f}s")

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self._call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict]:
        return self._call("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-start_date", "limit": 20})["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        items = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in items}

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        entry = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
        return entry["value"]

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float, on_progress=None) -> dict:
        """Poll until the run ends; ``on_progress(states)`` is called when task states change."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            states = self.task_states(dag_id, run_id)
            if on_progress and states != last:
                on_progress(states)
                last = states
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(2)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish in {timeout:.0f}s")
