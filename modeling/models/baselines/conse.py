"""CONSE (Norouzi et al. 2014) as the paper uses it: an image is the convex combination of its top-10
tags' name vectors weighted by their probabilities, a song the mean word vector of its lyric, scored
by cosine similarity. Nothing is trained."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from modeling.lyric_encoder import Vocabulary, tag_embedding_matrix
from modeling.models import unit_rows

TOP_TAGS = 10


class ConseScorer:
    name = "conse"

    def __init__(self, vocab: Vocabulary, embeddings: np.ndarray, tag_embeddings: np.ndarray):
        self.vocab, self.embeddings, self.tag_embeddings = vocab, embeddings, tag_embeddings

    @classmethod
    def build(cls, texts: Sequence[str], tag_names: Sequence[str], word_vectors) -> "ConseScorer":
        vocab = Vocabulary.build(texts, word_vectors)
        return cls(vocab, vocab.embedding_matrix(word_vectors), tag_embedding_matrix(tag_names, word_vectors))

    def image_vectors(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float32)
        k = min(TOP_TAGS, probs.shape[1])
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        w = np.take_along_axis(probs, top, 1)
        return np.einsum("ik,ikd->id", w, self.tag_embeddings[top]) / np.maximum(w.sum(1, keepdims=True), 1e-12)

    def song_vectors(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.embeddings.shape[1]), dtype=np.float32)
        for j, t in enumerate(texts):
            ids = [i for i in self.vocab.encode(t or "", 10**9) if i]
            if ids:
                out[j] = self.embeddings[ids].mean(0)
        return out

    def score(self, image_probs: np.ndarray, song_ids: Sequence[str], song_texts: Sequence[str]) -> np.ndarray:
        return unit_rows(self.image_vectors(image_probs)) @ unit_rows(self.song_vectors(song_texts)).T
