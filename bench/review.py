"""Benchmark: the review app with 20 concurrent curators, on SQLite and PostgreSQL.

The app runs under uvicorn in its own process on loopback (the same server settings as
`image2song review serve`); each simulated curator is a thread with its own HTTP session that logs
in, then decides items in a loop. Every other decision is a save-and-next (one request: record the
decision and claim the next item); the others are a submit and a separate claim, so both are timed
alone too. The clients do not resend anything, so a connection the server resets shows up as an
error in the table. Loads, per database:

- curators who think about 1 s per item (0.5-1.5 s), on a quiet machine and under a CPU hog;
- curators who think 0-300 ms per item (quicker than any person), quiet and under a CPU hog;
- curators who do not think at all (the server's ceiling).

The CPU hog is one busy-looping process per core, started before the server and stopped after it.
`--soak N` instead runs the 20-curator tests (pytest) N times under a CPU hog and reports how many
passed. Load averages are printed with each row: the development machine is shared.

    .venv/bin/python bench/review.py                       # both databases, every load
    .venv/bin/python bench/review.py --db sqlite --seconds 10 --loads think-300ms,think-300ms+hog
    .venv/bin/python bench/review.py --soak 10             # the 20-curator tests, 10 times, under a hog
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PASSWORD = "bench password 1"
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def seed(db_url: str, items: int, curators: int) -> None:
    from curation.catalog import Image, LyricCandidate, Post, Song, Source, session_scope, upgrade
    from curation.review.users import add_curator
    from curation.review.queue import enqueue_reviews

    upgrade(db_url)
    with session_scope(db_url) as session:
        source = Source(name="bench", kind="html_site", base_url="http://site")
        session.add(source)
        session.flush()
        for i in range(items):
            song = Song(norm_key=f"s{i}|a{i % 50}", title=f"Song {i}", artist=f"Artist {i % 50}")
            image = Image(url=f"http://site/img/{i}.jpg", status="stored",
                          sha256=hashlib.sha256(str(i).encode()).hexdigest(), content_type="image/jpeg")
            session.add_all([song, image])
            session.flush()
            session.add(Post(source_id=source.id, external_id=str(i), url=f"http://site/p/{i}", song_id=song.id,
                             image_id=image.id, mood="calm", favorite_count=i % 97))
            session.add(LyricCandidate(song_id=song.id, provider="lrclib", verdict="review", reason="uncertain match",
                                       text="a line of a song\n" * 20, match_score=0.7, scores={}))
    enqueue_reviews(db_url)
    add_curator(db_url, "c00", PASSWORD)  # argon2 hashing is slow on purpose: hash once, copy the hash
    from sqlalchemy import select

    from curation.catalog.models import Curator

    with session_scope(db_url) as session:
        hashed = session.scalar(select(Curator.password_hash).where(Curator.name == "c00"))
        session.add_all([Curator(name=f"c{i:02d}", password_hash=hashed, role="curator") for i in range(1, curators)])


LOADS = {  # name: (think seconds low, high, CPU hog)
    "think-1s": (0.5, 1.5, False),
    "think-1s+hog": (0.5, 1.5, True),
    "think-300ms": (0.0, 0.3, False),
    "think-300ms+hog": (0.0, 0.3, True),
    "no-think": (0.0, 0.0, False),
}


class CpuHog:
    """One busy-looping process per core while in use (what other work on a shared machine does)."""

    def __init__(self, processes: int | None = None):
        self.count = processes or os.cpu_count() or 2
        self.processes: list[subprocess.Popen] = []

    def __enter__(self):
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()


def start_server(db_url: str) -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from curation.review.app import ReviewConfig, serve; "
            "import logging; logging.disable(logging.INFO); "
            "serve(ReviewConfig(db_url=sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]))")
    process = subprocess.Popen([sys.executable, "-c", code, db_url, str(port), str(ROOT)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(base + "/login", timeout=1)
            return process, base
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the review app did not start: " + process.stderr.read().decode()[-2000:])


def login(base: str, name: str) -> requests.Session:
    session = requests.Session()
    token = re.search(r'csrf-token" content="([^"]+)"', session.get(base + "/login").text).group(1)
    response = session.post(base + "/login", data={"name": name, "password": PASSWORD, "csrf": token})
    session.headers["X-CSRF-Token"] = re.search(r'csrf-token" content="([^"]+)"', response.text).group(1)
    return session


def run_load(base: str, curators: int, seconds: float, think: tuple[float, float]) -> dict:
    timings = {"save_and_next": [], "submit": [], "claim": []}
    lock = threading.Lock()
    sessions = [login(base, f"c{i:02d}") for i in range(curators)]
    start_line = threading.Barrier(curators + 1)
    stop = [0.0]
    errors: list[str] = []

    def curator(index: int):
        try:
            work(index)
        except Exception as error:  # counted and printed: a failed request is a result too
            with lock:
                errors.append(f"c{index:02d}: {type(error).__name__}: {error}")

    def work(index: int):
        session, rng = sessions[index], random.Random(index)
        start_line.wait()
        item = session.post(base + "/api/claim").json()["item"]
        n = 0
        while item is not None and time.monotonic() < stop[0]:
            if think[1]:
                time.sleep(rng.uniform(*think))
            body = {"token": item["token"], "decision": "accept", "next": n % 2 == 0}
            t0 = time.perf_counter()
            answer = session.post(base + "/api/submit", json=body)
            t1 = time.perf_counter()
            answer.raise_for_status()
            data = answer.json()
            if body["next"]:
                item, key, spent = data["next"], "save_and_next", t1 - t0
            else:
                item = session.post(base + "/api/claim").json()["item"]
                t2 = time.perf_counter()
                with lock:
                    timings["claim"].append(t2 - t1)
                key, spent = "submit", t1 - t0
            with lock:
                timings[key].append(spent)
            n += 1

    threads = [threading.Thread(target=curator, args=(i,)) for i in range(curators)]
    for thread in threads:
        thread.start()
    stop[0] = time.monotonic() + seconds
    began = time.monotonic()
    start_line.wait()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    decided = len(timings["save_and_next"]) + len(timings["submit"])
    result = {"decisions": decided, "per_second": decided / elapsed, "errors": errors}
    for key, values in timings.items():
        values.sort()
        if values:
            result[key] = {"p50": statistics.median(values) * 1000,
                           "p99": values[min(len(values) - 1, int(0.99 * len(values)))] * 1000,
                           "max": values[-1] * 1000, "n": len(values)}
    return result


def postgres_database() -> tuple[str, callable] | None:
    from sqlalchemy import create_engine, text

    try:
        admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        name = f"image2song_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        print(f"PostgreSQL at 127.0.0.1:5432 does not answer ({type(error).__name__}); skipped")
        return None

    def drop():
        from curation.catalog.db import engine_for

        engine_for(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}").dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def soak(runs: int) -> int:
    """The 20-curator tests, ``runs`` times under a CPU hog; prints each run and the tally."""
    tests = ["tests/test_review_app.py::test_twenty_curators_at_once_lose_nothing_and_share_nothing",
             "tests/test_review_team.py::test_an_office_of_twenty_keeps_working_while_one_mistypes_twenty_times"]
    print(f"{runs} runs of {len(tests)} tests (each on SQLite and PostgreSQL) under a CPU hog of "
          f"{os.cpu_count()} busy processes; {os.cpu_count()} cores")
    passed = 0
    with CpuHog():
        for run in range(1, runs + 1):
            load = os.getloadavg()[0]
            began = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                                    cwd=ROOT, capture_output=True, text=True)
            summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
            passed += result.returncode == 0
            print(f"run {run:>2}: {'pass' if result.returncode == 0 else 'FAIL'}  {summary}  "
                  f"({time.monotonic() - began:.0f} s, load average at start {load:.1f})", flush=True)
            if result.returncode != 0:
                print("\n".join("    " + line for line in result.stdout.splitlines()[-40:]))
    print(f"passed {passed} of {runs}")
    return 0 if passed == runs else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--curators", type=int, default=20)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=15, help="seconds per load")
    parser.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated, of: {', '.join(LOADS)}")
    parser.add_argument("--soak", type=int, metavar="N", help="run the 20-curator tests N times under a CPU hog")
    args = parser.parse_args()
    if args.soak:
        return soak(args.soak)
    loads = [name.strip() for name in args.loads.split(",") if name.strip()]
    unknown = [name for name in loads if name not in LOADS]
    if unknown:
        parser.error(f"unknown load(s) {', '.join(unknown)}; choose from {', '.join(LOADS)}")
    print(f"{args.curators} curators, {args.items} items, {args.seconds:.0f} s per load; latencies in ms, "
          f"measured by the client over loopback HTTP; {os.cpu_count()} cores")
    print(f"{'database':<11} {'load':<16} {'save-and-next p50/p99':>22} {'submit p50/p99':>16} "
          f"{'claim p50/p99':>15} {'decisions/s':>12} {'errors':>7} {'load avg':>9}")
    for db in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
        with tempfile.TemporaryDirectory() as tmp:
            drop = None
            if db == "sqlite":
                url = f"sqlite:///{tmp}/catalog.sqlite"
            else:
                found = postgres_database()
                if found is None:
                    continue
                url, drop = found
            try:
                seed(url, args.items, args.curators)
                for name in loads:
                    low, high, hog = LOADS[name]
                    with CpuHog() if hog else contextlib.nullcontext():
                        process, base = start_server(url)
                        try:
                            before = os.getloadavg()[0]
                            r = run_load(base, args.curators, args.seconds, (low, high))
                        finally:
                            process.terminate()
                            process.wait(10)
                    cell = lambda key: f"{r[key]['p50']:6.1f} / {r[key]['p99']:6.1f}" if key in r else "–"  # noqa: E731
                    print(f"{db:<11} {name:<16} {cell('save_and_next'):>22} {cell('submit'):>16} "
                          f"{cell('claim'):>15} {r['per_second']:>12.1f} {len(r['errors']):>7} {before:>9.1f}",
                          flush=True)
                    for error in r["errors"][:5]:
                        print(f"  error: {error}")
            finally:
                if drop:
                    drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
