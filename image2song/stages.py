"""The pipeline's stages, one function each. The CLI and the Airflow DAGs both call these; each
reads the settings, joins the packages (crawlers write through curation's catalog) and returns a
small dict of counts and paths, which is what a DAG passes on in XCom."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from image2song.settings import Settings
from modeling import BASELINES

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


def _clip(text: str, limit: int = 300) -> str:
    """A long error cut in its middle: its head says what failed, its tail why (the root cause)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit // 3]} … {text[-(limit - limit // 3):]}"


def gives_up(max_rate: float):
    """``(failed, total) -> bool``: true once the stage will fail whatever the rest does, so that a stage
    stops asking a service that is down instead of waiting out every request's retries."""
    return lambda failed, total: failed >= MIN_FAILURES_TO_FAIL and failed > max_rate * total


def check_failures(stage: str, counts: dict, max_rate: float, *, service: str, unit: str) -> dict:
    """Raise ``StageFailed`` when ``counts["failed"]`` of ``counts["attempted"]`` is past ``max_rate``
    (and at least ``MIN_FAILURES_TO_FAIL``); else log and return ``counts`` with the rate added."""
    attempted, failed = counts["attempted"], counts["failed"]
    counts["failure_rate"] = round(failed / attempted, 4) if attempted else 0.0
    fails = gives_up(max_rate)(failed, attempted)  # the very test a stage's early stop uses
    if failed:
        worst = "; ".join(f"{key}: {reason}" for key, reason in counts.get("failures", [])[:3])
        summary = (f"{_cause(service, counts.get('failures', []))}: {failed:,} of {attempted:,} {unit} failed "
                   f"({counts['failure_rate']:.1%}, threshold {max_rate:.0%})")
        if counts.get("given_up"):
            summary += f"; gave up on the {counts['given_up']:,} not tried yet"
        if fails:
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
    """The one HTTP client of a stage: the operator's contact in its User-Agent, the egress policy's
    allowed networks, and one pace per host booked in the catalog (shared by every process and shard)."""
    from crawlers.http import PoliteClient
    from curation.crawl_store import CatalogPacer

    options = {"allow": settings.allow_networks, "min_delay": settings.host_delay,
               "pacer": CatalogPacer(settings.db_url), **options}
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


def crawl(settings: Settings, *, max_pages: int | None = None, max_depth: int | None = None, workers: int = 8,
          shard: int = 0, shards: int = 1, discover: bool = True, source: str | None = None) -> dict:
    """Fetch this shard's pending post pages into the catalog while walking the source's listing (unless
    ``discover=False``; the walk is bounded by ``max_pages`` and ``max_depth``). Outcomes are recorded
    as they complete, a small batch of posts and their URLs' states per transaction: resumable after a
    kill. Returns ``attempted``, ``failed``, ``failures`` and other counts."""
    from crawlers.sources import crawl_posts
    from curation.crawl_store import CatalogCrawlState, ensure_source

    name, post_source = _post_source(settings, source)
    source_id = ensure_source(settings.db_url, name, post_source.kind, post_source.base_url)
    state = CatalogCrawlState(settings.db_url, source_id, shard=shard, shards=shards)
    max_rate = settings.failure_threshold("crawl_posts")
    with _progress(None, f"posts {shard + 1}/{shards}", "posts") as bar:
        counts = crawl_posts(post_source, _client(settings), state, discover=discover, max_pages=max_pages,
                             max_depth=max_depth, workers=workers, progress=bar.update, give_up=gives_up(max_rate))
    counts["crawl_state"] = state.counts()
    log.info("crawl: %s", {k: v for k, v in counts.items() if k != "failures"})
    return check_failures("crawl_posts", counts, max_rate,
                          service=f"post source {post_source.base_url}", unit="post pages")


def plan_crawl(settings: Settings, *, max_pages: int | None = None, max_depth: int | None = None,
               shard_size: int = 2000, max_shards: int = 16, source: str | None = None) -> dict:
    """Walk the listing once and cut the pending post URLs into shards (for dynamic task mapping)."""
    from crawlers.sources import discover_posts
    from curation.crawl_store import CatalogCrawlState, ensure_source

    name, post_source = _post_source(settings, source)
    source_id = ensure_source(settings.db_url, name, post_source.kind, post_source.base_url)
    state = CatalogCrawlState(settings.db_url, source_id)
    discovered = discover_posts(post_source, _client(settings), state, max_pages=max_pages, max_depth=max_depth)
    pending = len(state.pending("post"))
    return {"discovered": discovered, "pending": pending, "shards": _shards(pending, shard_size, max_shards)}


def plan_images(settings: Settings, *, shard_size: int = 20000, max_shards: int = 16) -> dict:
    from curation.crawl_store import image_tasks

    pending = len(image_tasks(settings.db_url))
    return {"pending": pending, "shards": _shards(pending, shard_size, max_shards)}


def fetch_images(settings: Settings, *, workers: int = 32, shard: int = 0, shards: int = 1,
                 resize: int | None = None, quality: int = 90, near_duplicate_bits: int | None = 2,
                 processes: int | None = None, per_host: int = 8, min_delay: float | None = None) -> dict:
    """Download, validate and store every image of this shard not stored yet (content-addressed);
    near-duplicates are linked to the image they duplicate. ``workers``: downloads in flight per
    process; ``processes``: worker processes (default: one per core for large jobs); ``min_delay``:
    seconds between requests to one non-loopback host (default: the host-delay setting). Local files
    are read only for file-import sources, from their own folders. Returns ``stored``, ``attempted``,
    ``failed`` and ``failures`` (the first ten (url, reason))."""
    import functools

    from crawlers.image_pipeline import fetch_images as run
    from crawlers.images import ImageOptions
    from curation.crawl_store import file_import_roots, image_tasks, kept_images, record_images
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
        pace = {} if min_delay is None else {"min_delay": min_delay}
        counts = run(tasks, client=_client(settings, per_host=per_host, **pace),
                     store_factory=functools.partial(ObjectStore, settings.object_store), sink=sink,
                     options=ImageOptions(resize=resize, quality=quality),
                     near_duplicate_bits=near_duplicate_bits, known=kept_images(settings.db_url) if tasks else (),
                     discard=discard, processes=processes, threads=workers, progress=bar.update,
                     local_roots=file_import_roots(settings.db_url))
    log.info("images: %s", counts)
    # Rejected (not an image, gone for good) and disallowed images are verdicts, not failures; deferred
    # ones (robots.txt unavailable) wait for the next run.
    result = {"stored": counts["stored"] + counts["duplicate"], "rejected": counts["rejected"] + counts["disallowed"],
              "attempted": counts["attempted"], "failed": counts["error"], "deferred": counts["deferred"],
              "failures": failures}
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


def fetch_lyrics(settings: Settings, *, workers: int = 4, provider=None, cache: bool = True,
                 deadline: float = 30.0, max_attempts: int | None = None) -> dict:
    """Ask the lyric provider for every song without an answer yet; answers are cached in the catalog
    (keyed by the normalized title, artist and duration), so a re-run asks the provider nothing twice.

    One song never stops the stage: a provider failure (after the HTTP client's retries, within the
    per-song ``deadline``) or any other error is stored on that song's candidate; after ``max_attempts``
    failed runs the song goes to a curator ("provider error: …"). Returns ``attempted``, ``failed`` and
    ``failures`` (the first ten (song, reason)) beside the counts."""
    from crawlers.lyrics import CachedProvider, LrclibProvider
    from curation.crawl_store import LYRIC_ATTEMPTS, songs_without_lyrics, store_lyric, store_lyric_failure
    from curation.lyrics.cache import CatalogLyricCache

    service = f"lyric provider {provider.name}" if provider else f"lyric API {settings.lyrics_url}"
    max_attempts = max_attempts or LYRIC_ATTEMPTS
    if provider is None:
        # Short read timeouts and few retries: the per-song deadline, not the client, bounds a stall.
        client = _client(settings, read_timeout=min(10.0, deadline), retries=2)
        provider = LrclibProvider(settings.lyrics_url, client, deadline=deadline)
    if cache:
        provider = CachedProvider(provider, CatalogLyricCache(settings.db_url))
    songs = songs_without_lyrics(settings.db_url, provider.name, max_attempts)

    def one(song: dict):  # in a worker: reads only; the catalog is written from this thread below
        try:
            if cache:
                hit, cached = provider.lookup(song["title"], song["artist"], song["album"], song["duration"])
            else:
                hit, cached = provider.find(song["title"], song["artist"], song["album"], song["duration"]), True
            return song, hit, cached, None
        except Exception as error:  # noqa: BLE001 - whatever one song raises is stored on that song
            return song, None, False, f"{type(error).__name__}: {error}"

    found = missing = sent_to_review = asked = 0
    failures: list[tuple[str, str]] = []
    max_rate = settings.failure_threshold("fetch_lyrics")
    give_up = gives_up(max_rate)
    with ThreadPoolExecutor(workers) as pool, _progress(len(songs), "lyrics", "songs") as bar:
        futures = [pool.submit(one, song) for song in songs]
        for future in futures:
            song, hit, cached, error = future.result()
            asked += 1
            bar.update(1)
            if error is None:
                try:
                    if not cached:
                        provider.remember(song["title"], song["artist"], song["duration"], hit)
                    store_lyric(settings.db_url, song["id"], provider.name, hit)
                    found, missing = found + (hit is not None), missing + (hit is None)
                    continue
                except Exception as store_error:  # noqa: BLE001 - stored on the song below
                    error = f"{type(store_error).__name__}: {store_error}"
            failures.append((f"song {song['id']} {song['title']!r}", _clip(error)))
            verdict = store_lyric_failure(settings.db_url, song["id"], provider.name, error, max_attempts)
            sent_to_review += verdict == "review"
            log.debug("lyrics for song %s %r: %s", song["id"], song["title"], error)
            if give_up(len(failures), len(songs)):  # the stage fails whatever the rest does: stop asking
                for rest in futures:
                    rest.cancel()
                break
    counts = {"songs": len(songs), "attempted": asked, "found": found, "not_found": missing,
              "failed": len(failures), "errors": len(failures), "failures": failures[:10],
              "provider_errors_to_review": sent_to_review, "given_up": len(songs) - asked}
    if cache:
        counts.update(cache_hits=provider.hits, cache_misses=provider.misses)
    log.info("lyrics fetched: %s", {k: v for k, v in counts.items() if k != "failures"})
    return check_failures("fetch_lyrics", counts, max_rate, service=service, unit="songs")


def filter_lyrics(settings: Settings, config=None) -> dict:
    """Judge every pending lyric candidate (``curation.lyrics.filters.FilterConfig`` holds the thresholds);
    returns and logs the run's counts: judged, approved, rejected, review, and per reason kind. A lyric
    that breaks a filter is that lyric's failure; past the stage's threshold the failed lyrics stay
    pending for the next run and the stage raises ``StageFailed``."""
    from curation.lyrics.filters import FilterConfig, filter_pending

    max_rate = settings.failure_threshold("filter_lyrics")
    counts = filter_pending(settings.db_url, config or FilterConfig(), stage_fails=gives_up(max_rate))
    log.info("lyric verdicts: %d judged, %d approved, %d rejected (%s), %d sent to review (%s)",
             counts["judged"], counts["approved"], counts["rejected"],
             ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in counts.items() if k.startswith("rejected:")) or "none",
             counts["review"],
             ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in counts.items() if k.startswith("review:")) or "none")
    return check_failures("filter_lyrics", counts, max_rate, service="lyric filters", unit="lyrics")


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
    return build(settings.db_url, settings.snapshots, recipe,
                 dataset={"license": settings.dataset_license, "maintainer": settings.maintainer,
                          "retention": settings.retention, "sources": [settings.site_url],
                          "lyrics_provider": settings.lyrics_url, "user_agent": settings.user_agent})


def extract_tags(settings: Settings, snapshot_path: str, *, vocabulary: str = "obj+attr", device: str = "auto",
                 batch_size: int = 64, workers: int | None = None, retry_errors: bool = False,
                 compact: bool | None = None) -> dict:
    """Tag the snapshot's images that the tag store lacks (each image is tagged once per tagger), then
    write the snapshot's views, one per vocabulary: ``tags_paths`` = {"obj", "attr", "obj+attr",
    "imagenet"} (those the backend has); ``tags_path`` is the view of ``vocabulary``. ``compact``: merge the
    store's parts afterwards (None: once the tagger has more than ``COMPACT_ABOVE_PARTS`` of them)."""
    from modeling.tags import extract_tags as tag

    options = {"checkpoint": settings.tag_checkpoint} if settings.tag_backend == "faster-rcnn" else {}
    views = settings.home / "tags" / "views" / Path(snapshot_path).name / settings.tag_backend
    result = tag(snapshot_path, settings.object_store, settings.tag_store or settings.home / "tags", views,
                 backend=settings.tag_backend, backend_options=options, device=device, batch_size=batch_size,
                 workers=workers, retry_errors=retry_errors, compact=compact)
    if vocabulary not in result["tags_paths"]:
        raise ValueError(f"the {settings.tag_backend} tagger has no {vocabulary!r} vocabulary; "
                         f"it has {', '.join(result['tags_paths'])}")
    return {**result, "tags_path": result["tags_paths"][vocabulary], "vocabulary": vocabulary}


def word_vectors(settings: Settings, snapshot_path: str | None = None, spec: str | None = None) -> str:
    """A word-vector spec that ``modeling.word_vectors.load_word_vectors`` loads: the packaged GloVe or a
    user's file as given; ``word2vec-english`` / ``word2vec-snapshot`` trained here once (on all packaged
    English text / on the snapshot's lyrics) and kept under ``<home>/word-vectors``."""
    from modeling.word_vectors import WORD2VEC_ENGLISH, WORD2VEC_SNAPSHOT, snapshot_texts, trained_word2vec

    spec = spec or settings.word_vectors
    cache = settings.home / "word-vectors"
    if spec == WORD2VEC_ENGLISH:
        from image2song.demo.material import packaged_english_texts

        return str(trained_word2vec(packaged_english_texts(), cache, "english", seed=settings.seed))
    if spec == WORD2VEC_SNAPSHOT:
        if snapshot_path is None:
            raise ValueError(f"{WORD2VEC_SNAPSHOT!r} word vectors need a snapshot to learn from")
        return str(trained_word2vec(snapshot_texts(snapshot_path), cache, f"snapshot-{Path(snapshot_path).name}",
                                    seed=settings.seed))
    return spec


# The first tag vocabulary gets every model and baseline; the others the paper's model alone (the paper's
# Table 2 compares its model across obj / attr / obj+attr), unless baselines_on is "every".
TRAIN_DEFAULTS = {"model": "bilstm+attention", "loss": "mse", "tag_vocabularies": ["obj+attr", "obj", "attr"],
                  "baselines_on": "first", "word_vectors": None, "epochs": 30, "bilstm_epochs": None, "seed": None,
                  "baselines": None}
BASELINES_ON = ("first", "every")


def train_params(settings: Settings, params: dict | None = None) -> dict:
    """The train run's parameters with the defaults filled in (word vectors and seed from the settings)."""
    p = {**TRAIN_DEFAULTS, **{k: v for k, v in (params or {}).items() if k in TRAIN_DEFAULTS and v is not None}}
    p["word_vectors"] = p["word_vectors"] or settings.word_vectors
    p["seed"] = settings.seed if p["seed"] is None else int(p["seed"])
    p["baselines"] = list(BASELINES) if p["baselines"] is None else list(p["baselines"])
    unknown = sorted(set(p["baselines"]) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}: choose from {list(BASELINES)}")
    p["tag_vocabularies"] = list(p["tag_vocabularies"])
    if not p["tag_vocabularies"] or len(set(p["tag_vocabularies"])) != len(p["tag_vocabularies"]):
        raise ValueError(f"tag_vocabularies must name each vocabulary once, at least one: {p['tag_vocabularies']}")
    if p["baselines_on"] not in BASELINES_ON:
        raise ValueError(f"baselines_on must be one of {BASELINES_ON}, not {p['baselines_on']!r}")
    return p


def experiment_models(params: dict, vocabulary: str) -> list[str]:
    """The models trained on ``vocabulary``: all of them (the paper's, the permuted-lyrics control, the
    baselines, the hybrid with the image-history neighbours) on the first vocabulary or with ``baselines_on="every"``, else
    the paper's model alone."""
    if vocabulary != params["tag_vocabularies"][0] and params["baselines_on"] == "first":
        return ["paper"]
    return ["paper", "permuted", *params["baselines"], *(["hybrid"] if "neighbours" in params["baselines"] else [])]


def run_dir(settings: Settings, snapshot_path: str, params: dict, run_id: str | None = None) -> Path:
    """The run's folder: keyed by snapshot and by the Airflow run id, or else a hash of the parameters."""
    from modeling.harness.runs import run_folder, run_key

    return run_folder(settings.runs, Path(snapshot_path).name, run_key(params, run_id), params)


def train(settings: Settings, snapshot_path: str, tags_paths: dict, *, split: str, vocabulary: str,
          params: dict | None = None, run_id: str | None = None, device: str = "auto", progress: bool = False) -> dict:
    """Fit the models of one split and tag vocabulary (:func:`experiment_models`: on the run's first vocabulary
    the paper's model, the permuted-lyrics control, the chosen baselines and the hybrid; on the others the
    paper's model); models, seed and configuration go to the run's experiment folder."""
    from modeling.harness.runs import experiment_folder
    from modeling.harness.training import train_models

    p = train_params(settings, params)
    if vocabulary not in tags_paths:
        raise ValueError(f"no tags for vocabulary {vocabulary!r}: the tags stage made {sorted(tags_paths)}")
    if vocabulary not in p["tag_vocabularies"]:
        raise ValueError(f"vocabulary {vocabulary!r} is not among the run's tag_vocabularies {p['tag_vocabularies']}")
    run = run_dir(settings, snapshot_path, p, run_id)
    out = experiment_folder(run, vocabulary, split)
    models = experiment_models(p, vocabulary)
    result = train_models(snapshot_path, tags_paths[vocabulary], out, split=split, vocabulary=vocabulary, models=models,
                          loss=p["loss"], attention=p["model"] == "bilstm+attention", epochs=p["epochs"],
                          bilstm_epochs=p["bilstm_epochs"], seed=p["seed"],
                          word_vectors=word_vectors(settings, snapshot_path, p["word_vectors"]),
                          word_vectors_cache=settings.home / "word-vectors", device=device, progress=progress)
    return {**result, "run_dir": str(run), "experiment_dir": str(out), "model_dir": str(out)}


def latest_model(settings: Settings, snapshot_path: str, split: str) -> str:
    """The folder of the paper's model of the snapshot's latest run for ``split``, on the run's first tag
    vocabulary (the one every model was trained on)."""
    from modeling.harness.runs import snapshot_runs

    for _, run in reversed(snapshot_runs(settings.runs, Path(snapshot_path).name)):
        order = json.loads((run / "run.json").read_text()).get("params", {}).get("tag_vocabularies") or []
        for vocabulary in [*order, *sorted(p.name for p in run.iterdir() if p.is_dir())]:
            if (run / vocabulary / f"split-{split}" / "paper.pt").exists():
                return str(run / vocabulary / f"split-{split}")
    raise LookupError(f"no trained model for split {split} of {Path(snapshot_path).name}: run `image2song train` first")


def model_vocabulary(model_dir: str) -> str:
    """The tag vocabulary a trained model's folder was trained on (from its ``training.json``)."""
    return json.loads((Path(model_dir) / "training.json").read_text())["config"]["vocabulary"]


def evaluate(settings: Settings, experiment_dir: str) -> dict:
    """Score every model of an experiment on its split's test part: R@K, MedR, bootstrap intervals, chance."""
    from modeling.harness.evaluation import evaluate_models

    summary = evaluate_models(experiment_dir)
    return {**summary, "experiment_dir": experiment_dir, "model_dir": experiment_dir}


def report(settings: Settings, evaluations: list[dict], snapshot_path: str) -> dict:
    """The run's report (Markdown + HTML + plots) and the snapshot's report of every run side by side; returns
    the headline figures (the model Asset's extra)."""
    from modeling.harness.reports import (headline, load_evaluations, vocabulary_table, write_run_report,
                                          write_snapshot_report)
    from modeling.harness.runs import snapshot_runs

    if not evaluations:
        raise ValueError("nothing to report: no evaluation")
    run = Path(evaluations[0]["experiment_dir"]).parent.parent
    meta = json.loads((run / "run.json").read_text())
    snapshot = Path(snapshot_path).name
    earlier = [(key, path) for key, path in snapshot_runs(settings.runs, snapshot) if path != run]
    out = write_run_report(run, snapshot=snapshot, run_key=run.name, params=meta["params"],
                           earlier=[(k, load_evaluations(p)) for k, p in earlier])
    latest = write_snapshot_report(settings.home / "reports", snapshot, [*earlier, (run.name, run)])
    # Printed: the models side by side where the baselines ran, then the paper's model on every vocabulary.
    lines = ["| tags | split | model | R@10 [95 % CI] | MedR [95 % CI] | chance R@10 | chance MedR |",
             "|---|---|---|---:|---:|---:|---:|"]
    headlines = {}
    for e in out["evaluations"]:
        for model in ("paper", "hybrid", "conse", "control", "neighbours"):
            h = headline(e, model)
            if h is None:
                continue
            headlines[f"{e['vocabulary']} {e['split']} {model}"] = {k: v for k, v in h.items() if "ci95" not in k}
            if set(e["models"]) == {"paper"}:
                continue  # the paper's model alone: in the vocabulary table below
            r10 = "–" if h["R@10"] is None else f"{h['R@10']:.1f} [{h['R@10 ci95'][0]:.1f}, {h['R@10 ci95'][1]:.1f}]"
            lines.append(f"| {e['vocabulary']} | {e['split'].upper()} | {model} | {r10} | {h['MedR']:.1f} "
                         f"[{h['MedR ci95'][0]:.1f}, {h['MedR ci95'][1]:.1f}] | {h['chance R@10'] or 0:.1f} | {h['chance MedR']:.1f} |")
    if len(lines) == 2:
        lines = []
    if len({e["vocabulary"] for e in out["evaluations"]}) > 1:
        lines += ["", "The paper's model per tag vocabulary (as the paper's Table 2), image → song:", "",
                  *vocabulary_table(out["evaluations"])]
    return {"report": out["report_md"], "report_html": out["report_html"], "snapshot_report": latest["report"],
            "snapshot": snapshot_path, "run_dir": str(run), "run_key": run.name,
            "splits": {f"{e['vocabulary']} {e['split']}": {"model_dir": str(run / e["vocabulary"] / f"split-{e['split']}")}
                       for e in out["evaluations"]},
            "headline": headlines, "table": "\n".join(lines).strip("\n")}


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
    latest = latest_snapshot(settings.db_url, settings.snapshots)
    if latest is None:
        raise LookupError("no snapshot yet: run `image2song snapshot build` (or the refresh DAG) first")
    return latest["path"]
