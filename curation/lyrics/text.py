"""Lyric text cleaning. Curators see the original; modeling gets the paper's preprocessing
(non-alphanumerics and stop words removed) on top of the cleaning."""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata

# The usual English stop-word list (NLTK's), kept here so that nothing is downloaded.
STOP_WORDS = frozenset("""
a about above after again against ain all am an and any are aren aren't as at be because been before
being below between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing don
don't down during each few for from further had hadn hadn't has hasn hasn't have haven haven't having he
her here hers herself him himself his how i if in into is isn isn't it it's its itself just ll m ma me
mightn mightn't more most mustn mustn't my myself needn needn't no nor not now o of off on once only or
other our ours ourselves out over own re s same shan shan't she she's should should've shouldn shouldn't
so some such t than that that'll the their theirs them themselves then there these they this those
through to too under until up ve very was wasn wasn't we were weren weren't what when where which while
who whom why will with won won't wouldn wouldn't y you you'd you'll you're you've your yours yourself
yourselves
""".split())

_SECTION_WORDS = r"(chorus|verse|bridge|intro|outro|hook|refrain|pre-chorus|post-chorus|interlude|instrumental|break|repeat)"
_SECTION = re.compile(r"^\s*[\[\(\{]\s*" + _SECTION_WORDS + r"[^\]\)\}]*[\]\)\}]\s*$"   # [Chorus], (Verse 2: X)
                      r"|^\s*" + _SECTION_WORDS + r"(\s*\d+)?\s*:\s*$"                       # Chorus:
                      r"|[\[\(]\s*[x×]\s*\d+\s*[\]\)]|[\[\(]\s*\d+\s*[x×]\s*[\]\)]",  # (x2), [2x]
                      re.IGNORECASE | re.MULTILINE)
_TIMESTAMP = re.compile(r"\[\d{1,3}:\d{2}(?:[.:]\d{1,3})?\]|<\d{1,3}:\d{2}(?:[.:]\d{1,3})?>")  # LRC, enhanced LRC
_LRC_TAG = re.compile(r"^\s*\[(ar|ti|al|au|by|length|offset|re|ve|#):[^\]]*\]\s*$", re.IGNORECASE | re.MULTILINE)
_TAGS = re.compile(r"<(script|style)\b[^>]{0,200}>.*?</\1\s*>|<[^>]{0,200}>", re.IGNORECASE | re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\ufeff]")


def clean_lyric(text: str) -> str:
    """Drop section markers ([Chorus], "Verse 2:", "(x2)"), synced-lyric timestamps and LRC tags,
    markup (script and style with their content), control characters and repeated whitespace."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _TIMESTAMP.sub("", text)
    text = _LRC_TAG.sub("", text)
    text = _TAGS.sub(" ", text)
    text = html.unescape(text)
    text = _SECTION.sub("", text)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def modeling_tokens(text: str) -> list[str]:
    """Lower-case alphanumeric words of the cleaned lyric, stop words removed (the paper's preprocessing)."""
    tokens = []
    for word in re.findall(r"[a-z0-9']+", clean_lyric(text).lower()):
        word = word.strip("'")
        if word in STOP_WORDS:  # "don't" is a stop word with its apostrophe
            continue
        word = word.replace("'", "")
        if len(word) > 1 and word not in STOP_WORDS:
            tokens.append(word)
    return tokens


def text_hash(text: str | None) -> str | None:
    """sha256 of the lyric's words (cleaned, case- and accent-folded, punctuation and spacing ignored):
    the same lyric under two songs gets the same hash. None for a text without words."""
    if not text:
        return None
    folded = unicodedata.normalize("NFKD", clean_lyric(text)).casefold()
    words = re.findall(r"[^\W_]+", "".join(c for c in folded if not unicodedata.combining(c)))
    return hashlib.sha256(" ".join(words).encode()).hexdigest() if words else None


def title_in_text(title: str, text: str | None) -> float:
    """Share of a title's words (stop words aside; extras such as "(Live)" dropped) found in the lyric:
    evidence that the text is this song's."""
    from crawlers.lyrics import normalize

    words = normalize(title).split()
    words = [w for w in words if w not in STOP_WORDS] or words
    if not words or not text:
        return 0.0
    folded = unicodedata.normalize("NFKD", clean_lyric(text)).encode("ascii", "ignore").decode().lower()
    found = set(re.findall(r"[a-z0-9]+", folded))
    return round(sum(w in found for w in words) / len(words), 3)
