"""The tagging stage: a snapshot's images not yet in the tag store are read, decoded in worker processes
(overlapped with the model), tagged in batches on the device, and appended to the store; then the
snapshot's per-vocabulary views are written from the store.

Speed (see ``bench/tags.py``): workers return whole decoded uint8 batches (a quarter of the bytes of
float32; pinned for non-blocking copies on a GPU, where normalisation happens); JPEGs decode at reduced
scale (``Image.draft``) on the CPU, or with nvJPEG on the GPU (``decode="gpu"``); the model runs in
``inference_mode`` in channels_last with bfloat16/float16 autocast where the hardware has it; torch's
threads and the decode workers share the cores.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from modeling.tags.backends import TagBackend, make_backend, tagger_id
from modeling.tags.decode import BatchDataset, BytesDataset, decode_on_gpu, decode_pil, read_bytes
from modeling.tags.store import COMPACT_ABOVE_PARTS, TagStore, head_arrays, write_view
from modeling.tags.vocabularies import VOCABULARIES, available_vocabularies, vocabulary_view

log = logging.getLogger(__name__)

# torch.compile pays for itself from about this many images on a CPU (compiling takes one to two minutes
# on two cores, then the network runs about 2x faster than eager bfloat16).
COMPILE_FROM = 10_000


def plan_workers(device, workers: int | None) -> tuple[int, int]:
    """(decode worker processes, torch threads). On the CPU the cores are shared: one decode worker per
    three cores (at least one, so decoding overlaps compute) and torch gets the rest; on a GPU every
    core but one decodes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers is None:
        workers = max(1, cores - 1) if device.type == "cuda" else max(1, cores // 3)
    threads = max(1, cores - (workers if device.type == "cpu" and cores > 2 else 0))
    return workers, threads


def tag_batches(items: list[tuple[str, str]], object_store_root, backend: TagBackend, *, batch_size: int = 64,
                workers: int | None = None, decode: str = "auto"):
    """Yield ``(items of the batch, {head: float32 [b, n]}, [error or None] * b)`` in order.

    ``decode``: ``"cpu"`` (PIL in worker processes), ``"gpu"`` (nvJPEG; workers only read bytes) or
    ``"auto"`` (gpu on CUDA)."""
    import torch

    device = backend.device
    n_workers, threads = plan_workers(device, workers)
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield from _tag_loader(items, object_store_root, backend, batch_size, n_workers, decode)
    finally:  # the process's thread count is its owner's (a training after the tagging, OMP_NUM_THREADS)
        torch.set_num_threads(threads_before)


def _tag_loader(items, object_store_root, backend: TagBackend, batch_size: int, n_workers: int, decode: str):
    import torch

    device = backend.device
    on_gpu = decode == "gpu" or (decode == "auto" and device.type == "cuda")
    dataset_type = BytesDataset if on_gpu else BatchDataset
    dataset = dataset_type(items, object_store_root, batch_size, backend.geometry)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=n_workers, pin_memory=device.type == "cuda" and not on_gpu,
        prefetch_factor=4 if n_workers else None, collate_fn=_identity)
    for index, payload, errors in loader:
        chunk = items[index * batch_size:(index + 1) * batch_size]
        errors = list(errors)
        if on_gpu:
            pixels, errors = decode_on_gpu(payload, errors, device, backend.geometry)
        else:
            pixels = payload.to(device, non_blocking=True)
        heads = backend(pixels)
        yield chunk, {h: v.float().cpu().numpy() for h, v in heads.items()}, errors


def _identity(x):
    return x


class _Progress:
    """A tqdm bar on a terminal; INFO log lines otherwise (Airflow shows stderr as errors)."""

    def __init__(self, total: int, enabled: bool | None):
        self.total, self.done, self.t0, self.last = total, 0, time.perf_counter(), 0.0
        self.bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="tagging images", unit="img")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter() - self.t0
        if now - self.last >= 30 or self.done == self.total:
            self.last = now
            log.info("tagging: %d/%d images, %.1f images/s", self.done, self.total, self.done / max(now, 1e-9))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def extract_tags(
    snapshot_dir: str | os.PathLike,
    object_store_root: str | os.PathLike,
    store_root: str | os.PathLike,
    views_dir: str | os.PathLike,
    *,
    backend: str = "efficientnet-lite0",
    backend_options: dict | None = None,
    device: str = "auto",
    precision: str = "auto",
    compile: bool | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    decode: str = "auto",
    retry_errors: bool = False,
    checkpoint_every: int = 2048,
    compact: bool | None = None,
    progress: bool | None = None,
) -> dict:
    """Tag the snapshot's images that the store lacks, then write its views ``<views_dir>/<vocabulary>.parquet``.

    Resumable and incremental: images with a row in the store are not tagged again (a crash loses at
    most ``checkpoint_every`` images of work). Images that could not be read are tried again on the next
    run; images that could not be decoded keep their error row unless ``retry_errors``. A bad image
    never stops the stage: it is counted in ``failed`` and listed (first 10) in ``failures``.

    ``compile``: ``torch.compile`` the network (None: on a CPU when at least ``COMPILE_FROM`` images are to be
    tagged). ``precision``: ``auto`` (bfloat16 on GPUs and AMX CPUs), ``fp32``, ``bf16``, ``fp16``.
    ``workers``: decode processes (None: sized to the cores, see :func:`plan_workers`).
    ``compact``: merge the tagger's parts in the store into one after tagging (None: when it has more than
    ``COMPACT_ABOVE_PARTS``; see :meth:`TagStore.compact`).
    """
    from curation.snapshots.reader import load_snapshot

    t0 = time.perf_counter()
    snap = load_snapshot(snapshot_dir)
    images = snap.triplets.drop_duplicates("image_sha256")[["image_sha256", "image_path"]]
    items = list(zip(images["image_sha256"].tolist(), images["image_path"].tolist()))
    tagger = make_backend(backend, device=device, precision=precision, compile=compile, **(backend_options or {}))
    store = TagStore(store_root, tagger_id(tagger), tagger.heads, tagger.model)
    known = store.statuses([sha for sha, _ in items])

    def needs_tagging(sha: str) -> bool:
        if sha not in known:
            return True
        status, error = known[sha]
        return status != "ok" and (retry_errors or (error or "").startswith("read:"))

    todo = [item for item in items if needs_tagging(item[0])]
    if tagger.compile is None:
        tagger.compile = tagger.device.type == "cpu" and len(todo) >= COMPILE_FROM
    failures: list[tuple[str, str]] = []
    n_failed = 0
    bar = _Progress(len(todo), progress)
    buffer: list[tuple[list, dict, list]] = []

    def flush() -> None:
        if buffer:
            store.append([s for chunk, _, _ in buffer for s, _ in chunk], [e for _, _, errs in buffer for e in errs],
                         {h: np.concatenate([heads[h] for _, heads, _ in buffer]) for h in tagger.heads})
            buffer.clear()

    tag_t0 = time.perf_counter()
    try:
        for chunk, heads, errors in tag_batches(todo, object_store_root, tagger, batch_size=batch_size,
                                                workers=workers, decode=decode):
            for (sha, rel), error in zip(chunk, errors):
                if error is not None:
                    n_failed += 1
                    if len(failures) < 10:
                        failures.append((sha, error))
                    log.warning("tagging: image %s (%s) not tagged: %s", sha, rel, error)
            buffer.append((chunk, heads, errors))
            bar.update(len(chunk))
            if sum(len(c) for c, _, _ in buffer) >= checkpoint_every:
                flush()
        flush()
    finally:
        bar.close()
    tag_seconds = time.perf_counter() - tag_t0
    if compact is None:
        compact = len(store.parts()) > COMPACT_ABOVE_PARTS
    compacted = store.compact() if compact else 0

    views_dir = Path(views_dir)
    shas = [sha for sha, _ in items]
    rows = store.rows(shas)
    row_shas = rows.column("image_sha256").to_pylist()
    statuses = rows.column("status").to_pylist()
    errors = [e if s != "ok" else None for s, e in zip(statuses, rows.column("error").to_pylist())]
    heads = head_arrays(rows, tagger.heads)
    paths = {}
    for vocabulary in available_vocabularies(tagger.heads):
        names, scores = vocabulary_view(vocabulary, heads)
        paths[vocabulary] = write_view(views_dir / f"{vocabulary}.parquet", row_shas, scores, names, errors=errors,
                                       tag_model=f"{tagger.model}; vocabulary {vocabulary}")
    summary = {
        "tags_paths": paths,
        "tagger": tagger_id(tagger),
        "images": len(items),
        "reused": len(items) - len(todo),
        "attempted": len(todo),
        "tagged": len(todo) - n_failed,
        "failed": n_failed,
        "failures": failures,
        "unusable": int(sum(s != "ok" for s in statuses)),
        "compacted_parts": compacted,
        "device": str(tagger.device),
        "seconds": round(time.perf_counter() - t0, 3),
        "images_per_s": round(len(todo) / tag_seconds, 1) if todo else None,
    }
    log.info("tagging: %s", {k: v for k, v in summary.items() if k not in ("tags_paths", "failures")})
    return summary


class Tagger:
    """One backend and one vocabulary, for tagging single images (search) outside the stage."""

    def __init__(self, vocabulary: str = "obj+attr", backend: str = "efficientnet-lite0", device: str = "auto",
                 **options):
        if vocabulary not in VOCABULARIES:
            raise ValueError(f"unknown vocabulary {vocabulary!r}; known: {', '.join(VOCABULARIES)}")
        self.backend = make_backend(backend, device=device, **options)
        self.vocabulary = vocabulary
        empty = {h: (names, np.zeros((0, len(names)), np.float32)) for h, names in self.backend.heads.items()}
        self.tag_names = vocabulary_view(vocabulary, empty)[0]

    @classmethod
    def for_tag_names(cls, tag_names, backend: str = "efficientnet-lite0", device: str = "auto", **options) -> "Tagger":
        """The tagger whose vocabulary has exactly ``tag_names`` (what a model was trained on)."""
        tagger = cls("imagenet" if len(tag_names) == 1000 else "obj+attr", backend, device, **options)
        for vocabulary in available_vocabularies(tagger.backend.heads):
            tagger.vocabulary = vocabulary
            tagger.tag_names = vocabulary_view(vocabulary, {h: (n, np.zeros((0, len(n)), np.float32))
                                                            for h, n in tagger.backend.heads.items()})[0]
            if list(tagger.tag_names) == list(tag_names):
                return tagger
        raise ValueError(f"no vocabulary of the {backend} backend has the model's {len(tag_names)} tag names")

    def tag_pixels(self, pixels) -> np.ndarray:
        """uint8 [B, 3, H, W] crops -> float32 [B, n_tags]."""
        heads = self.backend(pixels.to(self.backend.device))
        arrays = {h: (self.backend.heads[h], v.float().cpu().numpy()) for h, v in heads.items()}
        return vocabulary_view(self.vocabulary, arrays)[1]

    def tag_file(self, path: str | os.PathLike) -> np.ndarray:
        """One local image file -> float32 [n_tags]."""
        import torch

        pixels = decode_pil(read_bytes(Path(path).parent, Path(path).name), self.backend.geometry)
        return self.tag_pixels(torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0))[0]
