"""WordNet 3.0 nouns, read from the database files Debian's ``wordnet-base`` installs.

ImageNet's class ids (``n02085620``) are ``n`` + the 8-digit byte offset of the class's synset in
WordNet 3.0's ``data.noun``, so the hypernym graph folds fine classes into readable ones without nltk
or any download. Only what the object vocabulary needs is parsed: each synset's lemmas and its
hypernym pointers (``@`` hypernym, ``@i`` instance hypernym); see wndb(5WN) for the line format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Debian's wordnet-base; WNSEARCHDIR is WordNet's own variable for another location.
DEFAULT_DIRS = ("/usr/share/wordnet",)


@dataclass(frozen=True)
class Synset:
    offset: int
    lemmas: tuple[str, ...]  # as written in WordNet, underscores for spaces
    hypernyms: tuple[int, ...]  # offsets of noun hypernyms (@ and @i)

    @property
    def name(self) -> str:
        """The first lemma, readable: ``golden_retriever`` -> ``golden retriever``."""
        return self.lemmas[0].replace("_", " ")


def wordnet_dir() -> Path:
    candidates = [os.environ["WNSEARCHDIR"]] if os.environ.get("WNSEARCHDIR") else []
    candidates += DEFAULT_DIRS
    for folder in candidates:
        if (Path(folder) / "data.noun").is_file():
            return Path(folder)
    raise FileNotFoundError(
        f"WordNet 3.0's data.noun was not found in {', '.join(candidates)}: install Debian's wordnet-base "
        "(`apt-get install wordnet-base`) or set WNSEARCHDIR to a folder holding WordNet 3.0's database files")


def parse_data_line(line: str) -> Synset:
    """One ``data.noun`` line: ``offset lex_filenum ss_type w_cnt word lex_id … p_cnt ptr… | gloss``."""
    fields = line.split(" | ", 1)[0].split()
    offset = int(fields[0])
    n_words = int(fields[3], 16)
    lemmas = tuple(fields[4 + 2 * i] for i in range(n_words))
    at = 4 + 2 * n_words
    n_pointers = int(fields[at])
    hypernyms = []
    for i in range(n_pointers):
        symbol, target, pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
        if symbol in ("@", "@i") and pos == "n":
            hypernyms.append(int(target))
    return Synset(offset, lemmas, tuple(hypernyms))


@lru_cache(maxsize=2)
def load_nouns(folder: str | None = None) -> dict[int, Synset]:
    """Every noun synset by offset (about 82,000; parsed in about a second)."""
    path = Path(folder or wordnet_dir()) / "data.noun"
    nouns: dict[int, Synset] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  "):  # the licence header
                continue
            synset = parse_data_line(line)
            nouns[synset.offset] = synset
    return nouns


def wnid_offset(wnid: str) -> int:
    if not (len(wnid) == 9 and wnid[0] == "n" and wnid[1:].isdigit()):
        raise ValueError(f"not a WordNet noun id: {wnid!r}")
    return int(wnid[1:])


def ancestors_by_distance(nouns: dict[int, Synset], offset: int) -> list[list[int]]:
    """Breadth-first layers up the hypernym graph: [[offset], [parents], [grandparents], …]."""
    layers, seen, layer = [], {offset}, [offset]
    while layer:
        layers.append(layer)
        nxt = []
        for o in layer:
            for h in nouns[o].hypernyms:
                if h not in seen:
                    seen.add(h)
                    nxt.append(h)
        layer = sorted(nxt)
    return layers
