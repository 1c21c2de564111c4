"""The pipeline's stages, one function each. The CLI and the Airflow DAGs both call these; each
reads the settings, joins the packages (crawlers write through curation's catalog) and returns a
small dict of counts and paths, which is what a DAG passes on in XCom."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from image2song.settings import Settings

log = logging.getLogger("image2song")


def _client(settings: Settings):
    from crawlers.http import PoliteClient

    return PoliteClient(settings.user_agent)


def migrate(settings: Settings) -> dict:
    from curation.catalog import upgrade

    return {"db_url": settings.db_url, "revision": upgrade(settings.db_url)}


def crawl(settings: Settings, *, max_pages: int | None = None, workers: int = 8) -> dict:
    """Walk the sharing site's list pages, then fetch every new post page into the catalog."""
    from tqdm import tqdm

    from crawlers.sharing_site import discover, fetch_posts
    from curation.crawl_store import CatalogCrawlState, ensure_source, store_posts

    source_id = ensure_source(settings.db_url, "sharing-site", "html_site", settings.site_url)
    state = CatalogCrawlState(settings.db_url, source_id)
    client = _client(settings)
    discovered = discover(client, state, settings.site_url.rstrip("/") + "/posts?page=1", max_pages=max_pages)
    urls = state.pending("post")
    stored = 0
    for post in tqdm(fetch_posts(client, state, urls, workers=workers), total=len(urls), desc="posts",
                     unit="post", mininterval=2):
        stored += store_posts(settings.db_url, source_id, [post])
    return {"discovered": discovered, "fetched": len(urls), "new_posts": stored, "crawl_state": state.counts()}


def fetch_images(settings: Settings, *, workers: int = 8) -> dict:
    """Download, validate and store every image not stored yet (content-addressed)."""
    from tqdm import tqdm

    from crawlers.http import Disallowed, FetchError
    from crawlers.images import BadImage, fetch_image
    from curation.crawl_store import SUFFIXES, images_to_fetch, record_image
    from curation.object_store import ObjectStore

    store, client = ObjectStore(settings.object_store), _client(settings)
    urls = images_to_fetch(settings.db_url)

    def one(url: str):
        try:
            image = fetch_image(client, url)
            store.put(image.data, SUFFIXES.get(image.content_type, ""))
            return url, image, None
        except (FetchError, BadImage, Disallowed) as error:
            return url, None, f"{type(error).__name__}: {error}"

    stored = failed = 0
    with ThreadPoolExecutor(workers) as pool:
        for url, image, error in tqdm(pool.map(one, urls), total=len(urls), desc="images", unit="img", mininterval=2):
            record_image(settings.db_url, url, fetched=image, error=error)
            stored, failed = stored + (image is not None), failed + (image is None)
            if error:
                log.warning("image %s: %s", url, error)
    return {"stored": stored, "failed": failed}


def fetch_lyrics(settings: Settings, *, workers: int = 4, provider=None, cache: bool = True) -> dict:
    """Ask the lyric provider for every song without a candidate yet; answers are cached in the catalog
    (keyed by the normalized title, artist and duration), so a re-run asks the provider nothing twice."""
    from tqdm import tqdm

    from crawlers.http import Disallowed, FetchError
    from crawlers.lyrics import CachedProvider, LrclibProvider
    from curation.crawl_store import songs_without_lyrics, store_lyric
    from curation.lyric_cache import CatalogLyricCache

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

    found = missing = errors = 0
    with ThreadPoolExecutor(workers) as pool:
        for song, hit, cached, error in tqdm(pool.map(one, songs), total=len(songs), desc="lyrics", unit="song",
                                             mininterval=2):
            if error:  # not an answer: ask again next run
                errors += 1
                log.warning("lyrics for %r: %s", song["title"], error)
                continue
            if not cached:
                provider.remember(song["title"], song["artist"], song["duration"], hit)
            store_lyric(settings.db_url, song["id"], provider.name, hit)
            found, missing = found + (hit is not None), missing + (hit is None)
    counts = {"songs": len(songs), "found": found, "not_found": missing, "errors": errors}
    if cache:
        counts.update(cache_hits=provider.hits, cache_misses=provider.misses)
    log.info("lyrics fetched: %s", counts)
    return counts


def filter_lyrics(settings: Settings, config=None) -> dict:
    """Judge every pending lyric candidate (``curation.lyric_filters.FilterConfig`` holds the thresholds);
    returns and logs the run's counts: judged, approved, rejected, review, and per reason kind."""
    from curation.lyric_filters import FilterConfig, filter_pending

    counts = filter_pending(settings.db_url, config or FilterConfig())
    log.info("lyric verdicts: %d judged, %d approved, %d rejected (%s), %d sent to review (%s)",
             counts["judged"], counts["approved"], counts["rejected"],
             ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in counts.items() if k.startswith("rejected:")) or "none",
             counts["review"],
             ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in counts.items() if k.startswith("review:")) or "none")
    return counts


def enqueue_review(settings: Settings) -> dict:
    from curation.review_queue import enqueue_reviews

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


def report(settings: Settings, evaluations: list[dict], snapshot_path: str) -> dict:
    """One Markdown report per snapshot, with a row per split next to chance."""
    rows = sorted(evaluations, key=lambda e: e["split"])
    lines = [f"# Evaluation of snapshot {Path(snapshot_path).name}", "",
             "Image → song retrieval over the held-out test songs (R@K in %, median rank: 1 is best).", "",
             "| split | test queries | candidates | R@1 | R@5 | R@10 | MedR | chance R@1 | chance R@10 | chance MedR |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in rows:
        m, c = e["image_to_song"], e["chance"]
        lines.append(f"| {e['split'].upper()} | {e['queries']} | {e['candidates']} | {m['R@1']:.1f} | {m['R@5']:.1f} | "
                     f"{m['R@10']:.1f} | {m['MedR']:.1f} | {c['R@1']:.1f} | {c['R@10']:.1f} | {c['MedR']:.1f} |")
    out = settings.home / "reports" / f"{Path(snapshot_path).name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return {"report": str(out), "snapshot": snapshot_path,
            "splits": {e["split"]: {"model_dir": e["model_dir"], **e["image_to_song"]} for e in rows},
            "table": "\n".join(lines[4:])}
