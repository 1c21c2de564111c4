"""Bag of words: polynomial semantic indexing (Bai et al. 2009) of degree 2 with a low-rank ``W = U^T V``:
``f(image, song) = (U x) . (V d)`` with ``x`` the image's tag vector (``ImageSpace``) and ``d`` the lyric's
tf-idf bag of words (every word of the snapshot's lyrics, word vectors not needed), trained with the
margin ranking loss; compared by cosine like every other model."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from modeling.lyric_encoder import tfidf_bags, tfidf_vocabulary
from modeling.models import JointModule, score_matrix
from modeling.models.paper import DEFAULT_CENTER, DEFAULT_IMAGE_REPR, ImageSpace


class SemanticIndexingModule(JointModule):
    def __init__(self, n_words: int, image_dim: int, image_space: ImageSpace, dim: int = 64):
        super().__init__()
        self.image_space = image_space
        self.words = nn.EmbeddingBag(n_words, dim, mode="sum")
        self.tags = nn.Linear(image_dim, dim, bias=False)
        nn.init.normal_(self.words.weight, std=0.1)

    def image_side(self, probs):
        return self.tags(self.image_space.torch_transform(probs))

    def song_context(self, songs, rows):
        bags = [songs[i] for i in rows.tolist()]
        dev = self.tags.weight.device
        ids = torch.tensor([w for b in bags for w, _ in b], dtype=torch.long, device=dev)
        weights = torch.tensor([x for b in bags for _, x in b], dtype=torch.float32, device=dev)
        offsets = torch.tensor([0] + list(np.cumsum([len(b) for b in bags])[:-1]), dtype=torch.long, device=dev)
        return self.words(ids, offsets, per_sample_weights=weights)

    def song_pairs(self, context, idx, probs):
        return context[idx]

    def song_vectors(self, context):
        return context


class SemanticIndexing:
    name = "psi"
    losses = ("margin",)

    def __init__(self, module: SemanticIndexingModule, words: dict[str, int], idf: np.ndarray, config: dict):
        self.module, self.words, self.idf, self.config = module, words, idf, config

    @classmethod
    def build(cls, texts: Sequence[str], tag_names: Sequence[str], train_probs: np.ndarray, *, dim: int = 64,
              image_space: ImageSpace | None = None, **config) -> "SemanticIndexing":
        words, idf = tfidf_vocabulary(texts)
        space = image_space or ImageSpace.fit(train_probs, DEFAULT_IMAGE_REPR, DEFAULT_CENTER)
        module = SemanticIndexingModule(len(words) + 1, space.dim(len(tag_names)), space, dim)
        return cls(module, words, idf, dict(dim=dim, n_words=len(words), image_repr=space.label, **config))

    def prepare(self, texts: Sequence[str]) -> list[list[tuple[int, float]]]:
        """Each lyric as (word id, tf-idf) pairs, L2-normalised; words the snapshot did not have are dropped."""
        return tfidf_bags(texts, self.words, self.idf)

    def score(self, image_probs: np.ndarray, song_ids: Sequence[str], song_texts: Sequence[str]) -> np.ndarray:
        return score_matrix(self.module, self.prepare(song_texts), len(song_texts), image_probs)
