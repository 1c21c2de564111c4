"""Nearest neighbours by cosine over a fixed set of vectors (songs, images): exact or approximate.

A ``VectorIndex`` holds L2-normalised float32 vectors with a string id each, so that inner product is
cosine similarity, and is backed by faiss:

- ``exact``: ``IndexFlatIP``, every vector scored (the reference; fine up to some 100,000 vectors);
- ``ivf``: ``IndexIVFFlat`` (inverted lists over a k-means coarse quantiser, full vectors kept, so the
  scores are exact for what it visits). ``nprobe``, the lists visited per query, trades recall for speed;
  ``build`` can calibrate it on sample queries: the smallest ``nprobe`` whose recall@k against exact
  search reaches ``target_recall`` (default 0.995, a margin over the 0.99 asked of unseen queries), and
  records the recall it measured.

``build`` indexes an array at once; ``create`` + ``train`` + ``add`` fill a large index chunk by chunk.

``kind="auto"`` is exact below ``AUTO_IVF_FROM`` vectors, ivf above. ``save``/``load`` keep an index in a
folder (``index.faiss``, ``ids.npy``, ``index.json``), written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("exact", "ivf", "auto")
AUTO_IVF_FROM = 50_000
FORMAT = "image2song-vector-index/1"


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as contiguous float32."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12), dtype=np.float32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k (rows of ``truth``, positions) that ``found`` also returned."""
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / max(1, truth.size)


@dataclass
class VectorIndex:
    index: object  # a faiss index
    ids: np.ndarray  # str, one per vector, in index order
    kind: str
    params: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # ------------------------------------------------------------------ build
    @classmethod
    def create(cls, dim: int, kind: str, *, n_expected: int, nlist: int | None = None, seed: int = 0) -> "VectorIndex":
        """An empty index for about ``n_expected`` vectors; an ivf one needs ``train`` before ``add``.
        ``kind="auto"`` picks by ``n_expected``."""
        import faiss

        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}: choose one of {', '.join(KINDS)}")
        if kind == "auto":
            kind = "ivf" if n_expected >= AUTO_IVF_FROM else "exact"
        if kind == "exact":
            return cls(faiss.IndexFlatIP(dim), np.array([], dtype=str), "exact", {})
        nlist = nlist or max(1, min(4096, int(round(math.sqrt(n_expected)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = 10  # a coarse quantiser needs no more
        self = cls(index, np.array([], dtype=str), "ivf", {"nlist": nlist})
        self.set_nprobe(max(1, nlist // 16))
        return self

    @property
    def train_size(self) -> int:
        """How many sample vectors ``train`` wants: 64 per inverted list (0 for exact)."""
        return 64 * self.index.nlist if self.kind == "ivf" else 0

    def train(self, sample: np.ndarray) -> None:
        if self.kind == "ivf":
            self.index.train(normalize(sample))

    def add(self, vectors: np.ndarray, ids) -> None:
        x = normalize(vectors)
        ids = np.asarray([str(i) for i in ids])
        if len(ids) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(ids)} ids")
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors have {x.shape[1]} dimensions, the index {self.dim}")
        self.index.add(x)
        self.ids = np.concatenate([self.ids, ids]) if len(self.ids) else ids

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids,
        *,
        kind: str = "auto",
        nlist: int | None = None,
        nprobe: int | None = None,
        calibration_queries: np.ndarray | None = None,
        target_recall: float = 0.995,
        k: int = 10,
        seed: int = 0,
    ) -> "VectorIndex":
        """An index over ``vectors`` (one id each). An ivf index is calibrated on ``calibration_queries``
        when given (see ``calibrate``), else uses ``nprobe`` (default: a sixteenth of the lists)."""
        x = normalize(vectors)
        if len(x) == 0:
            raise ValueError("no vectors to index")
        if len(ids) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(ids)} ids")
        self = cls.create(x.shape[1], kind, n_expected=len(x), nlist=nlist, seed=seed)
        if self.kind == "ivf":
            rng = np.random.default_rng(seed)
            n = len(x)
            self.train(x[rng.choice(n, size=self.train_size, replace=False)] if n > self.train_size else x)
        self.add(x, ids)
        if nprobe is not None:
            self.set_nprobe(nprobe)
        elif calibration_queries is not None and self.kind == "ivf":
            truth = exact_top_k(x, normalize(calibration_queries), k)[1]
            self.calibrate(calibration_queries, truth, target_recall=target_recall)
        return self

    def set_nprobe(self, nprobe: int) -> None:
        if self.kind != "ivf":
            return
        self.index.nprobe = int(max(1, min(nprobe, self.index.nlist)))
        self.params["nprobe"] = int(self.index.nprobe)

    def calibrate(self, queries: np.ndarray, truth: np.ndarray, *, target_recall: float = 0.995) -> float:
        """The smallest nprobe (powers of two, then every list) whose recall@k on ``queries`` reaches
        ``target_recall``; ``truth``: the exact top-k positions [Q, k]. Returns the recall measured."""
        if self.kind != "ivf":
            return 1.0
        q = normalize(queries)
        k = truth.shape[1]
        nlist = self.index.nlist
        recall = 0.0
        for nprobe in sorted({*(2**i for i in range(int(math.log2(nlist)) + 1)), nlist}):
            self.set_nprobe(nprobe)
            recall = recall_at_k(self.index.search(q, k)[1], truth)
            if recall >= target_recall:
                break
        self.params.update(calibrated_recall=round(recall, 4), calibrated_on=len(q), calibrated_k=k,
                           target_recall=target_recall)
        log.info("ivf index: nprobe %d of %d lists gives recall@%d %.4f on %d queries",
                 self.index.nprobe, nlist, k, recall, len(q))
        return recall

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str]]]:
        """Cosine scores [Q, k] (best first) and the ids of the matches; fewer than k where the index
        is smaller (or an ivf probe found fewer)."""
        q = normalize(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise ValueError(f"query vectors have {q.shape[1]} dimensions, the index {self.dim}")
        k = max(1, min(k, len(self)))
        scores, positions = self.index.search(q, k)
        out_ids = [[str(self.ids[p]) for p in row if p >= 0] for row in positions]
        return scores, out_ids

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike) -> Path:
        import faiss

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            np.save(tmp / "ids.npy", self.ids, allow_pickle=False)
            meta = {"format": FORMAT, "kind": self.kind, "dim": self.dim, "count": len(self), "params": self.params}
            (tmp / "index.json").write_text(json.dumps(meta, indent=1) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "VectorIndex":
        import faiss

        folder = Path(folder)
        meta_path = folder / "index.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no vector index in {folder} (index.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder}: unknown index format {meta.get('format')!r} (expected {FORMAT})")
        index = faiss.read_index(str(folder / "index.faiss"))
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        if index.ntotal != len(ids) or index.ntotal != meta["count"]:
            raise ValueError(f"{folder}: the index holds {index.ntotal} vectors, ids.npy {len(ids)}, "
                             f"index.json {meta['count']}: rebuild it")
        self = cls(index, ids, meta["kind"], dict(meta.get("params", {})))
        if self.kind == "ivf" and "nprobe" in self.params:
            self.index.nprobe = int(self.params["nprobe"])
        return self


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of (normalised) ``queries`` against ``vectors``, scanning the vectors
    in chunks so that memory stays bounded: (scores [Q, k], positions [Q, k])."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), k), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        s = q @ vectors[start:start + chunk].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, order, axis=1)
        best_i = np.take_along_axis(cand_i, order, axis=1)
    return best_s, best_i
