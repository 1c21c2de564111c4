"""A small catalog as the refresh stages would leave it, for the curation and snapshot tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from crawlers.image_pipeline import ImageResult
from crawlers.images import validate_image
from crawlers.lyrics import LyricHit
from crawlers.sharing_site import PostRecord
from curation.crawl_store import (
    ensure_source, image_tasks, record_images, songs_without_lyrics, store_lyric, store_posts,
)
from curation.lyrics.filters import filter_pending

ENGLISH = ("I walked along the river in the morning light, the water singing softly to the sky, "
           "and every bird was calling out your name across the silver fields of home tonight.")
GERMAN = ("Ich ging am Fluss entlang im Morgenlicht, das Wasser sang leise zum Himmel hinauf, "
          "und jeder Vogel rief deinen Namen über die silbernen Felder der Heimat heute Nacht.")


def jpeg(seed: int) -> bytes:
    """A JPEG of seeded coarse noise: different seeds give unrelated perceptual hashes (no near duplicates)."""
    cells = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(cells).resize((64, 64), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def fill_catalog(db_url: str, songs: int = 12, posts_per_song: int = 6, german: tuple[int, ...] = (0,)) -> None:
    """Posts, stored images and filtered lyrics, as the refresh stages would leave them."""
    source = ensure_source(db_url, "test", "html_site", "http://site")
    records = [PostRecord(f"p{s}-{p}", f"http://site/post/p{s}-{p}", f"http://site/img/{s}-{p}.jpg",
                          f"Song {s}", f"Artist {s % 3}", None, 200, "happy" if p == 0 else None, (p * 13 + s) % 50)
               for s in range(songs) for p in range(posts_per_song)]
    store_posts(db_url, source, records)
    results = []
    for image_id, url in image_tasks(db_url):
        song, post = url.rsplit("/", 1)[1].split(".")[0].split("-")
        image = validate_image(jpeg(int(song) * 1000 + int(post)), declared_type="image/jpeg")  # stable per URL
        results.append(ImageResult(image_id, url, "stored", None, 200, image.sha256, image.phash, image.width,
                                   image.height, len(image.data), image.content_type))
    record_images(db_url, results)
    for song in songs_without_lyrics(db_url, "lrclib"):
        number = int(song["title"].split()[1])
        text = GERMAN if number in german else ENGLISH + f" verse{number}"  # a word of its own per song
        store_lyric(db_url, song["id"], "lrclib", LyricHit("lrclib", str(number), song["title"], song["artist"],
                                                           200, False, text, None, 1.0, "exact"))
    filter_pending(db_url)

