"""The pipeline's stages, one function each. The CLI and the Airflow DAGs both call these; each
reads the settings, joins the packages (crawlers write through curation's catalog) and returns a
small dict of counts and paths, which is what a DAG passes on in XCom."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from image2song.settings import Settings

log = logging.getLogger("image2song")

# A stage fails only past its threshold AND past this many failures: a handful of flaky records are
# retried by the next run instead of failing every run.
MIN_FAILURES_TO_FAIL = 5


class StageFailed(RuntimeError):
    """A stage whose failure rate crossed its threshold: the task fails (and is retried by Airflow),
    and the run never reaches ``build_snapshot``. What succeeded is kept; failed records stay marked
    on their rows and are tried again."""

    def __init__(self, stage: str, message: str, counts: dict):
        super().__init__(message)
        self.stage, self.counts = stage, counts


def _cause(service: str, failures: list) -> str:
    """Name what went wrong from the recorded reasons: the service unreachable, erroring, or else the
    most common reason."""
    from collections import Counter

    reasons = [str(reason) for _, reason in failures]
    if not reasons:
        return f"{service} failed"
    if sum(r.startswith("object store") for r in reasons) * 2 > len(reasons):
        return "object store unavailable"
    unreachable = ("Connection", "connection", "unreachable", "Timeout", "timed out", "Max retries", "refused",
                   "NotADirectory", "FileNotFound", "PermissionError", "No such file")
    if sum(any(word in r for word in unreachable) for r in reasons) * 2 > len(reasons):
        return f"{service} unreachable"
    if sum(r.startswith("HTTP 5") or " HTTP 5" in r for r in reasons) * 2 > len(reasons):
        return f"{service} answered with server errors"
    common, _ = Counter(r.split(":", 1)[0][:80] for r in reasons).most_common(1)[0]
    return f"{service}: {common}"


def gives_up(max_rate: float):
    """``(failed, total) -> bool``: true once the stage will fail whatever the rest does, so that a stage
    stops asking a service that is down instead of waiting out every request's retries."""
    return lambda failed, total: failed >= MIN_FAILURES_TO_FAIL and failed > max_rate * total


def check_failures(stage: str, counts: dict, max_rate: float, *, service: str, unit: str) -> dict:
    """Raise ``StageFailed`` when ``counts["failed"]`` of ``counts["attempted"]`` is past ``max_rate``
    (and at least ``MIN_FAILURES_TO_FAIL``); else log and return ``counts`` with the rate added."""
    attempted, failed = counts["attempted"], counts["failed"]
    counts["failure_rate"] = round(failed / attempted, 4) if attempted else 0.0
    if failed:
        worst = "; ".join(f"{key}: {reason}" for key, reason in counts.get("failures", [])[:3])
        summary = (f"{_cause(service, counts.get('failures', []))}: {failed:,} of {attempted:,} {unit} failed "
                   f"({counts['failure_rate']:.1%}, threshold {max_rate:.0%})")
        if counts.get("given_up"):
            summary += f"; gave up on the {counts['given_up']:,} not tried yet"
        if counts["failure_rate"] > max_rate and failed >= MIN_FAILURES_TO_FAIL:
            raise StageFailed(stage, f"{stage}: {summary}; first: {worst}", counts)
        log.warning("%s: %s, under the threshold: they are tried again next run; first: %s", stage, summary, worst)
    return counts


def _progress(total: int | None, desc: str, unit: str):
    """A progress bar on a terminal; elsewhere (an Airflow task's log) an INFO line now and then."""
    import sys

    from tqdm import tqdm

    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, mininterval=2)
    return _LoggedProgress(total, desc, unit)


class _LoggedProgress:
    def __init__(self, total: int | None, desc: str, unit: str, every: float = 15.0):
        import time

        self.total, self.desc, self.unit, self.every, self.n = total, desc, unit, every, 0
        self.clock = time.monotonic
        self.last = self.clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every:
            self.last = self.clock()
            log.info("%s: %s %s", self.desc, f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}", self.unit)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        log.info("%s: %s %s done", self.desc, f"{self.n:,}", self.unit)


def _client(settings: Settings, **options):
    from crawlers.http import PoliteClient

    return PoliteClient(settings.user_agent, **options)


def migrate(settings: Settings) -> dict:
    from curation.catalog import upgrade

    return {"db_url": settings.db_url, "revision": upgrade(settings.db_url)}


def _shards(pending: int, shard_size: int, max_shards: int) -> list[dict]:
    n = max(1, min(max_shards, -(-pending // max(1, shard_size))))
    return [{"shard": i, "shards": n} for i in range(n)]


def _post_source(settings: Settings, source: str | None):
    """The sharing site (default), a JSON feed (``feed:URL``) or a file import (``file:PATH``)."""
    from crawlers.sharing_site import HtmlSiteSource
    from crawlers.sources import FileImportSource, JsonFeedSource

    if source is None:
        return "sharing-site", HtmlSiteSource(settings.site_url)
    kind, _, where = source.partition(":")
    if kind == "feed":
        return f"feed:{where}", JsonFeedSource(where)
    if kind == "file":
        found = FileImportSource(where)
        return f"file:{found.path.name}", found
    raise ValueError(f"unknown post source {source!r} (use feed:URL or file:PATH)")


def crawl(settings: Settings, *, max_pages: int | None = None, workers: int = 8, shard: int = 0,
          shards: int = 1, discover: bool = True, source: str | None = None) -> dict:
    """Walk the source's listing (unless ``discover=False``), then fetch this shard's pending post pages
    into the catalog (a batch of posts and their URLs' states per transaction: resumable after a kill)."""
    from crawlers.sources import crawl_posts
    from curation.crawl_store import CatalogCrawlState, ensure_source

    name, post_source = _post_source(settings, source)
    source_id = ensure_source(settings.db_url, name, post_source.kind, post_source.base_url)
    state = CatalogCrawlState(settings.db_url, source_id, shard=shard, shards=shards)
    max_rate = settings.failure_threshold("crawl_posts")
    with _progress(None, f"posts {shard + 1}/{shards}", "posts") as bar:
        counts = crawl_posts(post_source, _client(settings), state, discover=discover, max_pages=max_pages,
                             workers=workers, progress=bar.update, give_up=gives_up(max_rate))
    counts["crawl_state"] = state.counts()
    log.info("crawl: %s", {k: v for k, v in counts.items() if k != "failures"})
    return check_failures("crawl_posts", counts, max_rate,
                          service=f"post source {post_source.base_url}", unit="post pages")


def plan_crawl(settings: Settings, *, max_pages: int | None = None, shard_size: int = 2000,
               max_shards: int = 16, source: str | None = None) -> dict:
    """Walk the listing once and cut the pending post URLs into shards (for dynamic task mapping)."""
    from curation.crawl_store import CatalogCrawlState, ensure_source

    name, post_source = _post_source(settings, source)
    source_id = ensure_source(settings.db_url, name, post_source.kind, post_source.base_url)
    state = CatalogCrawlState(settings.db_url, source_id)
    discovered = post_source.discover(_client(settings), state, max_pages=max_pages)
    pending = len(state.pending("post"))
    return {"discovered": discovered, "pending": pending, "shards": _shards(pending, shard_size, max_shards)}


def plan_images(settings: Settings, *, shard_size: int = 20000, max_shards: int = 16) -> dict:
    from curation.crawl_store import image_tasks

    pending = len(image_tasks(settings.db_url))
    return {"pending": pending, "shards": _shards(pending, shard_size, max_shards)}


def fetch_images(settings: Settings, *, workers: int = 32, shard: int = 0, shards: int = 1,
                 resize: int | None = None, quality: int = 90, near_duplicate_bits: int | None = 2,
                 processes: int | None = None, per_host: int = 8, min_delay: float = 0.0) -> dict:
    """Download, validate and store every image of this shard not stored yet (content-addressed);
    near-duplicates are linked to the image they duplicate. ``workers``: downloads in flight per
    process; ``processes``: worker processes (default: one per core for large jobs)."""
    import functools

    from crawlers.image_pipeline import fetch_images as run
    from crawlers.images import ImageOptions
    from curation.crawl_store import image_tasks, kept_images, record_images
    from curation.object_store import ObjectStore

    store = ObjectStore(settings.object_store)
    tasks = image_tasks(settings.db_url, shard=shard, shards=shards)

    def discard(key: str) -> None:
        try:
            store.fs.rm(f"{store.root}/{key}")
        except FileNotFoundError:
            pass

    failures: list[tuple[str, str]] = []

    def sink(results: list) -> None:
        record_images(settings.db_url, results)  # errors are kept on their rows (and retried next run)
        failures.extend((r.url, r.error) for r in results if r.status == "error" and len(failures) < 10)

    with _progress(len(tasks), f"images {shard + 1}/{shards}", "images") as bar:
        counts = run(tasks, client=_client(settings, per_host=per_host, min_delay=min_delay),
                     store_factory=functools.partial(ObjectStore, settings.object_store), sink=sink,
                     options=ImageOptions(resize=resize, quality=quality),
                     near_duplicate_bits=near_duplicate_bits, known=kept_images(settings.db_url) if tasks else (),
                     discard=discard, processes=processes, threads=workers, progress=bar.update)
    log.info("images: %s", counts)
    # Rejected (not an image, gone for good) and disallowed images are verdicts, not failures.
    result = {"stored": counts["stored"] + counts["duplicate"], "rejected": counts["rejected"] + counts["disallowed"],
              "attempted": len(tasks), "failed": counts["error"], "failures": failures}
    return check_failures("fetch_images", result, settings.failure_threshold("fetch_images"),
                          service="image hosts", unit="images")


def reconcile_objects(settings: Settings) -> dict:
    """After the image shards (never beside one): delete blobs no catalog row refers to, re-queue images
    whose blob is missing. A retried or killed ``fetch_images`` leaves nothing behind once this ran."""
    from curation.crawl_store import reconcile_objects as reconcile
    from curation.object_store import ObjectStore

    counts = reconcile(settings.db_url, ObjectStore(settings.object_store))
    log.info("object store reconciled with the catalog: %s", counts)
    return counts


def fetch_lyrics(settings: Settings, *, workers: int = 4, provider=None, cache: bool = True) -> dict:
    """Ask the lyric provider for every song without a candidate yet; answers are cached in the catalog
    (keyed by the normalized title, artist and duration), so a re-run asks the provider nothing twice."""
    from crawlers.http import Disallowed, FetchError
    from crawlers.lyrics import CachedProvider, LrclibProvider
    from curation.crawl_store import songs_without_lyrics, store_lyric
    from curation.lyrics.cache import CatalogLyricCache

    service = f"lyric provider {provider.name}" if provider else f"lyric API {settings.lyrics_url}"
    provider = provider or LrclibProvider(settings.lyrics_url, _client(settings))
    if cache:
        provider = CachedProvider(provider, CatalogLyricCache(settings.db_url))
    songs = songs_without_lyrics(settings.db_url, provider.name)

    def one(song: dict):  # in a worker: reads only; the catalog is written from this thread below
        try:
            if cache:
                hit, cached = provider.lookup(song["title"], song["artist"], song["album"], song["duration"])
            else:
                hit, cached = provider.find(song["title"], song["artist"], song["album"], song["duration"]), True
            return song, hit, cached, None
        except (FetchError, Disallowed) as error:
            return song, None, False, f"{type(error).__name__}: {error}"

    found = missing = errors = asked = 0
    failures: list[tuple[str, str]] = []
    max_rate = settings.failure_threshold("fetch_lyrics")
    give_up = gives_up(max_rate)
    with ThreadPoolExecutor(workers) as pool, _progress(len(songs), "lyrics", "songs") as bar:
        futures = [pool.submit(one, song) for song in songs]
        for future in futures:
            song, hit, cached, error = future.result()
            asked += 1
            bar.update(1)
            if error:  # not an answer: the song keeps no candidate and is asked again next run
                errors += 1
                log.debug("lyrics for %r: %s", song["title"], error)
                if len(failures) < 10:
                    failures.append((f"song {song['id']} {song['title']!r}", error))
                if give_up(errors, len(songs)):
                    for rest in futures:
                        rest.cancel()
                    break
                continue
            if not cached:
                provider.remember(song["title"], song["artist"], song["duration"], hit)
            store_lyric(settings.db_url, song["id"], provider.name, hit)
            found, missing = found + (hit is not None), missing + (hit is None)
    counts = {"songs": len(songs), "found": found, "not_found": missing, "errors": errors,
              "attempted": asked, "failed": errors, "failures": failures, "given_up": len(songs) - asked}
    if cache:
        counts.update(cache_hits=provider.hits, cache_misses=provider.misses)
    log.info("lyrics fetched: %s", {k: v for k, v in counts.items() if k != "failures"})
    return check_failures("fetch_lyrics", counts, max_rate, service=service, unit="songs")


def filter_lyrics(settings: Settings, config=None) -> dict:
    """Judge every pending lyric candidate (``curation.lyrics.filters.FilterConfig`` holds the thresholds);
    returns and logs the run's counts: judged, approved, rejected, review, and per reason kind."""
    from curation.lyrics.filters import FilterConfig, filter_pending

    counts = filter_pending(settings.db_url, config or FilterConfig())
    log.info("lyric verdicts: %d judged, %d approved, %d rejected (%s), %d sent to review (%s)",
             counts["judged"], counts["approved"], counts["rejected"],
             ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in counts.items() if k.startswith("rejected:")) or "none",
             counts["review"],
             ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in counts.items() if k.startswith("review:")) or "none")
    return counts


def enqueue_review(settings: Settings) -> dict:
    from curation.review.queue import enqueue_reviews

    return enqueue_reviews(settings.db_url)


def build_snapshot(settings: Settings, *, test_songs: int = 100, min_posts: int = 5,
                   posts_per_song: int = 5, test_images_per_song: int = 1,
                   near_duplicate_bits: int | None = 4, seed: int | None = None) -> dict:
    """Publish a snapshot after the recipe (default: the paper's protocol); unchanged data publish nothing."""
    from curation.snapshots import Recipe, build_snapshot as build

    recipe = Recipe(min_posts=min_posts, posts_per_song=posts_per_song, test_songs=test_songs,
                    test_images_per_song=test_images_per_song, near_duplicate_bits=near_duplicate_bits,
                    seed=settings.seed if seed is None else seed)
    return build(settings.db_url, settings.snapshots, recipe)


def run_dir(settings: Settings, snapshot_version: str, split: str) -> Path:
    return settings.runs / f"{snapshot_version}-split-{split}"


def extract_tags(settings: Settings, snapshot_path: str) -> dict:
    """Tag every image of the snapshot; tags are kept per snapshot and reused across runs."""
    from modeling.tagging import extract_tags as tag

    out = settings.home / "tags" / f"{Path(snapshot_path).name}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    return {**tag(snapshot_path, settings.object_store, out), "tags_path": str(out)}


def train(settings: Settings, snapshot_path: str, tags_path: str, *, split: str = "a", epochs: int = 5,
          attention: bool = False) -> dict:
    from modeling.training import train as fit

    out = run_dir(settings, Path(snapshot_path).name, split)
    result = fit(snapshot_path, tags_path, out, split=split, epochs=epochs, attention=attention,
                 seed=settings.seed, word_vectors=settings.word_vectors)
    return {**result, "model_dir": str(out)}


def evaluate(settings: Settings, model_dir: str, snapshot_path: str, tags_path: str) -> dict:
    from modeling.evaluation import evaluate as score

    return score(model_dir, snapshot_path, tags_path, out_dir=model_dir)


def resolve_snapshot(settings: Settings, snapshot: str | None = None) -> str:
    """A snapshot: the one named (a version, a folder or an fsspec URL), else the latest published."""
    from curation.snapshots import latest_snapshot

    if snapshot:
        import fsspec

        candidates = [snapshot] if "://" in snapshot or Path(snapshot).is_dir() else []
        candidates.append(f"{str(settings.snapshots).rstrip('/')}/{snapshot}")
        for candidate in candidates:
            fs, root = fsspec.core.url_to_fs(candidate)
            if fs.exists(f"{root.rstrip('/')}/manifest.json"):
                return str(Path(root)) if "://" not in candidate else candidate
        raise FileNotFoundError(f"no snapshot {snapshot!r} (looked for manifest.json in {', '.join(candidates)})")
    latest = latest_snapshot(settings.db_url)
    if latest is None:
        raise LookupError("no snapshot yet: run `image2song snapshot build` (or the refresh DAG) first")
    return latest["path"]


def _cell(metrics: dict, key: str) -> str:
    # R@K is left out where K reaches the number of candidates (it would be 100% by construction).
    return f"{metrics[key]:.1f}" if key in metrics else "–"


def report(settings: Settings, evaluations: list[dict], snapshot_path: str) -> dict:
    """One Markdown report per snapshot: a row per split and direction, the model next to chance."""
    rows = sorted(evaluations, key=lambda e: e["split"])
    lines = [f"# Evaluation of snapshot {Path(snapshot_path).name}", "",
             "R@K in %; ranks are 1-based (MedR: median rank of the true item, lower is better).", "",
             "| split | direction | queries | candidates | R@1 | R@5 | R@10 | MedR | chance R@1 | chance R@10 | chance MedR |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in rows:
        for key, direction in (("image_to_song", "image → song"), ("song_to_image", "song → image")):
            d = e[key]
            m, c = d["model"], d["chance"]
            lines.append(f"| {e['split'].upper()} | {direction} | {d['n_queries']} | {d['n_candidates']} | "
                         f"{_cell(m, 'R@1')} | {_cell(m, 'R@5')} | {_cell(m, 'R@10')} | {_cell(m, 'MedR')} | "
                         f"{_cell(c, 'R@1')} | {_cell(c, 'R@10')} | {_cell(c, 'MedR')} |")
    out = settings.home / "reports" / f"{Path(snapshot_path).name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return {"report": str(out), "snapshot": snapshot_path,
            "splits": {e["split"]: {"model_dir": e["model_dir"], **e["image_to_song"]["model"]} for e in rows},
            "table": "\n".join(lines[4:])}
