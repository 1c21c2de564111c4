"""Read the packaged real material the demo world is built from.

Two Debian packages provide it:

* ``fortunes`` (+ ``fortunes-min``, ``fortunes-de``, ``fortunes-es``, ``fortunes-it``): plain-text fortune
  files, entries separated by lines holding a single ``%``. The demo's English lyrics come from
  ``songs-poems`` (then ``love``, ``literature``, ``wisdom``); the research scale reads every English file;
  non-English ones come from the ``de/``, ``es/`` and ``it/`` folders.
* ``bible-kjv`` (+ ``bible-kjv-text``), research scale only: the verse books of the King James Bible (Job,
  Psalms, Proverbs, Ecclesiastes, Song of Solomon, Lamentations), read through its ``bible`` command and
  cut into stanzas of at most ``KJV_STANZA_VERSES`` verses.
* ``tuxpaint-stamps-default``: PNG stamps with alpha in category folders; ``name.png`` usually has a caption
  file ``name.txt`` whose first line is the English caption and whose other lines are ``lang.utf8=caption``.

Nothing here is random: every listing is sorted, so the corpus built on top is deterministic for a given
installed version of the packages.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")

ENGLISH_FORTUNE_FILES = ("songs-poems", "love", "literature", "wisdom")
# Every English file of Debian's fortunes and fortunes-min, verse first (ascii-art holds pictures, not text).
# The fortunes folder also holds fortunes-it's Italian files (italia, leggi, ...), hence a list, not a glob.
ALL_ENGLISH_FORTUNE_FILES = ENGLISH_FORTUNE_FILES + (
    "art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs", "education", "ethnic", "food",
    "fortunes", "goedel", "humorists", "kids", "knghtbrd", "law", "linux", "linuxcookie", "magic", "medicine",
    "men-women", "miscellaneous", "news", "paradoxum", "people", "perl", "pets", "platitudes", "politics",
    "pratchett", "riddles", "science", "sports", "startrek", "tao", "translate-me", "work", "zippy",
)
# The King James Bible's books of verse, as ranges of its `bible` command.
KJV_VERSE_BOOKS = (
    "Ps1:1-Ps150:6", "SSol1:1-SSol8:14", "Lam1:1-Lam5:22", "Job1:1-Job42:17", "Prov1:1-Prov31:31",
    "Eccl1:1-Eccl12:14",
)
KJV_STANZA_VERSES = 8
KJV_WHOLE = ("Gen1:1-Rev22:21",)
FOREIGN_FORTUNE_FILES = {
    "de": ("de/gedichte", "de/zitate"),
    "es": ("es/sentimientos.fortunes", "es/amistad.fortunes", "es/vida.fortunes"),
    "it": ("it/italia", "it/luttazzi"),
}
FOREIGN_PACKAGES = {"de": "fortunes-de", "es": "fortunes-es", "it": "fortunes-it"}

# Stamp folders left out of the theme pool: letters and hand signs say nothing about a lyric.
EXCLUDED_STAMP_DIRS = ("symbols/alphabets",)
# Folder names that only describe a drawing style or variant, not content.
STYLE_DIRS = frozenset({"cartoon", "filled", "outlined", "uppercase", "lowercase", "plastic", "coins", "00_symbols"})
MIN_THEME_STAMPS = 3

MIN_LYRIC_WORDS = 12

EN_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such
    than that the their theirs them themselves then there these they this those through to too under until
    up very was we were what when where which while who whom why will with would you your yours yourself
    yourselves o oh thee thou thy thine ye doth hath thus shall may might must upon unto let us one two three like get got
    said say says go goes went come came make made know see saw yet still ever never every also though
    s t ll ve re d m don won isn aren wasn weren hasn haven didn doesn couldn wouldn shouldn""".split()
)
# Words that are too generic in stamp captions to decide a theme.
CAPTION_NOISE = frozenset(
    """red green blue yellow orange purple pink brown black white grey gray gold golden silver dark light
    big small little large tiny old new young front back side left right top view single pair group
    full half empty open closed type kind picture image drawing photo cartoon mirror stamp tux
    way end first give mean turn ahead slowly safe last world get join call final hundred year roll fast
    tough surprise action remember important part put take stand number odd object middle plus sit lets
    called named used made means something another""".split()
)
# A few everyday words per category folder, so that lyrics about "the sky" or "a storm" find a theme.
THEME_HINTS = {
    "animals": ("animal", "beast", "creature", "wild", "zoo"),
    "animals/birds": ("bird", "wing", "feather", "nest", "sing", "fly", "dove", "sparrow", "swallow"),
    "animals/fish": ("fish", "sea", "river", "swim", "ocean"),
    "animals/insects": ("bee", "fly", "butterfly", "bug", "spider", "ant"),
    "animals/mammals": ("dog", "cat", "horse", "hound", "wolf", "lamb", "beast"),
    "clothes": ("dress", "coat", "shoe", "wear", "gown", "boot"),
    "food": ("bread", "eat", "dinner", "supper", "feast", "meat", "wine"),
    "food/fruit": ("apple", "fruit", "cherry", "sweet", "orchard"),
    "hobbies/music": ("music", "song", "sing", "play", "tune", "guitar", "fiddle", "drum", "band"),
    "household": ("home", "house", "room", "door", "table", "bed", "chair", "window"),
    "medical": ("doctor", "sick", "pain", "heart", "blood", "medicine", "ill"),
    "military": ("war", "soldier", "battle", "gun", "army", "fight", "sword"),
    "naturalforces": ("fire", "storm", "thunder", "lightning", "rain", "wind", "flame", "burn"),
    "people": ("man", "woman", "child", "boy", "girl", "face", "eye", "body"),
    "plants": ("leaf", "grass", "garden", "green", "grow", "seed", "field"),
    "plants/flowers": ("flower", "rose", "lily", "bloom", "blossom", "daisy", "violet"),
    "plants/trees": ("tree", "forest", "wood", "oak", "pine", "branch", "leaves"),
    "seasonal/christmas": ("christmas", "snow", "winter", "bell", "gift", "santa"),
    "seasonal/halloween": ("ghost", "witch", "night", "dark", "grave", "death", "skull"),
    "space": ("sky", "star", "heaven", "night", "space"),
    "space/moon": ("moon", "night", "moonlight"),
    "space/planets": ("planet", "star", "sun", "world", "earth", "sky"),
    "sports": ("ball", "game", "play", "run", "race", "win", "team"),
    "symbols/money": ("money", "gold", "dollar", "rich", "poor", "coin", "pay", "buy"),
    "symbols/music": ("music", "note", "song", "sing", "melody"),
    "town": ("town", "city", "street", "road", "church", "tower"),
    "town/houses": ("house", "home", "roof", "cottage", "wall"),
    "vehicles": ("car", "drive", "road", "ride", "wheel"),
    "vehicles/ship": ("ship", "sea", "sail", "boat", "ocean", "sailor"),
    "vehicles/locomotive": ("train", "railway", "rail", "station"),
    "vehicles/flight": ("plane", "fly", "flight", "air"),
}
FOREIGN_STOPWORDS = {
    "de": frozenset("der die das und ist nicht ein eine zu den von mit sich des auf für im dem es wie auch als "
                    "an er so daß dass sie wir ich du wenn nur noch aber man".split()),
    "es": frozenset("el la de que y en los las un una es no se por con para su al lo como más pero sus le ya "
                    "o si mi me te hay del amor".split()),
    "it": frozenset("il la di che e è un una per non in con si lo le del della i gli da ma come mi ti se sono "
                    "al nel più ho ha".split()),
}

_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


class MaterialMissingError(FileNotFoundError):
    """The packaged material is not installed (says which Debian package to install)."""


@dataclass(frozen=True)
class FortuneEntry:
    source: str  # e.g. "songs-poems#12"
    text: str  # cleaned: no attribution line, no overstrike, lines stripped, stanzas kept
    language: str  # "en", "de", "es", "it"


@dataclass(frozen=True)
class Stamp:
    path: str  # relative to the stamps folder, e.g. "animals/birds/robin.png"
    theme: str  # e.g. "animals/birds"
    caption: str  # English caption (or words of the file name when the caption file is missing)
    captions: dict = field(default_factory=dict, compare=False)  # lang -> caption, for de/es/it


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def stem(word: str) -> str:
    """Light stemming, enough to meet "birds"/"bird", "flowers"/"flower", "falling"/"fall"."""
    w = word.lower().replace("'", "")
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("ves") and len(w) > 4:
        return w[:-3] + "f"
    if w.endswith(("ches", "shes", "sses", "xes")) and len(w) > 4:
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    if w.endswith("ing") and len(w) > 5:
        w = w[:-3]
        return w[:-1] if len(w) > 3 and w[-1] == w[-2] else w
    if w.endswith("ed") and len(w) > 4:
        w = w[:-2]
        return w[:-1] if len(w) > 3 and w[-1] == w[-2] else w
    return w


def content_stems(text: str, stopwords: frozenset = EN_STOPWORDS) -> set[str]:
    return {stem(w) for w in words(text) if len(w) > 2 and w not in stopwords}


def _require(path: Path, package: str) -> None:
    if not path.exists():
        raise MaterialMissingError(
            f"{path} not found: the demo world needs the Debian package {package!r} "
            f"(apt-get install {package}), or pass the folder holding that material explicitly"
        )


_OVERSTRIKE = re.compile(r".\x08")
_ATTRIBUTION = re.compile(r"^\s*--\s")


def _clean_entry(raw: str) -> str:
    raw = _OVERSTRIKE.sub("", raw).replace("\x08", "")
    lines: list[str] = []
    for line in raw.split("\n"):
        if _ATTRIBUTION.match(line) or re.match(r"^\s{2,}--", line):
            break  # the attribution ends the entry
        lines.append(re.sub(r"\s+", " ", line.replace("\t", " ")).strip())
    text = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def read_fortune_file(path: Path) -> list[str]:
    u8 = path.with_name(path.name + ".u8")
    src = u8 if u8.exists() else path
    data = src.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return [e for e in (_clean_entry(x) for x in re.split(r"^%[ \t]*$", text, flags=re.M)) if e]


def _looks_like(text: str, language: str) -> bool:
    ws = words(text)
    if len(ws) < MIN_LYRIC_WORDS:
        return False
    en = sum(w in EN_STOPWORDS for w in ws) / len(ws)
    if language == "en":
        return en >= 0.2 and not any(sum(w in s for w in ws) / len(ws) > en for s in FOREIGN_STOPWORDS.values())
    own = sum(w in FOREIGN_STOPWORDS[language] for w in ws) / len(ws)
    return own >= 0.15 and own > en


def load_fortunes(
    fortunes_dir: Path | str = FORTUNES_DIR, english_files: tuple[str, ...] = ENGLISH_FORTUNE_FILES
) -> tuple[list[FortuneEntry], dict[str, list[FortuneEntry]]]:
    """English entries (in the order of ``english_files``: songs-poems first) and non-English entries per language."""
    root = Path(fortunes_dir)
    _require(root / "songs-poems", "fortunes")
    english: list[FortuneEntry] = []
    for name in english_files:
        p = root / name
        if not p.exists():
            if name == "songs-poems":
                _require(p, "fortunes")
            continue
        for i, e in enumerate(read_fortune_file(p)):
            if _looks_like(e, "en"):
                english.append(FortuneEntry(f"{name}#{i}", e, "en"))
    foreign: dict[str, list[FortuneEntry]] = {}
    for lang, names in FOREIGN_FORTUNE_FILES.items():
        found = [root / n for n in names if (root / n).exists()]
        if not found:
            _require(root / names[0], FOREIGN_PACKAGES[lang])
        entries = []
        for p in found:
            for i, e in enumerate(read_fortune_file(p)):
                if _looks_like(e, lang) and len(e) < 900:
                    entries.append(FortuneEntry(f"{p.relative_to(root)}#{i}", e, lang))
        foreign[lang] = entries
    return english, foreign


_KJV_LINE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def load_kjv_verse(bible_command: str = "bible", books: tuple[str, ...] = KJV_VERSE_BOOKS) -> list[FortuneEntry]:
    """The King James Bible's verse books as English entries: each chapter cut into even stanzas of at
    most ``KJV_STANZA_VERSES`` verses, one verse a line (source e.g. ``kjv:Psa23:1-6``)."""
    import shutil
    import subprocess

    exe = shutil.which(bible_command)
    if exe is None:
        raise MaterialMissingError(
            f"{bible_command!r} not found: the research-scale demo world needs the Debian packages "
            "'bible-kjv' and 'bible-kjv-text' (apt-get install bible-kjv)"
        )
    entries: list[FortuneEntry] = []
    for spec in books:
        out = subprocess.run([exe, "-f", spec], capture_output=True, text=True, check=True).stdout
        chapters: dict[tuple[str, int], list[tuple[int, str]]] = {}
        for line in out.splitlines():
            m = _KJV_LINE.match(line.strip())
            if m:
                chapters.setdefault((m.group(1), int(m.group(2))), []).append((int(m.group(3)), m.group(4).strip()))
        if not chapters:
            raise MaterialMissingError(f"{exe} -f {spec} printed no verses: is 'bible-kjv-text' installed?")
        for (book, chapter), verses in chapters.items():
            n = math.ceil(len(verses) / KJV_STANZA_VERSES)
            size = math.ceil(len(verses) / n)
            for i in range(0, len(verses), size):
                part = verses[i:i + size]
                text = "\n".join(v for _, v in part)
                if _looks_like(text, "en"):
                    entries.append(FortuneEntry(f"kjv:{book}{chapter}:{part[0][0]}-{part[-1][0]}", text, "en"))
    return entries


def packaged_english_texts(fortunes_dir: Path | str = FORTUNES_DIR) -> list[str]:
    """All packaged English text, for learning word vectors: every entry of every English fortunes file
    and the whole King James Bible in stanzas (when ``bible-kjv`` is installed)."""
    english, _ = load_fortunes(fortunes_dir, ALL_ENGLISH_FORTUNE_FILES)
    texts = [e.text for e in english]
    try:
        texts += [e.text for e in load_kjv_verse(books=KJV_WHOLE)]
    except MaterialMissingError as missing:
        import logging

        logging.getLogger(__name__).warning("%s; learning from the fortunes alone", missing)
    return texts


def _theme_of(rel_dir: Path) -> tuple[str, ...]:
    return tuple(p for p in rel_dir.parts if p not in STYLE_DIRS)


def load_stamps(stamps_dir: Path | str = STAMPS_DIR) -> list[Stamp]:
    """All usable PNG stamps with their theme (category folder) and captions, sorted by path."""
    root = Path(stamps_dir)
    _require(root, "tuxpaint-stamps-default")
    raw: list[tuple[str, tuple[str, ...], str, dict]] = []
    for png in sorted(root.rglob("*.png")):
        rel = png.relative_to(root)
        rel_s = rel.as_posix()
        if any(rel_s.startswith(d + "/") for d in EXCLUDED_STAMP_DIRS):
            continue
        parts = _theme_of(rel.parent)
        if not parts:
            continue
        txt = png.with_suffix(".txt")
        if not txt.exists() and png.stem.endswith("_mirror"):
            txt = png.with_name(png.stem[: -len("_mirror")] + ".txt")
        caption, captions = " ".join(re.split(r"[_\-\d]+", png.stem)).strip(), {}
        if txt.exists():
            lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
            if lines and "=" not in lines[0]:
                caption = lines[0].strip() or caption
            for line in lines:
                m = re.match(r"^(de|es|it)\.utf8=(.*)$", line)
                if m:
                    captions[m.group(1)] = m.group(2).strip()
        raw.append((rel_s, parts, caption, captions))
    if not raw:
        raise MaterialMissingError(f"no PNG stamps under {root}: install the Debian package 'tuxpaint-stamps-default'")
    # theme = first two content folders; themes with too few stamps fold into their top folder
    by2: dict[str, int] = {}
    for _, parts, _, _ in raw:
        by2["/".join(parts[:2])] = by2.get("/".join(parts[:2]), 0) + 1
    stamps = []
    for rel_s, parts, caption, captions in raw:
        theme = "/".join(parts[:2])
        if by2[theme] < MIN_THEME_STAMPS:
            theme = parts[0]
        stamps.append(Stamp(rel_s, theme, caption, captions))
    counts: dict[str, int] = {}
    for s in stamps:
        counts[s.theme] = counts.get(s.theme, 0) + 1
    return [s for s in stamps if counts[s.theme] >= 2]


def theme_vocabularies(stamps: list[Stamp], language: str = "en") -> dict[str, set[str]]:
    """Per theme, the stems of its folder names, stamp file names and captions (in ``language``)."""
    vocab: dict[str, set[str]] = {}
    stop = EN_STOPWORDS if language == "en" else FOREIGN_STOPWORDS[language]
    for s in stamps:
        v = vocab.setdefault(s.theme, set())
        caption = s.caption if language == "en" else s.captions.get(language, "")
        # only the head of a caption names the thing; long captions go on to explain rules and history
        head = re.split(r"[.!?:;(\u2014]", caption, maxsplit=1)[0]
        head_words = [w for w in words(head) if len(w) > 2 and w not in stop][:6]
        text = " ".join(head_words)
        if language == "en":
            folders = [p for p in s.path.split("/")[:-1] if p not in STYLE_DIRS]
            text += " " + " ".join(folders) + " " + " ".join(re.split(r"[_\-\d]+", Path(s.path).stem))
            text += " " + " ".join(THEME_HINTS.get(s.theme, ()))
            text += " " + " ".join(THEME_HINTS.get(s.theme.split("/")[0], ()))
        v |= {w for w in content_stems(text, stop) if w not in CAPTION_NOISE}
    return vocab
