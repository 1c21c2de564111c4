"""Build the demo corpus: posts pairing an image with a song, and what a lyric API knows of those songs.

Everything is real packaged material (Debian ``fortunes`` texts as lyrics, ``tuxpaint-stamps-default``
drawings as image content), arranged deterministically from a seed.

How images are paired with songs (the signal a model can learn):

1. Each song's lyric is reduced to content-word stems (stop words dropped, light stemming).
2. Each stamp category folder (e.g. ``animals/birds``) is a *theme*; its vocabulary is the stems of its folder
   names, stamp file names, the head of each English caption and a few everyday hint words.
3. A song's theme is the category with the largest IDF-weighted word overlap with its lyric (ties broken
   by a seeded hash); with no overlap (or no lyric) a seeded hash picks it. Non-English lyrics are matched
   against the captions' translations in their language.
4. Each song prefers 3 stamps of its theme. A post's main stamp comes from the song's theme with
   probability 0.75 (70% of those from the 3 preferred stamps), otherwise from a random other theme (noise);
   a smaller second stamp is added to 45% of posts (60% from the theme).
5. Stamps are scaled, flipped, tilted and pasted on a random solid, gradient or photo background, so
   no two images are identical but images of the same song look alike.

Song popularity is Zipf-like: a head of songs with 5 or more visible posts (about 7% of the posts count,
counts falling as 1/rank) and a long tail where the number of songs with j posts falls as 1/j^2 (most
songs appear once). Lyric kinds (ok, non_english, missing, mismatched, instrumental, placeholder) are dealt
in fixed proportions within every block of 100 songs by popularity, so the head holds ~81% "ok" songs.
Each English text is used by at most one song (the mismatched kind reuses another song's text on purpose).

Two scales (``SCALES``), with the same pairing rule and noise:

* ``demo`` (3,000 posts, about 215 songs with 5+ posts): English lyrics from songs-poems, love,
  literature and wisdom; quick enough for ``make demo`` and the tests.
* ``research`` (36,000 posts, 2,700 songs with 5+ posts, so that about 2,100 "ok" songs reach a
  snapshot): every English fortunes file plus the King James Bible's books of verse (``bible-kjv``), a
  flatter head (the most popular song has 30 posts) so that the posts go to many songs rather than to a
  few hits, and the same 1/j^2 tail.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .material import (
    ALL_ENGLISH_FORTUNE_FILES,
    EN_STOPWORDS,
    ENGLISH_FORTUNE_FILES,
    FORTUNES_DIR,
    FOREIGN_STOPWORDS,
    STAMPS_DIR,
    FortuneEntry,
    Stamp,
    content_stems,
    load_fortunes,
    load_kjv_verse,
    load_stamps,
    theme_vocabularies,
    words,
)

KINDS = ("ok", "non_english", "missing", "mismatched", "instrumental", "placeholder")
# per block of 100 songs (by popularity rank)
KIND_SHARES = {"ok": 81, "non_english": 6, "missing": 5, "mismatched": 4, "instrumental": 2, "placeholder": 2}
MOODS = ("happy", "sad", "calm", "romantic", "energetic", "nostalgic", "angry", "dreamy")
PLACEHOLDERS = (
    "Lyrics not available",
    "We are not licensed to display the full lyrics for this song at the moment.",
    "Unfortunately, we are not licensed to display the full lyrics for this song at the moment. "
    "Hopefully we will be able to in the future. Until then, how about a random page?",
    "Lyrics not found. Be the first to add the lyrics for this song!",
)
DECORATIONS = (
    " (Remastered 2011)", " (Remastered 2009)", " - Remastered 2015", " - Live", " (Live)",
    " - Radio Edit", " (feat. {feat})", " feat. {feat}",
)
MIN_POSTS = 5  # the paper keeps songs with at least 5 posts

THEME_P = 0.75
PREFERRED_P = 0.70
N_PREFERRED = 3
SECOND_STAMP_P = 0.45
SECOND_THEME_P = 0.60
MOOD_P = 0.20
HIDDEN_SHARE = 0.02
DECORATED_SHARE = 0.12
DURATION_OFF_SHARE = 0.10
SYNCED_SHARE = 0.45
PHOTO_BACKGROUND_P = 0.06
GREY_PHOTOS = ("brick", "grass", "gravel", "moon")  # tinted with a random colour
PHOTO_NAMES = ("brick", "grass", "gravel", "coffee", "rocket", "hubble_deep_field", "chelsea", "astronaut", "moon")

_FIRST = ("Mara", "Jonah", "Elsie", "Tobias", "Wren", "Caspian", "Ines", "Rufus", "Odette", "Silas", "Noor",
          "Felix", "Juno", "Ansel", "Clio", "Dorian", "Maren", "Otis", "Liesel", "Emrys", "Talia", "Bram",
          "Sunniva", "Lorcan")
_LAST = ("Quillfeather", "Ashdown", "Varga", "Holloway", "Brightwater", "Okonkwo-Reyes", "Lindqvist", "Marlowe",
         "Fenwick", "Castellane", "Duval", "Thornbury", "Kestrel", "Adeyemi", "Morrow", "Halvorsen", "Pennington",
         "Achterberg", "Sol", "Carrow", "Vance", "Ellery", "Whitlock", "Roan")
_BAND_ADJ = ("Velvet", "Paper", "Hollow", "Electric", "Northern", "Quiet", "Silver", "Midnight", "Wandering",
             "Copper", "Glass", "Lonesome", "Crimson", "Drifting", "Amber", "Restless", "Salt", "Neon", "Iron",
             "Cardboard")
_BAND_NOUN = ("Lanterns", "Foxes", "Harbours", "Satellites", "Orchards", "Ghosts", "Sparrows", "Engines",
              "Tides", "Choirs", "Comets", "Pilgrims", "Lighthouses", "Moths", "Radios", "Valleys", "Kites",
              "Owls", "Rivers", "Strangers")
_ALBUM_A = ("Songs from", "Letters to", "Nights in", "Postcards from", "Echoes of", "Tales of", "Live at",
            "Return to", "Notes on", "Winter in")
_ALBUM_B = ("the Attic", "Blue Harbour", "Hollow Street", "the Lowlands", "Avalon Road", "the Old Mill",
            "Glass Mountain", "Paper Town", "the Far Shore", "Saint Agnes", "Marigold Lane", "the North Pier")
_ALBUM_SINGLE = ("Weathervane", "Undertow", "Lanternlight", "Small Hours", "Driftwood", "Afterglow", "Parallax",
                 "Half Moon", "Homeward", "Tin Roof", "Slow Fire", "Evergreen", "Blue Static", "Firefly")
_INSTR_A = ("Midnight", "Glass", "Slow", "Northern", "Copper", "Paper", "Silent", "Open", "Low", "Hollow")
_INSTR_B = ("Drive", "Harbour", "Interlude", "Circuit", "Meridian", "Reverie", "Signal", "Tides", "Corridor",
            "Overture")
VERSE_SOURCES = ("songs-poems", "kjv")  # lyric sources that read most like songs: the popular songs get them
MAX_ARTISTS = 800  # the name lists make 976 distinct solo and band names
_SMALL = frozenset("a an the of in on and to at by for or as is it with from".split())


@dataclass(frozen=True)
class Scale:
    """A size of the demo world: how many posts, where the English lyrics come from, the popularity head."""

    name: str
    n_posts: int
    english_files: tuple[str, ...]
    kjv_verse: bool  # add the King James Bible's verse books (Debian bible-kjv) after songs-poems
    head_songs: int | None = None  # songs with >= MIN_POSTS posts; None: 7.2% of the visible posts
    top_posts: int | None = None  # posts of the most popular song; None: 25 * sqrt(posts / 3000)


SCALES = {
    "demo": Scale("demo", 3000, ENGLISH_FORTUNE_FILES, kjv_verse=False),
    "research": Scale("research", 40000, ALL_ENGLISH_FORTUNE_FILES, kjv_verse=True, head_songs=2900, top_posts=25),
}


@dataclass(frozen=True)
class CorpusSummary:
    out_dir: str
    seed: int
    scale: str
    n_posts: int
    n_hidden: int
    n_songs: int
    n_lyric_records: int
    n_themes: int
    songs_with_5_plus: int  # counting visible posts only, as a crawler that obeys robots.txt sees them
    kinds: dict = field(default_factory=dict)  # kind -> songs
    kinds_with_5_plus: dict = field(default_factory=dict)  # kind -> songs with >= 5 visible posts
    images_written: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} {self.kinds.get(k, 0)}" for k in KINDS)
        kept = ", ".join(f"{k} {self.kinds_with_5_plus.get(k, 0)}" for k in KINDS)
        return (
            f"{self.scale} corpus in {self.out_dir} (seed {self.seed}, {self.seconds:.1f} s)\n"
            f"  posts: {self.n_posts} ({self.n_hidden} hidden under /private/), images written: {self.images_written}\n"
            f"  songs: {self.n_songs} ({kinds})\n"
            f"  lyric API records: {self.n_lyric_records}, image themes: {self.n_themes}\n"
            f"  songs with >= {MIN_POSTS} visible posts: {self.songs_with_5_plus} ({kept})"
        )


@dataclass
class _Song:
    key: str
    rank: int
    kind: str
    language: str
    entry: FortuneEntry | None
    theme: str = ""
    theme_by: str = ""
    title: str = ""
    post_title: str = ""
    artist: str = ""
    album: str = ""
    duration: int = 0
    api_duration: float = 0.0
    api_lyric: str | None = None
    mismatch_of: str | None = None
    lyric_id: int | None = None
    preferred: tuple = ()
    n_posts: int = 0
    n_hidden: int = 0


def _h(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


# --------------------------------------------------------------------------------------------- popularity
def _popularity(n_visible: int, rng: random.Random, head_songs: int | None = None,
                top_posts: int | None = None) -> list[int]:
    """Visible post counts per song, in popularity order, summing to ``n_visible``."""
    if n_visible < 1:
        return []
    m = head_songs or max(1, round(0.072 * n_visible))  # head: songs with >= MIN_POSTS posts
    c1 = top_posts or max(MIN_POSTS + 3, round(25 * math.sqrt(n_visible / 3000)))
    k = max(0.0, (MIN_POSTS * m - c1) / (c1 - MIN_POSTS))
    a = c1 * (1 + k)
    head = [max(MIN_POSTS, int(a / (i + k) + rng.random())) for i in range(1, m + 1)]
    while head and sum(head) > n_visible * 0.8:  # tiny corpora: keep room for a tail
        head.pop()
    rest = n_visible - sum(head)
    n1 = rest / sum(1 / j for j in range(1, MIN_POSTS))  # songs with j posts ~ 1/j^2
    tail: list[int] = []
    for j in range(MIN_POSTS - 1, 1, -1):
        tail += [j] * round(n1 / j**2)
    while sum(tail) > rest:
        tail.pop()
    tail += [1] * (rest - sum(tail))
    return head + tail


def _deal_kinds(n_songs: int, rng: random.Random) -> list[str]:
    out: list[str] = []
    for start in range(0, n_songs, 100):
        b = min(100, n_songs - start)
        quota = {k: KIND_SHARES[k] * b / 100 for k in KINDS}
        counts = {k: int(q) for k, q in quota.items()}
        for k in sorted(KINDS, key=lambda k: (-(quota[k] - counts[k]), rng.random()))[: b - sum(counts.values())]:
            counts[k] += 1
        block = [k for k in KINDS for _ in range(counts[k])]
        rng.shuffle(block)
        out += block
    return out


# ------------------------------------------------------------------------------------------- titles, names
def _title_case(ws: list[str]) -> str:
    out = []
    for i, w in enumerate(ws):
        lw = w.lower()
        out.append(lw if (i and lw in _SMALL) else (w[:1].upper() + w[1:]))
    return " ".join(out)


def _title_candidates(text: str, rng: random.Random, language: str) -> list[str]:
    stop = EN_STOPWORDS if language == "en" else FOREIGN_STOPWORDS[language] | EN_STOPWORDS
    cands = []
    lines = [ln for ln in text.split("\n") if len(words(ln)) >= 2]
    line = lines[0] if lines else text
    counts = Counter(w for w in words(text) if len(w) > 3 and w not in stop)
    salient = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:4]
    if rng.random() < 0.55:
        cands.append(_first_line_title(line, rng, stop))
    for w in salient:
        cands.append(_title_case(["The", w]) if language == "en" and rng.random() < 0.15 else _title_case([w]))
    cands.append(_first_line_title(line, rng, stop, longest=6))
    if len(salient) >= 2:
        cands.append(_title_case(salient[:2]))
    return [c for c in cands if c]


def _first_line_title(line: str, rng: random.Random, stop: frozenset, longest: int | None = None) -> str:
    """A title from a lyric's first line: the line itself when short, else its first clause or a few words."""
    clause = re.split(r"[,;:.!?()\u2014]| - ", line)[0]
    ws = ["".join(ch for ch in w if ch.isalpha() or ch == "'").strip("'") for w in clause.replace("-", " ").split()]
    ws = [w for w in ws if w]
    n = longest or rng.choice((2, 3, 3, 4, 5))
    if len(ws) <= 6 and longest is None and rng.random() < 0.6:
        n = len(ws)
    content = [i for i, w in enumerate(ws) if len(w) > 2 and w.lower() not in stop and w.lower() not in _SMALL]
    if not content:
        return ""
    end = next((i for i in content if i >= n - 1), content[-1])  # end on a content word
    return _title_case(ws[: min(end + 1, 7)])


def _artists(rng: random.Random, n: int) -> list[str]:
    solo = [f"{f} {l}" for f in _FIRST for l in _LAST]
    band = [f"The {a} {b}" for a in _BAND_ADJ for b in _BAND_NOUN]
    rng.shuffle(solo)
    rng.shuffle(band)
    names, i, j = [], 0, 0
    while len(names) < n:
        if rng.random() < 0.55:
            names.append(solo[i]); i += 1
        else:
            names.append(band[j]); j += 1
    return names


# -------------------------------------------------------------------------------------------------- themes
def _theme_scorer(stamps: list[Stamp], language: str):
    vocab = theme_vocabularies(stamps, language)
    df = Counter(w for v in vocab.values() for w in v)
    idf = {w: math.log(len(vocab) / df[w]) + 0.05 for w in df}
    stop = EN_STOPWORDS if language == "en" else FOREIGN_STOPWORDS[language]

    def score(text: str) -> dict[str, float]:
        ws = content_stems(text, stop)
        return {t: sum(idf[w] for w in ws & v) for t, v in vocab.items()}

    return score


# --------------------------------------------------------------------------------------------------- lyrics
def _lrc(text: str, duration: float, rng: random.Random) -> str:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    start, end = min(12.0, duration * 0.1), duration * 0.92
    step = (end - start) / max(1, len(lines))
    out = []
    for i, ln in enumerate(lines):
        t = start + i * step + rng.uniform(0, step * 0.3)
        out.append(f"[{int(t // 60):02d}:{t % 60:05.2f}] {ln}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class _Layer:
    stamp: str
    scale: float  # longest side, as a share of the image size
    cx: float
    cy: float
    angle: float
    flip: bool


@dataclass(frozen=True)
class _Plan:
    post_id: str
    background: tuple  # ("solid", c) | ("linear", c1, c2, angle) | ("radial", c1, c2, cx, cy) | ("photo", name, ...)
    layers: tuple
    salt: int = 0


def _color(rng: random.Random) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.45, 1.0))
    return (int(r * 255), int(g * 255), int(b * 255))


class _Renderer:
    def __init__(self, stamps_dir: Path, size: int):
        self.stamps_dir = Path(stamps_dir)
        self.size = size
        self._stamps: dict = {}
        self._photos: dict = {}

    def stamp(self, rel: str):
        from PIL import Image

        im = self._stamps.get(rel)
        if im is None:
            with Image.open(self.stamps_dir / rel) as src:
                im = src.convert("RGBA")
            im.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
            self._stamps[rel] = im
        return im

    def photo(self, name: str):
        if name not in self._photos:
            import numpy as np
            from PIL import Image
            from skimage import data as skdata

            arr = getattr(skdata, name)()
            if arr.dtype != np.uint8:
                arr = (arr * 255).astype(np.uint8) if arr.max() <= 1 else arr.astype(np.uint8)
            im = Image.fromarray(arr)
            self._photos[name] = im.convert("RGB")
        return self._photos[name]

    def background(self, spec: tuple):
        import numpy as np
        from PIL import Image, ImageOps

        s = self.size
        kind = spec[0]
        if kind == "solid":
            return Image.new("RGB", (s, s), spec[1])
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / max(1, s - 1)
        if kind == "linear":
            _, c1, c2, ang = spec
            t = xx * math.cos(ang) + yy * math.sin(ang)
            t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        elif kind == "radial":
            _, c1, c2, cx, cy = spec
            t = np.clip(np.hypot(xx - cx, yy - cy) / 1.1, 0, 1)
        else:  # photo
            _, name, x0, y0, frac, tint = spec
            try:
                ph = self.photo(name)
            except Exception:  # scikit-image (or that photo) missing: a plain gradient instead
                return self.background(("linear", tint, (255 - tint[0], 255 - tint[1], 255 - tint[2]), x0 * 6.28))
            w, h = ph.size
            side = int(min(w, h) * frac)
            left, top = int((w - side) * x0), int((h - side) * y0)
            im = ph.crop((left, top, left + side, top + side)).resize((s, s), Image.Resampling.BILINEAR)
            if name in GREY_PHOTOS:
                im = ImageOps.colorize(ImageOps.grayscale(im), (0, 0, 0), tint)
            return im
        a, b = np.array(c1, np.float32), np.array(c2, np.float32)
        arr = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
        return Image.fromarray(arr.astype(np.uint8), "RGB")

    def render(self, plan: _Plan) -> bytes:
        from PIL import Image, ImageOps

        s = self.size
        canvas = self.background(plan.background).convert("RGBA")
        for layer in plan.layers:
            st = self.stamp(layer.stamp)
            if layer.flip:
                st = ImageOps.mirror(st)
            longest = max(4, int(s * layer.scale))
            w, h = st.size
            f = longest / max(w, h)
            st = st.resize((max(1, int(w * f)), max(1, int(h * f))), Image.Resampling.BILINEAR)
            if layer.angle:
                st = st.rotate(layer.angle, resample=Image.Resampling.BILINEAR, expand=True)
            x = int(layer.cx * s - st.size[0] / 2)
            y = int(layer.cy * s - st.size[1] / 2)
            canvas.paste(st, (x, y), st)
        if plan.salt:  # only used to break an (unlikely) exact duplicate
            canvas.putpixel((plan.salt % s, (plan.salt // s) % s), (plan.salt % 251, 7, 7, 255))
        buf = io.BytesIO()
        canvas.convert("RGB").save(buf, "JPEG", quality=90)
        return buf.getvalue()


def _render_batch(args):
    stamps_dir, size, plans = args
    r = _Renderer(stamps_dir, size)
    return [(p.post_id, r.render(p)) for p in plans]


# ---------------------------------------------------------------------------------------------- progress
class _Progress:
    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        self.enabled, self.total, self.desc, self.n, self._last = enabled, total, desc, 0, -1
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="img")
            except ImportError:
                pass

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.enabled and self.total:
            pct = 10 * self.n // self.total
            if pct != self._last:
                self._last = pct
                print(f"{self.desc}: {self.n}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------- build
def build_corpus(
    out_dir,
    *,
    seed: int = 0,
    scale: str = "demo",
    n_posts: int | None = None,
    image_size: int = 256,
    progress: bool = True,
    write_images: bool = True,
    workers: int | None = None,
    fortunes_dir=FORTUNES_DIR,
    stamps_dir=STAMPS_DIR,
) -> CorpusSummary:
    """Write corpus.json, posts.jsonl, lyrics.jsonl, truth.json and images/ under ``out_dir`` (see the
    module docstring). ``scale`` names one of ``SCALES``; ``n_posts`` overrides its number of posts.

    The same seed (and the same installed material) gives byte-identical files. ``write_images=False``
    writes everything but the JPEGs (fast, for checking counts). ``workers`` processes render the images
    (default: up to 2, by the CPU count).
    """
    t0 = time.perf_counter()
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: choose one of {', '.join(SCALES)}")
    plan = SCALES[scale]
    n_posts = plan.n_posts if n_posts is None else n_posts
    if n_posts < 20:
        raise ValueError("n_posts must be at least 20")
    out = Path(out_dir)
    rng = random.Random(f"image2song-demo:{seed}")
    english, foreign = load_fortunes(fortunes_dir, plan.english_files)
    if plan.kjv_verse:  # verse right after songs-poems, so that the popular songs read most like songs
        head = [e for e in english if e.source.startswith("songs-poems#")]
        english = head + load_kjv_verse() + english[len(head):]
    stamps = load_stamps(stamps_dir)
    by_theme: dict[str, list[Stamp]] = {}
    for st in stamps:
        by_theme.setdefault(st.theme, []).append(st)
    themes = sorted(by_theme)
    theme_of_stamp = {st.path: st.theme for st in stamps}

    # popularity and kinds
    n_hidden = round(n_posts * HIDDEN_SHARE) if n_posts >= 50 else 0
    counts = _popularity(n_posts - n_hidden, rng, plan.head_songs, plan.top_posts)
    kinds = _deal_kinds(len(counts), rng)

    # lyric sources: verse first (songs-poems, then KJV verse), each shuffled; then every other file's
    # entries shuffled together, so that the songs draw on all of them
    verse: dict[str, list[FortuneEntry]] = {name: [] for name in VERSE_SOURCES}
    prose: list[FortuneEntry] = []
    seen_texts: set[str] = set()
    for e in english:
        text_key = " ".join(words(e.text))
        if text_key not in seen_texts:  # a few entries appear in two files
            seen_texts.add(text_key)
            verse.get(re.split(r"[#:]", e.source)[0], prose).append(e)
    en_pool: list[FortuneEntry] = []
    for part in [*verse.values(), prose]:
        rng.shuffle(part)
        en_pool += part
    fo_pool = {lang: rng.sample(v, len(v)) for lang, v in sorted(foreign.items())}
    languages = sorted(fo_pool)
    n_en_needed = sum(k not in ("non_english", "instrumental") for k in kinds)
    if n_en_needed > len(en_pool):
        raise ValueError(
            f"n_posts={n_posts} needs {n_en_needed} English lyrics but the fortunes hold {len(en_pool)}; "
            "use fewer posts"
        )

    songs: list[_Song] = []
    fo_i = 0
    for i, kind in enumerate(kinds):
        key = f"s{i + 1:04d}"
        if kind == "instrumental":
            songs.append(_Song(key, i, kind, "", None))
        elif kind == "non_english":
            lang = languages[fo_i % len(languages)]
            fo_i += 1
            songs.append(_Song(key, i, kind, lang, fo_pool[lang].pop()))
        else:
            songs.append(_Song(key, i, kind, "en", en_pool.pop(0)))
        songs[-1].n_posts = counts[i]

    # themes
    scorers = {lang: _theme_scorer(stamps, lang) for lang in ["en", *languages]}
    for s in songs:
        sc = scorers[s.language](s.entry.text) if s.entry else {}
        best = max(sc.values(), default=0.0)
        if best > 0:
            s.theme = min((t for t in themes if sc[t] == best), key=lambda t: _h(seed, s.key, t))
            s.theme_by = "overlap"
        else:
            s.theme = themes[_h(seed, "theme", s.key) % len(themes)]
            s.theme_by = "hash"
        pool = sorted(st.path for st in by_theme[s.theme])
        s.preferred = tuple(random.Random(f"{seed}:pref:{s.key}").sample(pool, min(N_PREFERRED, len(pool))))

    # artists, albums, titles, durations
    n_artists = max(4, min(len(songs) // 8, MAX_ARTISTS))
    artists = _artists(rng, n_artists)
    weights = [1 / (j + 12) for j in range(n_artists)]
    albums = {}
    for a in artists:
        n_alb = rng.randint(1, 4)
        names = set()
        while len(names) < n_alb:
            names.add(rng.choice(_ALBUM_SINGLE) if rng.random() < 0.4 else f"{rng.choice(_ALBUM_A)} {rng.choice(_ALBUM_B)}")
        albums[a] = sorted(names)
    used_titles: set[str] = set()
    for s in songs:
        s.artist = rng.choices(artists, weights)[0]
        s.album = rng.choice(albums[s.artist])
        s.duration = max(90, min(480, int(rng.gauss(225, 55))))
        if s.entry is None:
            cands = [f"{rng.choice(_INSTR_A)} {rng.choice(_INSTR_B)}" for _ in range(6)]
        else:
            cands = _title_candidates(s.entry.text, rng, s.language)
        cands = cands or [f"{rng.choice(_INSTR_A)} {rng.choice(_INSTR_B)}"]
        title = next((c for c in cands if c.lower() not in used_titles), None)
        n = 2
        while title is None:  # every clean title is unique, so title + artist always names one song
            alt = f"{cands[0]} {n}"
            title = None if alt.lower() in used_titles else alt
            n += 1
        used_titles.add(title.lower())
        s.title = s.post_title = title
        if rng.random() < DECORATED_SHARE:
            feat = rng.choice([a for a in artists if a != s.artist])
            s.post_title = title + rng.choice(DECORATIONS).format(feat=feat)
        s.api_duration = float(s.duration + (rng.choice((-1, 1)) if rng.random() < DURATION_OFF_SHARE else 0))

    # what the lyric API holds
    ok_songs = [s for s in songs if s.kind == "ok"]
    for s in songs:
        if s.kind in ("ok", "non_english"):
            s.api_lyric = s.entry.text
        elif s.kind == "mismatched":
            others = [o for o in ok_songs if o.theme != s.theme and o.artist != s.artist] or ok_songs
            other = others[_h(seed, "mismatch", s.key) % len(others)]
            s.api_lyric, s.mismatch_of = other.entry.text, other.key
        elif s.kind == "placeholder":
            s.api_lyric = PLACEHOLDERS[_h(seed, "ph", s.key) % len(PLACEHOLDERS)]
    api_songs = [s for s in songs if s.kind != "missing"]
    ids = rng.sample(range(1000, 1000 + 20 * max(1, len(api_songs))), len(api_songs))
    records = []
    for s, lid in sorted(zip(api_songs, ids), key=lambda p: p[1]):
        s.lyric_id = lid
        synced = None
        if s.kind in ("ok", "non_english", "mismatched") and random.Random(f"{seed}:lrc:{s.key}").random() < SYNCED_SHARE:
            synced = _lrc(s.api_lyric, s.api_duration, random.Random(f"{seed}:lrc-t:{s.key}"))
        records.append({
            "id": lid, "trackName": s.title, "artistName": s.artist, "albumName": s.album,
            "duration": s.api_duration, "instrumental": s.kind == "instrumental",
            "plainLyrics": s.api_lyric, "syncedLyrics": synced,
        })

    # posts
    slots = [s for s in songs for _ in range(s.n_posts)]
    hidden_songs = rng.choices(songs, weights=[s.n_posts for s in songs], k=n_hidden)
    for s in hidden_songs:
        s.n_hidden += 1
    entries = [(s, False) for s in slots] + [(s, True) for s in hidden_songs]
    rng.shuffle(entries)
    photos = PHOTO_NAMES  # planned whether or not scikit-image is there, so the JSON files never depend on it
    when = datetime(2016, 3, 1, 8, 0, tzinfo=timezone.utc)
    posts, plans, post_truth = [], [], {}
    for i, (s, hidden) in enumerate(entries):
        pid = f"p{i + 1:06d}"
        when += timedelta(seconds=rng.randint(60, 14 * 3600))
        prng = random.Random(f"{seed}:post:{pid}")
        fav = min(9000, int(3 * prng.random() ** (-1 / 0.85)))
        mood = prng.choice(MOODS) if prng.random() < MOOD_P else None
        plan = _plan_image(pid, s, by_theme, themes, photos, prng)
        plans.append(plan)
        main_theme = theme_of_stamp[plan.layers[0].stamp]
        post_truth[pid] = {"song": s.key, "image_theme": main_theme, "stamps": [ly.stamp for ly in plan.layers]}
        posts.append({
            "post_id": pid, "image_file": f"images/{pid}.jpg", "title": s.post_title, "artist": s.artist,
            "album": s.album, "duration": s.duration, "mood": mood, "favorite_count": max(1, fav),
            "hidden": hidden, "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        })

    # write
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "posts.jsonl", posts)
    _write_jsonl(out / "lyrics.jsonl", records)
    visible = Counter(p_t["song"] for p, p_t in zip(posts, post_truth.values()) if not p["hidden"])
    truth = {
        "seed": seed,
        "scale": scale,
        "n_posts": n_posts,
        "image_size": image_size,
        "counts": {
            "posts": len(posts), "hidden_posts": n_hidden, "songs": len(songs), "lyric_records": len(records),
            "kinds": {k: sum(s.kind == k for s in songs) for k in KINDS},
            "kinds_with_5_plus": {k: sum(s.kind == k and visible[s.key] >= MIN_POSTS for s in songs) for k in KINDS},
        },
        "params": {"theme_p": THEME_P, "preferred_p": PREFERRED_P, "second_stamp_p": SECOND_STAMP_P,
                   "second_theme_p": SECOND_THEME_P, "min_posts": MIN_POSTS},
        "songs": {
            s.key: {
                "kind": s.kind, "theme": s.theme, "theme_by": s.theme_by, "title": s.title,
                "post_title": s.post_title, "artist": s.artist, "album": s.album, "duration": s.duration,
                "language": s.language or None, "source": s.entry.source if s.entry else None,
                "lyric_id": s.lyric_id, "mismatch_of": s.mismatch_of, "preferred_stamps": list(s.preferred),
                "visible_posts": visible[s.key], "hidden_posts": s.n_hidden,
            }
            for s in songs
        },
        "posts": post_truth,
    }
    (out / "truth.json").write_text(json.dumps(truth, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    # what the corpus was built as, small enough to read before deciding to reuse it
    corpus_info = {"scale": scale, "seed": seed, "n_posts": n_posts, "image_size": image_size,
                   "songs": len(songs), "songs_with_5_plus": sum(v >= MIN_POSTS for v in visible.values())}
    (out / "corpus.json").write_text(json.dumps(corpus_info, indent=1) + "\n", encoding="utf-8")

    n_images = 0
    if write_images:
        n_images = _write_images(out / "images", plans, Path(stamps_dir), image_size, progress, workers)

    summary = CorpusSummary(
        out_dir=str(out), seed=seed, scale=scale, n_posts=len(posts), n_hidden=n_hidden, n_songs=len(songs),
        n_lyric_records=len(records), n_themes=len(themes),
        songs_with_5_plus=sum(v >= MIN_POSTS for v in visible.values()),
        kinds=dict(truth["counts"]["kinds"]), kinds_with_5_plus=dict(truth["counts"]["kinds_with_5_plus"]),
        images_written=n_images, seconds=time.perf_counter() - t0,
    )
    if progress:
        print(summary, file=sys.stderr, flush=True)
    return summary


def _plan_image(pid: str, s: _Song, by_theme, themes, photos, prng: random.Random) -> _Plan:
    def pick(theme_p: float, preferred_p: float) -> str:
        if prng.random() < theme_p:
            if s.preferred and prng.random() < preferred_p:
                return prng.choice(s.preferred)
            return prng.choice(by_theme[s.theme]).path
        other = prng.choice([t for t in themes if t != s.theme])
        return prng.choice(by_theme[other]).path

    layers = [_Layer(pick(THEME_P, PREFERRED_P), prng.uniform(0.5, 0.85), prng.uniform(0.35, 0.65),
                     prng.uniform(0.35, 0.65), prng.choice((0.0, 0.0, prng.uniform(-18, 18))), prng.random() < 0.5)]
    if prng.random() < SECOND_STAMP_P:
        layers.append(_Layer(pick(SECOND_THEME_P, 0.3), prng.uniform(0.2, 0.38), prng.uniform(0.15, 0.85),
                             prng.uniform(0.15, 0.85), 0.0, prng.random() < 0.5))
    u = prng.random()
    if photos and u < PHOTO_BACKGROUND_P:
        bg = ("photo", prng.choice(photos), prng.random(), prng.random(), prng.uniform(0.4, 1.0), _color(prng))
    elif u < 0.35:
        bg = ("solid", _color(prng))
    elif u < 0.8:
        bg = ("linear", _color(prng), _color(prng), prng.uniform(0, 2 * math.pi))
    else:
        bg = ("radial", _color(prng), _color(prng), prng.random(), prng.random())
    return _Plan(pid, bg, tuple(layers))


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _write_images(folder: Path, plans: list[_Plan], stamps_dir: Path, size: int, progress: bool,
                  workers: int | None) -> int:
    import os

    folder.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = max(1, min(2, os.cpu_count() or 1))
    bar = _Progress(progress, len(plans), "demo images")
    seen: dict[str, str] = {}
    done = 0
    chunk = 50
    batches = [(stamps_dir, size, plans[i:i + chunk]) for i in range(0, len(plans), chunk)]
    by_id = {p.post_id: p for p in plans}
    renderer = _Renderer(stamps_dir, size)

    def store(pid: str, data: bytes) -> None:
        nonlocal done
        salt = 0
        while hashlib.sha1(data).hexdigest() in seen:  # keep every image distinct
            salt += 1
            p = by_id[pid]
            data = renderer.render(_Plan(p.post_id, p.background, p.layers, salt=salt))
        seen[hashlib.sha1(data).hexdigest()] = pid
        (folder / f"{pid}.jpg").write_bytes(data)
        done += 1

    try:
        if workers > 1 and len(plans) > 200:
            import multiprocessing as mp

            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(workers) as pool:
                for result in pool.imap(_render_batch, batches):
                    for pid, data in result:
                        store(pid, data)
                    bar.update(len(result))
        else:
            for b in batches:
                for pid, data in _render_batch(b):
                    store(pid, data)
                bar.update(len(b[2]))
    finally:
        bar.close()
    return done
