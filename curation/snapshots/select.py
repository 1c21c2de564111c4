"""What a snapshot takes from the catalog, selected inside the database and streamed out in chunks.

The per-song top-k selection runs in SQL with window functions (SQLite ≥ 3.25 and PostgreSQL alike), so
a catalog of millions of posts never passes through Python: only the kept rows (at most
``posts_per_song`` per song) come out, in chunks, as Arrow record batches.

Eligible posts: the image is stored, the song has an approved lyric. One post per image (by sha256, the
one with the most favorites): the same bytes in two posts would leak across a split.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import pyarrow as pa
from sqlalchemy import func, select

from curation.catalog import Image, LyricCandidate, Post, ReviewEvent, ReviewItem, Song, Source, engine_for
from curation.snapshots.recipe import Recipe

CHUNK_ROWS = 50_000

KEPT_COLUMNS = {
    "post_id": pa.int64(), "source": pa.string(), "external_id": pa.string(), "post_url": pa.string(),
    "song_id": pa.int64(), "favorite_count": pa.int64(),
    "mood": pa.string(), "image_sha256": pa.string(), "image_phash": pa.string(), "content_type": pa.string(),
    "lyric_candidate_id": pa.int64(),
}


def _chosen_lyrics():
    """Per song, the approved lyric candidate used (best match score, then the oldest)."""
    rank = func.row_number().over(partition_by=LyricCandidate.song_id,
                                  order_by=(LyricCandidate.match_score.desc(), LyricCandidate.id))
    ranked = (select(LyricCandidate.song_id, LyricCandidate.id.label("candidate_id"), rank.label("lyric_rank"))
              .where(LyricCandidate.verdict == "approved").subquery("ranked_lyrics"))
    return select(ranked.c.song_id, ranked.c.candidate_id).where(ranked.c.lyric_rank == 1).cte("chosen_lyrics")


def _unique_images():
    """Eligible posts, one per distinct image (the post with the most favorites, then the older post)."""
    lyrics = _chosen_lyrics()
    image_rank = func.row_number().over(partition_by=Image.sha256,
                                        order_by=(Post.favorite_count.desc(), Post.posted_at.asc().nulls_last(),
                                                  Post.id))
    eligible = (select(Post.id.label("post_id"), Post.source_id, Post.external_id, Post.url.label("post_url"),
                       Post.song_id, Post.favorite_count, Post.posted_at, Post.mood,
                       Image.sha256.label("image_sha256"), Image.phash.label("image_phash"), Image.content_type,
                       lyrics.c.candidate_id.label("lyric_candidate_id"), image_rank.label("image_rank"))
                .join(Image, Post.image_id == Image.id)
                .join(lyrics, lyrics.c.song_id == Post.song_id)
                .where(Image.status == "stored", Image.sha256.is_not(None))
                .subquery("eligible"))
    return select(eligible).where(eligible.c.image_rank == 1).cte("unique_images")


def kept_query(recipe: Recipe):
    unique = _unique_images()
    occurrences = func.count().over(partition_by=unique.c.song_id)
    # Ties in favorites go to the older post by the site's time (posts without one after those with
    # one), then to the lower post id: the README's rule, whatever order the crawl met the posts in.
    song_rank = func.row_number().over(partition_by=unique.c.song_id,
                                       order_by=(unique.c.favorite_count.desc(), unique.c.posted_at.asc().nulls_last(),
                                                 unique.c.post_id))
    ranked = select(unique, occurrences.label("occurrences"), song_rank.label("song_rank")).subquery("ranked")
    return (select(ranked.c.post_id, Source.name.label("source"), ranked.c.external_id, ranked.c.post_url,
                   ranked.c.song_id, ranked.c.favorite_count, ranked.c.mood,
                   ranked.c.image_sha256, ranked.c.image_phash, ranked.c.content_type, ranked.c.lyric_candidate_id)
            .join(Source, Source.id == ranked.c.source_id)
            .where(ranked.c.occurrences >= recipe.min_posts, ranked.c.song_rank <= recipe.posts_per_song)
            .order_by(ranked.c.song_id, ranked.c.post_id))


def stream_kept(db_url: str, recipe: Recipe, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
    """The kept posts, ordered by song then post, as record batches of at most ``chunk_rows``."""
    schema = pa.schema(list(KEPT_COLUMNS.items()))
    with engine_for(db_url).connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=chunk_rows).execute(kept_query(recipe))
        for rows in result.partitions(chunk_rows):
            columns = list(zip(*rows))
            yield pa.RecordBatch.from_arrays([pa.array(c, type=t) for c, t in zip(columns, schema.types)],
                                             schema=schema)


def read_kept(db_url: str, recipe: Recipe, chunk_rows: int = CHUNK_ROWS) -> pa.Table:
    schema = pa.schema(list(KEPT_COLUMNS.items()))
    return pa.Table.from_batches(list(stream_kept(db_url, recipe, chunk_rows)), schema=schema)


def song_rows(db_url: str, songs_and_lyrics: list[tuple[int, int]], chunk: int = 2_000) -> list[tuple]:
    """(song id, title, artist, lyric text, provider, candidate id, decided_by, match score) for the
    given (song id, lyric candidate id) pairs, in their order; fetched by primary key in chunks."""
    out: dict[int, tuple] = {}
    candidate_ids = [c for _, c in songs_and_lyrics]
    with engine_for(db_url).connect() as connection:
        for start in range(0, len(candidate_ids), chunk):
            part = candidate_ids[start:start + chunk]
            for row in connection.execute(
                    select(LyricCandidate.id, Song.id, Song.title, Song.artist, LyricCandidate.text,
                           LyricCandidate.provider, LyricCandidate.decided_by, LyricCandidate.match_score)
                    .join(Song, Song.id == LyricCandidate.song_id).where(LyricCandidate.id.in_(part))):
                out[row[0]] = tuple(row[1:4]) + (row[4], row[5], row[0], row[6], row[7])
    return [out[c] for c in candidate_ids]


def eligible_figures(db_url: str) -> dict:
    """The paper's Table 1 and Fig. 2 over every eligible post (one per distinct image): triplets, songs,
    triplets with a mood, favorite count range, and songs (and their triplets) by occurrence count."""
    unique = _unique_images()
    per_song = (select(unique.c.song_id, func.count().label("n"), func.count(unique.c.mood).label("mood"),
                       func.min(unique.c.favorite_count).label("low"), func.max(unique.c.favorite_count).label("high"))
                .group_by(unique.c.song_id).subquery("per_song"))
    with engine_for(db_url).connect() as connection:  # one pass over the posts: per song, then per count
        histogram = connection.execute(
            select(per_song.c.n, func.count(), func.sum(per_song.c.mood), func.min(per_song.c.low),
                   func.max(per_song.c.high)).group_by(per_song.c.n).order_by(per_song.c.n)).all()
    triplets = sum(int(n) * int(songs) for n, songs, *_ in histogram)
    return {"triplets": triplets, "songs": sum(int(row[1]) for row in histogram),
            "with_mood": sum(int(row[2] or 0) for row in histogram),
            "favorite_count": [min(int(row[3]) for row in histogram), max(int(row[4]) for row in histogram)]
            if histogram else None,
            "occurrences": {int(n): int(songs) for n, songs, *_ in histogram}}


def _iso(moment) -> str | None:
    return moment.isoformat() if hasattr(moment, "isoformat") else (str(moment) if moment else None)


def catalog_state(db_url: str, candidate_ids: list[int], chunk: int = 2_000) -> dict:
    """The catalog as the snapshot saw it: table sizes and high-water marks, pending reviews, lyric verdict
    counts by verdict and reason kind (the text before ":"), and the review decisions that the included
    lyrics carry."""
    engine = engine_for(db_url)
    with engine.connect() as connection:
        def scalar(query):
            return connection.execute(query).scalar()

        state = {
            "posts": scalar(select(func.count()).select_from(Post)),
            "max_post_id": scalar(select(func.max(Post.id))),
            "images_stored": scalar(select(func.count()).select_from(Image).where(Image.status == "stored")),
            "songs": scalar(select(func.count()).select_from(Song)),
            "lyric_candidates": scalar(select(func.count()).select_from(LyricCandidate)),
            "pending_reviews": scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.state != "decided")),
            "decided_reviews": scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.state == "decided")),
            "max_review_event_id": scalar(select(func.max(ReviewEvent.id))),
            # the collection timeframe: the site's post times and when the crawler fetched them
            "posted_between": [_iso(scalar(select(func.min(Post.posted_at)))),
                               _iso(scalar(select(func.max(Post.posted_at))))],
            "crawled_between": [_iso(scalar(select(func.min(Post.crawled_at)))),
                                _iso(scalar(select(func.max(Post.crawled_at))))],
        }
        verdicts: Counter = Counter()
        for verdict, reason, n in connection.execute(
                select(LyricCandidate.verdict, LyricCandidate.reason, func.count())
                .group_by(LyricCandidate.verdict, LyricCandidate.reason)):
            kind = (reason or "").split(":", 1)[0].strip() or "(none)"
            verdicts[(verdict, kind)] += n
        by_verdict: dict = {}
        for (verdict, kind), n in sorted(verdicts.items()):
            entry = by_verdict.setdefault(verdict, {"total": 0, "by_reason": {}})
            entry["total"] += n
            entry["by_reason"][kind] = n
        state["lyric_verdicts"] = by_verdict
        included, decisions = [], Counter()
        for start in range(0, len(candidate_ids), chunk):
            part = candidate_ids[start:start + chunk]
            for item_id, decision in connection.execute(
                    select(ReviewItem.id, ReviewItem.decision)
                    .where(ReviewItem.state == "decided", ReviewItem.candidate_id.in_(part))):
                included.append(item_id)
                decisions[decision or "(none)"] += 1
        state["review_decisions_included"] = sorted(included)
        state["review_decisions_by_kind"] = dict(sorted(decisions.items()))
    return state


__all__ = ["CHUNK_ROWS", "KEPT_COLUMNS", "catalog_state", "eligible_figures", "kept_query", "read_kept",
           "song_rows", "stream_kept"]
