"""Build ``lyrics_labelled.jsonl``: (song, provider answer) cases with the expected lyric verdict.

Deterministic (fixed seed, sorted sources); run from the repository root when Debian's fortunes
(``fortunes``, ``fortunes-de``, ``fortunes-es``, ``fortunes-it``) are installed:

    .venv/bin/python tests/data/build_lyrics_labelled.py

Each line: ``{"id", "label", "language", "source", "song": {title, artist, duration},
"hit": {title, artist, duration, instrumental, plain} | null}``. Labels:

* ``ok``           an English lyric of this song (should be approved)
* ``non_english``  a real German, Spanish or Italian text (rejected as non-English)
* ``short``        a real English text too short to tell its language (sent to review)
* ``placeholder``  a provider's "lyrics not available"-style text (rejected)
* ``instrumental`` flagged instrumental, or a text that only says so (rejected)
* ``missing``      the provider has no record (rejected: not found)
* ``mismatch``     the provider's record is another song (rejected)
* ``duplicate``    another song's lyric filed under this song: same text as an ``ok`` case (rejected)

Languages are those of the fortune files; entries that a reader finds to be in another language are
listed in ``RELABEL`` (checked by hand, with both language identifiers' disagreements as the lead).
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from image2song.demo.material import FORTUNES_DIR, read_fortune_file  # noqa: E402

OUT = Path(__file__).with_name("lyrics_labelled.jsonl")
SEED = 20171022
SOURCES = {
    "en": ("songs-poems", "love", "literature", "wisdom", "people", "men-women"),
    "de": ("de/gedichte", "de/zitate", "de/sprueche", "de/anekdoten"),
    "es": ("es/sentimientos.fortunes", "es/amistad.fortunes", "es/vida.fortunes", "es/filosofia.fortunes"),
    "it": ("it/italia", "it/luttazzi", "it/paolotedeschi"),
}
COUNTS = {"ok": 130, "de": 30, "es": 30, "it": 30, "short": 15}
HARD = {"ok": 30, "de": 10, "es": 10, "it": 10}  # texts of 50-130 letters: near the language filter's floor
# source id -> the language a reader finds it in (fortune files mix in quotes in other languages)
RELABEL: dict[str, str] = {}
ARTISTS = ("The Night Owls", "Mara Lind", "Blue Harbor", "Otis Crane", "The Paper Kites Club", "June Alvarez",
           "Silver Lanterns", "Theo Marsh", "The Low Tides", "Rosa Fontaine", "Kit Hollow", "The Amber Lines")
PLACEHOLDERS = (
    "Lyrics not available",
    "Lyrics not available yet.",
    "We are not licensed to display the full lyrics for this song at the moment.",
    "Sorry, we don't have the lyrics for this song yet.",
    "No lyrics found for this track.",
    "Lyrics coming soon!",
    "Be the first to add the lyrics for this song!",
    "Lyrics unavailable",
    "This song is an instrumental",
    "Lyrics will be available soon. Submit lyrics for this song.",
    "Unfortunately, lyrics are not available in your region.",
    "The lyrics have not been added yet. Submit lyrics to this song.",
)
INSTRUMENTAL_TEXTS = ("[Instrumental]", "(instrumental)", "Instrumental", "", None)


def entries(paths: tuple[str, ...], low: int, high: int) -> list[tuple[str, str]]:
    found = []
    for name in paths:
        path = FORTUNES_DIR / name
        if not path.exists():
            raise SystemExit(f"{path} is missing: install Debian's fortunes packages")
        for i, text in enumerate(read_fortune_file(path)):
            letters = sum(c.isalpha() for c in text)
            if low <= letters <= high and not re.search(r"[|_\\/]{4,}", text):  # no ASCII art
                found.append((f"{name}#{i}", text))
    return found


def title_of(text: str, rng: random.Random) -> str:
    """A song title from the lyric's words, as songs are often named after a line."""
    words = re.findall(r"[A-Za-zÀ-ÿ']+", text)
    start = rng.randrange(max(1, min(len(words) - 3, 12)))
    return " ".join(w.capitalize() for w in words[start:start + rng.randint(1, 3)]) or "Untitled"


def case(label, language, source, title, artist, duration, hit_title=None, hit_artist=None, hit_duration=None,
         text=None, instrumental=False, has_hit=True) -> dict:
    hit = None
    if has_hit:
        hit = {"title": hit_title or title, "artist": hit_artist or artist,
               "duration": hit_duration if hit_duration is not None else duration,
               "instrumental": instrumental, "plain": text}
    return {"label": label, "language": language, "source": source,
            "song": {"title": title, "artist": artist, "duration": duration}, "hit": hit}


def build() -> list[dict]:
    rng = random.Random(SEED)
    cases: list[dict] = []
    en = entries(SOURCES["en"], 120, 900)
    rng.shuffle(en)
    ok_pool, en = en[:COUNTS["ok"]], en[COUNTS["ok"]:]
    for source, text in ok_pool:
        title, artist, duration = title_of(text, rng), rng.choice(ARTISTS), rng.randint(120, 330)
        decorated = title + rng.choice(("", "", "", " (Live)", " - Remastered 2011", " (feat. Kit Hollow)"))
        cases.append(case("ok", RELABEL.get(source, "en"), source, decorated, artist, duration, hit_title=title,
                          hit_duration=duration + rng.choice((0, 0, 1, -1)), text=text))
    for language in ("de", "es", "it"):
        pool = entries(SOURCES[language], 120, 900)
        rng.shuffle(pool)
        for source, text in pool[:COUNTS[language]]:
            cases.append(case("non_english", RELABEL.get(source, language), source, title_of(text, rng),
                              rng.choice(ARTISTS), rng.randint(120, 330), text=text))
    for language in ("en", "de", "es", "it"):  # harder: short texts just above the length floor
        pool = entries(SOURCES[language], 50, 130)
        rng.shuffle(pool)
        for source, text in pool[:HARD["ok" if language == "en" else language]]:
            title, artist, duration = title_of(text, rng), rng.choice(ARTISTS), rng.randint(120, 330)
            cases.append(case("ok" if language == "en" else "non_english", RELABEL.get(source, language), source,
                              title, artist, duration, text=text))
    short = entries(SOURCES["en"], 15, 45)
    rng.shuffle(short)
    for source, text in short[:COUNTS["short"]]:
        cases.append(case("short", RELABEL.get(source, "en"), source, title_of(text, rng), rng.choice(ARTISTS),
                          rng.randint(120, 330), text=text))
    for i, text in enumerate(PLACEHOLDERS):
        cases.append(case("placeholder", "en", f"placeholder#{i}", f"Song Without Words {i}", rng.choice(ARTISTS),
                          rng.randint(120, 330), text=text))
    for i, text in enumerate(INSTRUMENTAL_TEXTS * 2):
        flagged = i % 2 == 0 or not text  # a provider flag, or only a text that says "instrumental"
        cases.append(case("instrumental", "", f"instrumental#{i}", f"Interlude No {i + 1}", rng.choice(ARTISTS),
                          rng.randint(60, 300), text=text, instrumental=flagged))
    for i in range(8):
        cases.append(case("missing", "", f"missing#{i}", f"Unreleased Demo {i + 1}", rng.choice(ARTISTS),
                          rng.randint(120, 300), has_hit=False))
    # another song's record: a search result the provider ranked first although title and artist differ
    others = en[:15]
    en = en[15:]
    for source, text in others:
        cases.append(case("mismatch", "en", source, f"Midnight Train To {rng.choice(('Ohio', 'Lisbon', 'Nowhere'))}",
                          rng.choice(ARTISTS), rng.randint(120, 330), hit_title=title_of(text, rng),
                          hit_artist=rng.choice(("DJ Polar", "Los Hermanos Vega", "Anneke Stroom")), text=text))
    # duplicates: another song's lyric filed under this one (the text names the other song's title)
    owners = [c for c in cases if c["label"] == "ok"][:14]
    for i, owner in enumerate(owners):
        cases.append(case("duplicate", "en", owner["source"], f"Paper Moon Parade {i + 1}", rng.choice(ARTISTS),
                          rng.randint(120, 330), text=owner["hit"]["plain"]))
    for number, item in enumerate(cases, 1):
        item["id"] = number
    return cases


def main() -> None:
    cases = build()
    with OUT.open("w", encoding="utf-8") as out:
        for item in cases:
            out.write(json.dumps({"id": item.pop("id"), **item}, ensure_ascii=False, sort_keys=False) + "\n")
    counts: dict[str, int] = {}
    for item in cases:
        counts[item["label"]] = counts.get(item["label"], 0) + 1
    print(f"{len(cases)} cases -> {OUT.relative_to(ROOT)}: {counts}")


if __name__ == "__main__":
    main()
