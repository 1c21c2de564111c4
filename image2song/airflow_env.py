"""Running Airflow: the environment, the `airflow` command, the components (api-server, scheduler,
dag-processor, triggerer, Celery workers) as supervised children, the pools, the scale-out configuration
and the REST calls the CLI makes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
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
                    port: int | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``airflow <args>`` with our environment, in its own process group: SIGINT/SIGTERM to us are
    passed on, and whatever it started (executor workers, log servers) is gone when this returns."""
    env = env or airflow_environment(settings, port)
    process = subprocess.Popen([sys.executable, "-m", "airflow", *args], env=env, text=True,
                               stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
                               preexec_fn=_restore_sigint, start_new_session=True)

    def forward(signum, _frame):
        _signal_group(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        stdout, stderr = process.communicate()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _signal_group(process.pid, signal.SIGKILL)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check and result.returncode:
        raise subprocess.CalledProcessError(result.returncode, process.args, stdout, stderr)
    return result


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


_ENSURE_POOLS = """
import json, sys
from airflow.models.pool import Pool
for name, (slots, description) in json.loads(sys.argv[1]).items():
    if Pool.get_pool(name) is None:
        Pool.create_or_update_pool(name, slots, description, include_deferred=False)
        print(f"created Airflow pool {name} ({slots} slot(s))")
"""


def _restore_sigint() -> None:
    # A shell starting us in the background makes children ignore SIGINT; Airflow stops on SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ensure_pools(settings: Settings, env: dict[str, str] | None = None) -> None:
    """Create the pools our DAGs use (``image2song.safeguards.pools``) when missing, after ``airflow db
    migrate`` and before a scheduler runs: a task in a pool that does not exist never starts. Slots an
    operator changed (``airflow pools set accelerator 2 …``) are left as they are."""
    from image2song.safeguards import pools

    subprocess.run([sys.executable, "-c", _ENSURE_POOLS, json.dumps(pools())],
                   env=env or airflow_environment(settings), check=True, start_new_session=True)


def cluster_environment(settings: Settings, *, metadata_url: str, broker_url: str, port: int | None = None,
                        admin_password: str | None = None) -> dict[str, str]:
    """The scale-out configuration on top of airflow.cfg: Airflow's metadata on PostgreSQL (the sync
    psycopg URL and the async asyncpg URL it also needs), the CeleryExecutor with a Redis broker, Celery
    results in the metadata database, and real accounts instead of "every visitor is an admin"
    (``admin`` with the password from IMAGE2SONG_AIRFLOW_ADMIN_PASSWORD)."""
    if not metadata_url.startswith("postgresql+psycopg://"):
        raise ValueError(f"Airflow's metadata URL must be postgresql+psycopg://… (psycopg 3), not {metadata_url!r}")
    password = admin_password or os.environ.get("IMAGE2SONG_AIRFLOW_ADMIN_PASSWORD")
    if not password:
        raise ValueError("set IMAGE2SONG_AIRFLOW_ADMIN_PASSWORD: the cluster's UI and API need a login")
    env = airflow_environment(settings, port)
    passwords = settings.airflow_home / "passwords.json"
    passwords.write_text(json.dumps({"admin": password}))
    passwords.chmod(0o600)
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_url.replace("postgresql+psycopg://",
                                                                          "postgresql+asyncpg://", 1),
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url,
        # Prefork pool processes are daemonic, and a daemonic process may not start processes (tagging's
        # data loader and large image fetches do); Airflow's task supervisor needs the main thread (no
        # threads pool). Solo: one task at a time per worker, in its main thread; run more workers.
        "AIRFLOW__CELERY__POOL": "solo",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    })
    return env


class AirflowServices:
    """Airflow's components as child processes, each in its own process group, logging to
    <airflow home>/logs/<component>.log: api-server, scheduler, dag-processor, triggerer, and with the
    CeleryExecutor ``workers`` Celery workers. ``check()`` restarts a component that died (and says so);
    ``stop()`` stops them all, children included. Log servers are not started (they would listen on every
    address): on one host the API server reads task logs from the files."""

    def __init__(self, settings: Settings, port: int | None = None, *, env: dict[str, str] | None = None,
                 workers: int = 0, queues: str = "default,gpu", concurrency: int = 1, say=print):
        self.settings = settings
        self.env = env or airflow_environment(settings, port)
        self.port = int(self.env["IMAGE2SONG_AIRFLOW_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = settings.airflow_home / "logs"
        self.log_path = self.log_dir  # where to look when something fails
        self.say = say
        airflow = [sys.executable, "-m", "airflow"]
        self.commands = {"scheduler": [*airflow, "scheduler", "--skip-serve-logs"],
                         "dag-processor": [*airflow, "dag-processor"],
                         "triggerer": [*airflow, "triggerer", "--skip-serve-logs"],
                         "api-server": [*airflow, "api-server"]}
        for n in range(1, workers + 1):
            self.commands[f"worker-{n}"] = [*airflow, "celery", "worker", "--skip-serve-logs", "--queues", queues,
                                            "--concurrency", str(concurrency), "--celery-hostname",
                                            f"worker{n}-{self.port}@%h", "--without-gossip", "--without-mingle"]
        self.processes: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}

    def start(self, timeout: float = 240) -> "AirflowServices":
        ensure_pools(self.settings, self.env)
        self.spawn_all()
        if "api-server" in self.commands:
            self.wait_healthy(timeout)
        return self

    def spawn_all(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.commands:
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            self.commands[name], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, preexec_fn=_restore_sigint, start_new_session=True)
        log.close()

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to a component and its children (fault injection; ``check()`` restarts it)."""
        _signal_group(self.processes[name].pid, signum)
        self.processes[name].wait()

    def check(self) -> list[str]:
        """Restart every component that exited; returns their names."""
        dead = [name for name, process in self.processes.items() if process.poll() is not None]
        for name in dead:
            code = self.processes[name].returncode
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.say(f"Airflow's {name} exited (code {code}); restarting it "
                     f"(restart {self.restarts[name]}; its log: {self.log_dir / (name + '.log')})")
            _signal_group(self.processes[name].pid, signal.SIGKILL)  # its orphans would hold ports
            self._spawn(name)
        return dead

    def health(self) -> dict:
        return requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = [n for n, p in self.processes.items() if p.poll() is not None]
            if exited:
                raise RuntimeError(f"Airflow's {', '.join(exited)} exited at start; see {self.log_dir}")
            try:
                health = self.health()
                if all((health.get(part) or {}).get("status") == "healthy"
                       for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow did not become healthy in {timeout:.0f}s; see {self.log_dir}")

    def supervise(self, every: float = 5.0) -> None:
        """Until SIGINT/SIGTERM: restart what dies."""
        while True:
            self.check()
            time.sleep(every)

    def stop(self, timeout: float = 45) -> None:
        """SIGTERM to every component (workers and scheduler first, the API server last), then SIGKILL
        to whatever is left in their process groups."""
        order = sorted(self.processes, key=lambda n: (n == "api-server", n))
        for name in order:
            if self.processes[name].poll() is None:
                _signal_group(self.processes[name].pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in order:
            try:
                self.processes[name].wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(self.processes[name].pid, signal.SIGKILL)
            self.processes[name].wait()

    def __enter__(self) -> "AirflowServices":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_on_sigterm() -> None:
    """SIGTERM ends the wrapper as Ctrl-C does, so its ``finally``/``with`` blocks stop the children."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


class AirflowApi:
    """The few REST v2 calls the CLI needs (the embedded default makes every local caller an admin)."""

    def __init__(self, base_url: str, username: str | None = None, password: str | None = None):
        self.base = base_url.rstrip("/") + "/api/v2"
        self.session = requests.Session()
        if username:  # a JWT from the auth manager (the embedded default needs none)
            response = requests.post(base_url.rstrip("/") + "/auth/token", timeout=30,
                                     json={"username": username, "password": password})
            if response.status_code >= 400:
                raise RuntimeError(f"Airflow login as {username}: HTTP {response.status_code}: {response.text[:300]}")
            self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

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

    def tasks(self, dag_id: str) -> list[dict]:
        return self._call("GET", f"/dags/{dag_id}/tasks")["tasks"]

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
