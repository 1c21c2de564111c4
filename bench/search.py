"""Benchmark: song search for an image over 10,000 and 1,000,000 songs, exact and indexed (faiss IVF).

    .venv/bin/python bench/search.py                          # 10,000 and 1,000,000 songs, 515-d
    .venv/bin/python bench/search.py --sizes 10000 --dim 1000

The library is what ``modeling.search.SongSearch`` indexes: unit song vectors in the model's tag space
(``--dim``: 515 by default, the paper's obj + attr columns and about the size of the obj+attr
vocabulary; 1000 for the ImageNet vocabulary), and the queries are image vectors in the same space. They
are generated with a structure like the demo world's, where a song's words give it a theme: each song
has one of 300 themes (a theme: a few strong tags over a dense weak background), half of them lean
a little (weight 0.2-0.5) towards a second theme, plus noise (``--noise``, norm 0.5 against the unit
theme mixture by default); queries are drawn the same way and are not in the library. Recall and the
lists an IVF index must visit depend on that structure; the index calibrates ``nprobe`` on each
library, so the recall target holds and the latency is what moves. Vectors are generated in chunks and added to both indexes, so the library exists
only inside them.

For each size, side by side in one run:

- build time of each index (the IVF one: k-means on a sample, adding every vector, calibrating
  ``nprobe`` on 500 calibration queries to recall@10 >= 0.995 against exact search);
- one query at a time (what ``image2song search`` does), one thread: p50 / p99 latency (wall time, and
  the CPU time of the searching thread, which leaves out the waits for a core on a loaded machine) and
  queries/s over ``--queries`` held-out queries (``--exact-queries`` for exact search at a million songs, where
  every query reads the whole library);
- a batch of all held-out queries with every core: queries/s;
- recall@10 of the IVF index against exact search on the held-out queries.

Peak memory is about twice the library (exact copy + IVF copy): 4 GB at 1,000,000 x 515-d.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling.search import VectorIndex, normalize, recall_at_k  # noqa: E402

N_TOPICS = 300
CHUNK = 50_000


class Generator:
    """Song and image vectors in tag space: topic mixtures plus noise (see the module docstring)."""

    def __init__(self, dim: int, seed: int, noise: float):
        rng = np.random.default_rng(seed)
        self.noise = noise
        topics = np.abs(rng.standard_normal((N_TOPICS, dim), dtype=np.float32)) * 0.15
        for t in range(N_TOPICS):  # a handful of strong tags per topic
            strong = rng.choice(dim, size=int(rng.integers(3, 9)), replace=False)
            topics[t, strong] += rng.uniform(1.0, 3.0, size=len(strong)).astype(np.float32)
        self.topics = normalize(topics)
        self.dim = dim

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = self.topics[rng.integers(0, N_TOPICS, size=n)].copy()  # the main theme
        second = rng.random(n) < 0.5  # half the songs lean a little towards a second one
        w = rng.uniform(0.2, 0.5, size=second.sum()).astype(np.float32)[:, None]
        out[second] += w * self.topics[rng.integers(0, N_TOPICS, size=second.sum())]
        # noise of norm about ``self.noise`` against a unit signal
        out = normalize(out) + self.noise * rng.standard_normal((n, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        return normalize(out)


def _latency(index: VectorIndex, queries: np.ndarray, k: int = 10) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    wall, cpu = [], []
    for q in queries:
        t0, c0 = time.perf_counter(), time.thread_time()
        index.search(q[None], k)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    t, c = np.array(wall) * 1000, np.array(cpu) * 1000
    return {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
            "cpu_p50_ms": float(np.percentile(c, 50)), "cpu_p99_ms": float(np.percentile(c, 99)),
            "qps_one_thread": float(len(t) / (t.sum() / 1000)), "n": len(t)}


def _batch(index: VectorIndex, queries: np.ndarray, threads: int, k: int = 10) -> tuple[float, list]:
    import faiss

    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    _, ids = index.search(queries, k)
    return len(queries) / (time.perf_counter() - t0), ids


def run_size(n: int, dim: int, n_queries: int, n_exact_queries: int, threads: int, seed: int,
             noise: float) -> dict:
    import faiss

    faiss.omp_set_num_threads(threads)
    gen = Generator(dim, seed, noise)
    rng = np.random.default_rng(seed + 1)
    calibration = gen.draw(500, rng)
    held_out = gen.draw(n_queries, rng)

    # exact and IVF indexes, filled chunk by chunk from the same stream of songs
    exact = VectorIndex.create(dim, "exact", n_expected=n)
    ivf = VectorIndex.create(dim, "ivf", n_expected=n)
    t_exact = t_ivf = 0.0
    first = gen.draw(min(n, max(CHUNK, ivf.train_size)), rng)
    t0 = time.perf_counter()
    ivf.train(first[: ivf.train_size])
    t_ivf += time.perf_counter() - t0
    added, chunk = 0, first
    while True:
        ids = np.arange(added, added + len(chunk))
        t0 = time.perf_counter()
        exact.add(chunk, ids)
        t_exact += time.perf_counter() - t0
        t0 = time.perf_counter()
        ivf.add(chunk, ids)
        t_ivf += time.perf_counter() - t0
        added += len(chunk)
        if added >= n:
            break
        chunk = gen.draw(min(CHUNK, n - added), rng)
    del first, chunk
    t0 = time.perf_counter()
    ivf.calibrate(calibration, _positions(exact.search(calibration, 10)[1]))
    t_calibrate = time.perf_counter() - t0

    qps_exact_batch, truth = _batch(exact, held_out, threads)
    qps_ivf_batch, found = _batch(ivf, held_out, threads)
    recall = recall_at_k(_positions(found), _positions(truth))
    n_exact = n_queries if n <= 100_000 else min(n_queries, n_exact_queries)
    return {
        "songs": n, "dim": dim, "nlist": ivf.params["nlist"], "nprobe": ivf.params["nprobe"],
        "calibrated_recall@10": ivf.params["calibrated_recall"],
        "build_s": {"exact": round(t_exact, 2), "ivf": round(t_ivf, 2), "ivf_calibration": round(t_calibrate, 2)},
        "exact": {**_latency(exact, held_out[:n_exact]), "qps_batch": qps_exact_batch},
        "ivf": {**_latency(ivf, held_out), "qps_batch": qps_ivf_batch},
        "recall@10_ivf_vs_exact": recall,
        "held_out_queries": n_queries,
    }


def _positions(ids: list[list[str]]) -> np.ndarray:
    return np.array([[int(i) for i in row] for row in ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000], help="library sizes (songs)")
    parser.add_argument("--dim", type=int, default=515,
                        help="vector size: the model's tag count (default 515, the paper's obj+attr)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries per size (default 1000)")
    parser.add_argument("--exact-queries", type=int, default=50,
                        help="one-at-a-time exact queries above 100,000 songs (each reads everything; default 50)")
    parser.add_argument("--threads", type=int, default=2, help="threads for builds and batches (default 2)")
    parser.add_argument("--noise", type=float, default=0.5,
                        help="noise norm against a unit topic mixture (default 0.5; higher: less structure, "
                             "more lists to visit for the same recall)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss

    import os

    print(f"faiss {faiss.__version__}, {args.threads} threads for builds and batches, 1 thread per single query; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    rows = []
    for n in args.sizes:
        r = run_size(n, args.dim, args.queries, args.exact_queries, args.threads, args.seed, args.noise)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print()
    print("| songs | index | build | one query p50 / p99, wall | one query p50 / p99, CPU time | queries/s, one at a time | queries/s, batch | recall@10 vs exact |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for kind in ("exact", "ivf"):
            d = r[kind]
            build = r["build_s"][kind] + (r["build_s"]["ivf_calibration"] if kind == "ivf" else 0)
            name = "exact (flat)" if kind == "exact" else f"IVF {r['nlist']} lists, nprobe {r['nprobe']}"
            recall = "1 (the reference)" if kind == "exact" else f"{r['recall@10_ivf_vs_exact']:.4f}"
            print(f"| {r['songs']:,} | {name} | {build:.1f} s | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} ms (n={d['n']}) | "
                  f"{d['cpu_p50_ms']:.2f} / {d['cpu_p99_ms']:.2f} ms | {d['qps_one_thread']:,.0f} | {d['qps_batch']:,.0f} | {recall} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory {peak:,.0f} MiB; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
