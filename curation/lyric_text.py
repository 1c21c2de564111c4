"""Lyric text cleaning. Curators see the original; modeling gets the paper's preprocessing
(non-alphanumerics and stop words removed) on top of the cleaning."""

from __future__ import annotations

import re

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

_SECTION = re.compile(r"^\s*[\[\(]\s*(chorus|verse|bridge|intro|outro|hook|refrain|pre-chorus|instrumental)"
                      r"[^\]\)]*[\]\)]\s*$", re.IGNORECASE | re.MULTILINE)
_TIMESTAMP = re.compile(r"\[\d{1,2}:\d{2}(?:[.:]\d{1,3})?\]")
_TAGS = re.compile(r"<[^>]{0,200}>")


def clean_lyric(text: str) -> str:
    """Drop section markers ([Chorus]), synced-lyric timestamps, markup and repeated whitespace."""
    text = _TIMESTAMP.sub("", text)
    text = _SECTION.sub("", text)
    text = _TAGS.sub(" ", text)
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
