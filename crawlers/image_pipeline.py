"""Download, validate and store many images quickly, and link near-duplicates.

The work is split the way img2dataset splits it: ``processes`` worker processes (one per core by default),
each with ``threads`` downloads in flight over pooled keep-alive connections. A worker fetches, validates
(``crawlers.images.validate_image``: decoding, hashing and resizing run there, off the parent's path) and
stores the bytes content-addressed; it sends back only small records. The parent decides near-duplicates
against one index of perceptual hashes and hands the records to ``sink`` in batches (one catalog
transaction per batch, not per image).

Near-duplicates: an image whose pHash is within ``near_duplicate_bits`` of an image already kept (from
earlier runs, seeded by the caller, or from this run) is linked to it (``duplicate_of``) and its bytes are
not kept: the record carries the original's sha256, so every reader finds the original's bytes. With
``near_duplicate_bits=None`` only byte-identical images are linked (content addressing stores them once
anyway).

Nothing here persists state; a crash loses only the records not yet handed to ``sink`` (their images are
fetched again on the next run; storing is idempotent).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from crawlers.http import Disallowed, FetchError, PoliteClient, Refused, RobotsUnavailable
from crawlers.images import BadImage, ImageOptions, validate_image
from crawlers.sources import read_local

log = logging.getLogger(__name__)

SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp"}
PERMANENT_HTTP = {400, 401, 403, 404, 410, 451}


class BlobStore(Protocol):
    def put(self, data: bytes, suffix: str = "") -> str: ...


@dataclass
class ImageResult:
    """One image's outcome: stored | duplicate | error (worth retrying) | rejected (will not get better)
    | disallowed (robots.txt)."""

    image_id: int
    url: str
    status: str
    error: str | None = None
    http_status: int | None = None
    sha256: str | None = None
    phash: str | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    content_type: str | None = None
    key: str | None = None
    duplicate_of: int | None = None


def process_one(client: PoliteClient, store: BlobStore, options: ImageOptions, image_id: int,
                url: str, local_roots: tuple = ()) -> ImageResult:
    """Fetch, validate and store one image; never raises for a bad image or a failed fetch. A file://
    URL is read only from ``local_roots`` (the folders of imported files), never from anywhere else."""
    try:
        if url.startswith("file:"):  # a file import's local image
            try:
                data, declared, http_status = read_local(url, options.max_bytes, local_roots), None, None
            except OSError as error:
                return ImageResult(image_id, url, "rejected", f"{type(error).__name__}: {error}")
        else:
            response = client.get(url)
            if response.status >= 400:
                status = "rejected" if response.status in PERMANENT_HTTP else "error"
                return ImageResult(image_id, url, status, f"HTTP {response.status}", response.status)
            data, declared, http_status = response.content, response.headers.get("content-type"), response.status
        image = validate_image(data, declared_type=declared, url=url, options=options)
        try:
            key = store.put(image.data, SUFFIXES.get(image.content_type, ""))
        except Exception as error:  # the store, not the image: worth retrying (fsspec raises many kinds)
            return ImageResult(image_id, url, "error", f"object store: {type(error).__name__}: {error}")
        return ImageResult(image_id, url, "stored", None, http_status, image.sha256, image.phash,
                           image.width, image.height, len(image.data), image.content_type, key)
    except Disallowed:
        return ImageResult(image_id, url, "disallowed", "robots.txt disallows this URL")
    except RobotsUnavailable as error:  # no verdict: the image stays pending, asked again later
        return ImageResult(image_id, url, "deferred", str(error))
    except Refused as error:
        return ImageResult(image_id, url, "rejected", f"Refused: {error}")
    except BadImage as error:
        return ImageResult(image_id, url, "rejected", f"BadImage: {error}")
    except FetchError as error:
        permanent = "exceeds the cap" in str(error) or "redirect" in str(error)
        return ImageResult(image_id, url, "rejected" if permanent else "error", f"FetchError: {error}",
                           error.status)
    except Exception as error:  # noqa: BLE001 - one image nobody expected must not stop the stage
        log.exception("image %s", url[:200])
        return ImageResult(image_id, url, "error", f"unexpected {type(error).__name__}: {error}")


class NearDuplicateIndex:
    """pHashes of the images kept, searchable within ``bits`` Hamming distance (multi-index hashing:
    the 64 bits are cut into bits + 1 pieces, and two hashes that close share at least one piece)."""

    def __init__(self, bits: int | None):
        self.bits = bits
        self.pieces = [] if bits is None else _pieces(bits)
        self.tables: list[dict[int, list[int]]] = [{} for _ in self.pieces]
        self.entries: list[tuple[int, int, str, str | None]] = []  # (phash, image id, sha256, content type)
        self.by_sha: dict[str, int] = {}

    def add(self, image_id: int, phash: str, sha256: str, content_type: str | None) -> None:
        value = int(phash, 16)
        index = len(self.entries)
        self.entries.append((value, image_id, sha256, content_type))
        self.by_sha.setdefault(sha256, index)
        for table, (shift, mask) in zip(self.tables, self.pieces):
            table.setdefault((value >> shift) & mask, []).append(index)

    def find(self, phash: str, sha256: str) -> tuple[int, str, str | None] | None:
        """The kept image this one duplicates: (id, sha256, content type), or None."""
        if sha256 in self.by_sha:
            _, image_id, sha, content_type = self.entries[self.by_sha[sha256]]
            return image_id, sha, content_type
        value = int(phash, 16)
        for table, (shift, mask) in zip(self.tables, self.pieces):
            for index in table.get((value >> shift) & mask, ()):
                other, image_id, sha, content_type = self.entries[index]
                if (other ^ value).bit_count() <= self.bits:
                    return image_id, sha, content_type
        return None


def _pieces(bits: int) -> list[tuple[int, int]]:
    n = bits + 1
    edges = [round(i * 64 / n) for i in range(n + 1)]
    return [(edges[i], (1 << (edges[i + 1] - edges[i])) - 1) for i in range(n)]


class _Collector:
    """In the parent: near-duplicate decisions, counts, and batched hand-over to the sink."""

    def __init__(self, sink, index: NearDuplicateIndex, discard, batch_size: int, flush_seconds: float,
                 progress=None):
        self.sink, self.index, self.discard = sink, index, discard
        self.batch_size, self.flush_seconds, self.progress = batch_size, flush_seconds, progress
        self.pending: list[ImageResult] = []
        self.last_flush = time.monotonic()
        self.counts = {"stored": 0, "duplicate": 0, "error": 0, "rejected": 0, "disallowed": 0, "deferred": 0}
        self.failures: list[tuple[str, str]] = []  # the first few (url, reason), for the stage's report

    def take(self, results: Iterable[ImageResult]) -> None:
        for result in results:
            if result.status == "stored":
                self._dedupe(result)
            self.counts[result.status] += 1
            if result.status in ("error", "rejected") and len(self.failures) < 10:
                self.failures.append((result.url, result.error or result.status))
            self.pending.append(result)
            if self.progress:
                self.progress(1)
        if len(self.pending) >= self.batch_size or time.monotonic() - self.last_flush > self.flush_seconds:
            self.flush()

    def _dedupe(self, result: ImageResult) -> None:
        original = self.index.find(result.phash, result.sha256)
        if original is None:
            self.index.add(result.image_id, result.phash, result.sha256, result.content_type)
            return
        original_id, original_sha, original_type = original
        if original_sha != result.sha256 and self.discard is not None and result.sha256 not in self.index.by_sha:
            self.discard(result.key)  # a near-duplicate's own bytes are not kept
        result.status, result.duplicate_of = "duplicate", original_id
        result.sha256, result.content_type = original_sha, original_type

    def flush(self) -> None:
        if self.pending:
            self.sink(self.pending)
            self.pending = []
        self.last_flush = time.monotonic()


def fetch_images(tasks: list[tuple[int, str]], *, client: PoliteClient, store_factory: Callable[[], BlobStore],
                 sink: Callable[[list[ImageResult]], None], options: ImageOptions | None = None,
                 near_duplicate_bits: int | None = 2, known: Iterable[tuple[int, str, str, str | None]] = (),
                 discard: Callable[[str], None] | None = None, processes: int | None = None,
                 threads: int = 32, batch_size: int = 500, flush_seconds: float = 2.0,
                 progress: Callable[[int], None] | None = None, local_roots: Iterable = ()) -> dict:
    """Fetch ``tasks`` ((image id, url) pairs) and hand ImageResults to ``sink`` in batches.

    ``known``: (image id, phash, sha256, content type) of images already kept, for near-duplicates.
    ``store_factory``: builds the blob store (called once per worker process; it must pickle).
    ``processes``: worker processes (None: one per core for large jobs, none for small ones; 0: threads
    in this process). Worker processes rebuild the client, its pacer included: a shared pacer keeps
    one pace per host across them; a client with a process-local pacer and a minimum delay runs in
    this process instead. ``local_roots``: folders file:// images may be read from (file imports).
    Returns counts per status, ``attempted`` and ``failures`` (the first ten (url, reason))."""
    options = options or ImageOptions()
    index = NearDuplicateIndex(near_duplicate_bits)
    for image_id, phash, sha256, content_type in known:
        if phash and sha256:
            index.add(image_id, phash, sha256, content_type)
    collector = _Collector(sink, index, discard, batch_size, flush_seconds, progress)
    if processes is None:
        processes = (os.cpu_count() or 1) if len(tasks) >= 1000 else 0
    local_roots = tuple(str(root) for root in local_roots)
    if (client.min_delay > 0 and not client.pacer.shared) or processes <= 1 or len(tasks) < 2 * processes:
        _run_threads(tasks, client, store_factory(), options, threads, collector, local_roots)
    else:
        _run_processes(tasks, client, store_factory, options, threads, processes, collector, local_roots)
    collector.flush()
    log.info("images: %s", collector.counts)
    return {**collector.counts, "attempted": sum(collector.counts.values()) - collector.counts["deferred"],
            "failures": collector.failures}


def _run_threads(tasks, client, store, options, threads, collector, local_roots) -> None:
    """Results are taken as they complete (not in order): a slow image holds back no other's record."""
    from concurrent.futures import FIRST_COMPLETED, wait

    with ThreadPoolExecutor(threads) as pool:
        running, queued = set(), iter(tasks)
        for task in queued:  # at most a few per thread queued at once, so memory stays flat
            running.add(pool.submit(process_one, client, store, options, *task, local_roots))
            if len(running) >= threads * 4:
                break
        while running:
            done, running = wait(running, timeout=collector.flush_seconds, return_when=FIRST_COMPLETED)
            collector.take([future.result() for future in done])
            for task in queued:
                running.add(pool.submit(process_one, client, store, options, *task, local_roots))
                if len(running) >= threads * 4:
                    break



@contextmanager
def _main_script_hidden():
    """Spawned workers need only this module; they must not re-run the parent's main script, which
    under Airflow is the `airflow` command itself (multiprocessing re-runs ``__main__.__file__``)."""
    main = sys.modules["__main__"]
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _run_processes(tasks, client, store_factory, options, threads, processes, collector, local_roots) -> None:
    context = multiprocessing.get_context("spawn")  # no fork of a parent that holds threads and connections
    task_queue, result_queue = context.Queue(maxsize=processes * 8), context.Queue()
    config = client.config()
    config["per_host"] = max(1, client.per_host // processes)  # the host's budget, shared out
    workers = [context.Process(target=_worker, daemon=True, args=(
        task_queue, result_queue, config, options, store_factory, threads, os.getpid(), local_roots))
        for _ in range(processes)]
    with _main_script_hidden():
        for worker in workers:
            worker.start()

    def feed():
        for start in range(0, len(tasks), 32):
            task_queue.put(tasks[start:start + 32])
        for _ in workers:
            task_queue.put(None)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    finished = 0
    try:
        while finished < len(workers):
            try:
                batch = result_queue.get(timeout=1.0)
            except queue.Empty:
                if not any(worker.is_alive() for worker in workers):
                    raise RuntimeError("image worker processes died")
                collector.take([])
                continue
            if batch is None:
                finished += 1
            else:
                collector.take(ImageResult(**row) for row in batch)
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()


def _worker(task_queue, result_queue, config, options, store_factory, threads, parent_pid, local_roots) -> None:
    client, store = PoliteClient(**config), store_factory()
    out: list[dict] = []
    out_lock = threading.Lock()
    local: queue.Queue = queue.Queue(maxsize=threads * 2)

    def run():
        while (task := local.get()) is not None:
            row = process_one(client, store, options, *task, local_roots).__dict__
            with out_lock:
                out.append(row)

    def flush():
        with out_lock:
            batch = out[:]
            out.clear()
        if batch:
            result_queue.put(batch)

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    last = time.monotonic()
    while True:
        try:
            chunk = task_queue.get(timeout=0.25)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the parent was killed: stop, do not linger
                os._exit(1)
            flush()
            continue
        if chunk is None:
            break
        if os.getppid() != parent_pid:
            os._exit(1)
        for task in chunk:
            local.put(task)
        if time.monotonic() - last > 0.1 or len(out) >= 256:
            flush()
            last = time.monotonic()
    for _ in pool:
        local.put(None)
    for thread in pool:
        while thread.is_alive():
            thread.join(timeout=0.1)
            flush()
    flush()
    result_queue.put(None)
