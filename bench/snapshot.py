"""Benchmark: build a snapshot from a catalog of 1,000,000 posts, on SQLite and on PostgreSQL.

    .venv/bin/python bench/snapshot.py                      # both databases, 1,000,000 posts
    .venv/bin/python bench/snapshot.py --posts 100000 --db sqlite

The catalog is generated (bulk inserts: executemany on SQLite, COPY on PostgreSQL): songs with a
Zipf-like popularity (many songs once, a few in thousands of posts), one stored image per post with a
random sha256 and perceptual hash, heavy-tailed favorite counts, a fifth of posts with a mood, and one
lyric per song (90% approved, the rest rejected or waiting for review). PostgreSQL gets a throwaway
database at 127.0.0.1:5432 (user postgres), dropped afterwards.

Each build runs in a child process of its own, which reports its wall time and its peak resident
memory (``getrusage(RUSAGE_SELF).ru_maxrss``: imports included). The bar: peak memory under 2 GiB.

Then the cost of verification, side by side in one child process on the published snapshot (best of
``--repeats``): pyarrow reading both tables with no check at all; ``load_snapshot(verify=False)``
(every Parquet page checked against its CRC while read); ``load_snapshot()`` as modeling calls it
(verify=True: also the manifest's hash, each file's SHA-256, the row and split counts); and
``image2song snapshot verify`` (``check_snapshot(pages=True)``: every page, column by column).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MOODS = ["happy", "sad", "calm", "romantic", "energetic", "nostalgic", "hopeful", "lonely"]
WORDS = ("love night heart fire rain river light dance dream road home sky sun moon summer cold "
         "city ocean wild young time forever away tonight gold shadow song stars wind").split()
CHUNK = 100_000


def generate_rows(posts: int, seed: int):
    """Songs, lyric candidates, images and posts as lists of tuples, chunk by chunk (a generator of
    (table, columns, rows))."""
    import numpy as np

    rng = np.random.default_rng(seed)
    now = datetime.now(timezone.utc)
    n_songs = max(posts // 6, 10)
    # Zipf-like popularity: song k is chosen with weight 1 / (k + 20) ** 0.95
    weights = 1.0 / (np.arange(n_songs) + 20.0) ** 0.95
    weights /= weights.sum()
    yield "sources", ("id", "name", "kind", "base_url", "created_at"), [(1, "bench", "html_site", "http://bench", now)]
    song_cols = ("id", "norm_key", "title", "artist", "created_at")
    lyric_cols = ("id", "song_id", "provider", "text", "instrumental", "match_score", "verdict", "reason",
                  "scores", "decided_by", "created_at")
    for start in range(0, n_songs, CHUNK):
        ids = range(start + 1, min(start + CHUNK, n_songs) + 1)
        yield "songs", song_cols, [(i, f"song {i}|artist {i % 5000}", f"Song {i}", f"Artist {i % 5000}", now)
                                   for i in ids]
        lyrics = []
        for i in ids:
            draw = rng.random()
            words = list(rng.choice(WORDS, size=60))
            words[int(rng.integers(60))] = f"word{i}"  # each lyric its own: no two songs share one
            text = "\n".join(" ".join(words[k:k + 6]) for k in range(0, 60, 6))
            if draw < 0.90:
                verdict, reason = "approved", "English (p=0.99) and matched (1.00)"
            elif draw < 0.95:
                verdict, reason = "rejected", "non-English: de (p=0.98)"
            else:
                verdict, reason = "review", "uncertain match: score 0.70 < 0.80"
            lyrics.append((i, i, "lrclib", text, False, 1.0, verdict, reason, "{}", "filters", now))
        yield "lyric_candidates", lyric_cols, lyrics
    image_cols = ("id", "url", "status", "sha256", "phash", "width", "height", "size_bytes", "content_type",
                  "fetched_at")
    post_cols = ("id", "source_id", "external_id", "url", "song_id", "image_id", "mood", "favorite_count",
                 "crawled_at")
    for start in range(0, posts, CHUNK):
        n = min(CHUNK, posts - start)
        ids = np.arange(start + 1, start + n + 1)
        songs = rng.choice(n_songs, size=n, p=weights) + 1
        favorites = np.minimum(rng.lognormal(1.5, 1.4, size=n).astype(np.int64) + 1, 9000)
        phashes = rng.integers(0, 2**63, size=n, dtype=np.int64)
        has_mood = rng.random(n) < 0.2
        moods = rng.choice(MOODS, size=n)
        yield "images", image_cols, [
            (int(i), f"http://bench/img/{i}.jpg", "stored", hashlib.sha256(b"img%d" % i).hexdigest(),
             f"{int(h):016x}", 256, 256, 20_000, "image/jpeg", now) for i, h in zip(ids, phashes)]
        yield "posts", post_cols, [
            (int(i), 1, f"p{i}", f"http://bench/post/{i}", int(s), int(i), str(m) if mood else None, int(f), now)
            for i, s, f, m, mood in zip(ids, songs, favorites, moods, has_mood)]


def fill(db_url: str, posts: int, seed: int) -> float:
    from curation.catalog import engine_for, upgrade

    upgrade(db_url)
    started = time.perf_counter()
    raw = engine_for(db_url).raw_connection()
    try:
        cursor = raw.cursor()
        postgres = db_url.startswith("postgresql")
        if not postgres:
            cursor.execute("BEGIN")  # the catalog's engine leaves transactions to us: one for the bulk load
        for table, columns, rows in generate_rows(posts, seed):
            if postgres:
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                marks = ", ".join("?" for _ in columns)
                cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
        if postgres:
            for table in ("songs", "lyric_candidates", "images", "posts", "sources"):
                cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT max(id) FROM {table}))")
            cursor.execute("ANALYZE")
        else:
            cursor.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def build_child(db_url: str, out: str, test_songs: int) -> None:
    """Runs in its own process: build, then print figures as JSON on the last line."""
    from curation.snapshots import Recipe, build_snapshot

    started = time.perf_counter()
    result = build_snapshot(db_url, out, Recipe(test_songs=test_songs))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "counts": result["counts"], "path": result["path"],
                      "files": {k: v[:12] for k, v in result["files"].items()}}))


def verify_child(path: str, repeats: int) -> None:
    """Runs in its own process: the cost of each level of verification, best of ``repeats``."""
    import pyarrow.parquet as pq

    from curation.snapshots.reader import check_snapshot, load_snapshot

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    def plain():
        for name in ("triplets", "songs"):
            pq.read_table(f"{path}/{name}.parquet").to_pandas()

    figures = {"plain_read": best(plain), "load_pages_only": best(lambda: load_snapshot(path, verify=False)),
               "load_verified": best(lambda: load_snapshot(path)),
               "verify_command": best(lambda: check_snapshot(path, pages=True))}
    figures["bytes"] = sum(Path(path, name).stat().st_size for name in ("triplets.parquet", "songs.parquet"))
    assert check_snapshot(path, pages=True) == []
    print(json.dumps(figures))


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_build(db_url: str, out: str, test_songs: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", db_url, out, str(test_songs)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"build failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        build_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--verify-child":
        verify_child(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--test-songs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="verification timings: best of this many")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="image2song-bench-") as work:
        targets = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
        for kind in targets:
            admin = name = None
            if kind == "sqlite":
                db_url = f"sqlite:///{work}/catalog.sqlite"
            else:
                from sqlalchemy import create_engine, text

                admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
                name = f"image2song_bench_{uuid.uuid4().hex[:8]}"
                with admin.connect() as connection:
                    connection.execute(text(f'CREATE DATABASE "{name}"'))
                db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
            try:
                fill_seconds = fill(db_url, args.posts, args.seed)
                print(f"{kind}: generated {args.posts:,} posts in {fill_seconds:.1f} s", flush=True)
                result = run_build(db_url, f"{work}/snapshots-{kind}", args.test_songs)
                again = run_build(db_url, f"{work}/snapshots-{kind}", args.test_songs)  # unchanged: publishes nothing
                verified = run_child("--verify-child", result["path"], str(args.repeats))
                rows.append((kind, fill_seconds, result, again, verified))
                print(f"{kind}: built in {result['seconds']:.1f} s, peak {result['peak_bytes'] / 2**20:.0f} MiB; "
                      f"counts {result['counts']}", flush=True)
            finally:
                if admin is not None:
                    from curation.catalog.db import engine_for

                    engine_for(db_url).dispose()
                    with admin.connect() as connection:
                        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    admin.dispose()
    print()
    print("| database | posts | triplets kept | songs kept | build time | peak memory | rebuild (unchanged) |")
    print("|---|---|---|---|---|---|---|")
    for kind, _, result, again, _ in rows:
        c = result["counts"]
        print(f"| {kind} | {args.posts:,} | {c['triplets']:,} | {c['songs']:,} | {result['seconds']:.1f} s | "
              f"{result['peak_bytes'] / 2**20:,.0f} MiB | {again['seconds']:.1f} s |")
    print()
    print("| database | Parquet bytes | plain pyarrow read (no checks) | load_snapshot(verify=False): page CRCs | "
          "load_snapshot(): full verification | snapshot verify (every page, column by column) |")
    print("|---|---|---|---|---|---|")
    for kind, _, _, _, v in rows:
        base = v["plain_read"]
        print(f"| {kind} | {v['bytes'] / 2**20:.1f} MiB | {base * 1000:.0f} ms | {v['load_pages_only'] * 1000:.0f} ms "
              f"({v['load_pages_only'] / base:.2f}×) | {v['load_verified'] * 1000:.0f} ms "
              f"({v['load_verified'] / base:.2f}×) | {v['verify_command'] * 1000:.0f} ms |")
    worst = max(r[2]["peak_bytes"] for r in rows)
    print(f"\npeak memory {'under' if worst < 2 * 2**30 else 'OVER'} 2 GiB (worst {worst / 2**20:,.0f} MiB)")
    return 0 if worst < 2 * 2**30 else 1


if __name__ == "__main__":
    sys.exit(main())
