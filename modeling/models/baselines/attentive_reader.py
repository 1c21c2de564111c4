"""The Attentive Reader (Hermann et al. 2015) as an image -> song baseline: the query ``u`` is a learned
projection of the image's whole tag vector (not the pooled top-5 tag-name embeddings of the paper's
model); attention over the BiLSTM outputs ``y_t`` gives ``r = sum_t s_t y_t`` and the song vector is
``MLP(r)`` (its first layer is the reader's ``tanh(W_rg r)``). The reader's ``W_ug u`` term is left out
of the song vector: it would let the image itself pass into the song side, and a regression onto the
image would then learn to ignore the lyric."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from modeling.lyric_encoder import DEFAULT_MAX_LEN, Vocabulary, tag_embedding_matrix
from modeling.models.paper import DEFAULT_CENTER, DEFAULT_IMAGE_REPR, Image2SongModel, ImageSpace, LyricScorer

QUERY_DIM = 64


class AttentiveReaderModule(Image2SongModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, attention=True, **kwargs)
        self.W_u = nn.Linear(self.tag_embeddings.shape[0], QUERY_DIM)

    def query_dim(self, tag_emb: torch.Tensor) -> int:
        return QUERY_DIM

    def query_vector(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.W_u(self.image_space.torch_transform(probs)))


class AttentiveReader(LyricScorer):
    name = "attentive-reader"

    @classmethod
    def build(cls, texts: Sequence[str], tag_names: Sequence[str], word_vectors, train_probs: np.ndarray, *,
              hidden: int = 64, mlp_hidden: int = 256, max_len: int = DEFAULT_MAX_LEN, **config) -> "AttentiveReader":
        vocab = Vocabulary.build(texts, word_vectors)
        space = ImageSpace.fit(train_probs, DEFAULT_IMAGE_REPR, DEFAULT_CENTER)
        module = AttentiveReaderModule(vocab.embedding_matrix(word_vectors), tag_embedding_matrix(tag_names, word_vectors),
                                       space, hidden=hidden, mlp_hidden=mlp_hidden)
        return cls(module, vocab, tag_names, dict(hidden=hidden, mlp_hidden=mlp_hidden, max_len=max_len, **config))
