"""Lyric side of the model: vocabulary, tag-name embeddings, and the BiLSTM lyric encoder.

Vocabulary: every word of the snapshot's lyrics (``modeling_text`` of *all* its songs, test songs
included) that the word vectors know, most frequent first; index 0 is padding. The vectors are
pretrained and frozen, so a test lyric's words get their pretrained vectors and no label is used:
building the vocabulary from the training songs only would drop, for an unseen song, every word no
training lyric has (about half of split A's test words on the demo snapshot). Lyrics are cut to
``max_len`` tokens.

Encoder (the paper's Sec. 4.2-4.3):

- without attention: a BiLSTM; the lyric vector is its final output, i.e. the forward state after
  the last word concatenated with the backward state after the first word (``2 * hidden``).
- with tag attention (Tan et al. 2015, the attentive LSTM; the paper's Eqs. 8-10 are lost):
  ``m_t = tanh(W_am h_t + W_qm q)``, ``s_t = softmax_t(w_ms . m_t)`` over the lyric's real tokens,
  ``h~_t = s_t h_t``, with ``q`` the pooled (average or max) word embedding of the image's top-5 tag
  names. The reweighted outputs are summed over the lyric, ``sum_t s_t h_t`` (Tan et al.'s average
  pooling of ``h~_t``, up to the constant length factor). No second encoder: an earlier version ran
  a second BiLSTM over ``h~_t`` and measured worse than no attention at all (R@1 8.0 against 15.3,
  demo snapshot, split B). The lyric vector then depends on the query image: score (image, song) pairs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD = "<pad>"
DEFAULT_MAX_LEN = 200
LENGTH_CHUNK = 64  # lyrics per BiLSTM call when a batch is sorted by length (``LyricEncoder.context``)


def tokenize(text: str | None) -> list[str]:
    """``modeling_text`` is already lower-case tokens joined by spaces."""
    return (text or "").lower().split()


def tfidf_vocabulary(texts: Iterable[str]) -> tuple[dict[str, int], np.ndarray]:
    """Every word of ``texts`` -> its id (from 1; 0 stands for a lyric with no known word), and the
    smoothed idf per id: ``log((1 + n) / (1 + df)) + 1`` (0 for id 0). No word vectors needed."""
    texts = list(texts)
    df = Counter(w for t in texts for w in set(tokenize(t)))
    words = {w: i + 1 for i, w in enumerate(sorted(df))}
    n = max(1, len(texts))
    idf = np.array([0.0] + [math.log((1 + n) / (1 + df[w])) + 1.0 for w in sorted(df)], dtype=np.float32)
    return words, idf


def tfidf_bags(texts: Iterable[str], words: dict[str, int], idf: np.ndarray) -> list[list[tuple[int, float]]]:
    """Each text as (word id, tf-idf) pairs, L2-normalised; unknown words are dropped and a text with
    none is ``[(0, 1.0)]``."""
    out = []
    for t in texts:
        tf = Counter(words[w] for w in tokenize(t) if w in words)
        bag = [(i, c * float(idf[i])) for i, c in sorted(tf.items())] or [(0, 1.0)]
        norm = math.sqrt(sum(x * x for _, x in bag)) or 1.0
        out.append([(i, x / norm) for i, x in bag])
    return out


def tag_name_words(name: str) -> list[str]:
    """``"golden retriever"`` -> ``["golden", "retriever"]``; ``"jack-o'-lantern"`` -> jack, o, lantern."""
    return re.findall(r"[a-z0-9]+", name.lower())


@dataclass
class Vocabulary:
    words: list[str]  # words[0] is PAD
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        if not self.words or self.words[0] != PAD:
            self.words = [PAD] + [w for w in self.words if w != PAD]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, texts: Iterable[str], word_vectors) -> "Vocabulary":
        counts = Counter(w for t in texts for w in tokenize(t) if w in word_vectors.key_to_index)
        return cls([PAD] + [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))])

    def encode(self, text: str, max_len: int = DEFAULT_MAX_LEN) -> list[int]:
        """Known words' ids, unknown words dropped, at most ``max_len``; an empty result is ``[0]``."""
        ids = [self.index[w] for w in tokenize(text) if w in self.index][:max_len]
        return ids or [0]

    def embedding_matrix(self, word_vectors) -> np.ndarray:
        out = np.zeros((len(self.words), word_vectors.vector_size), dtype=np.float32)
        for i, w in enumerate(self.words[1:], start=1):
            out[i] = word_vectors[w]
        return out


def tag_embedding_matrix(tag_names: Sequence[str], word_vectors) -> np.ndarray:
    """[T, D]: each tag name's mean word vector (words the vectors lack are skipped; none known -> 0)."""
    out = np.zeros((len(tag_names), word_vectors.vector_size), dtype=np.float32)
    for i, name in enumerate(tag_names):
        known = [w for w in tag_name_words(name) if w in word_vectors.key_to_index]
        if known:
            out[i] = np.mean([word_vectors[w] for w in known], axis=0)
    return out


def pad_batch(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (tokens [B, L] long, lengths [B] long on CPU)."""
    lengths = torch.tensor([max(1, len(s)) for s in sequences], dtype=torch.long)
    tokens = torch.zeros(len(sequences), int(lengths.max()) if len(sequences) else 1, dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            tokens[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return tokens, lengths


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a zero-padded batch [B, L, ...] within its own length (padding stays at the end)."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    n = lengths.to(x.device).unsqueeze(1)
    idx = torch.where(steps < n, n - 1 - steps, steps)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x))


class BiLSTM(nn.Module):
    """A one-layer BiLSTM over zero-padded batches, without packing: the backward direction reads each
    sequence reversed within its length, so padding only ever follows the real tokens and never reaches
    a real output. Same results as a packed ``nn.LSTM(bidirectional=True)``; on the CPU its backward pass
    is about ten times faster (packed sequences backpropagate step by step in small pieces)."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.forward_lstm = nn.LSTM(input_size, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(input_size, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (outputs h_t [B, L, 2H], zero past each length; final output [B, 2H]: the forward state after
        the last word and the backward state after the first)."""
        fwd, _ = self.forward_lstm(x)
        bwd, _ = self.backward_lstm(reverse_within_length(x, lengths))
        last = (lengths.to(x.device) - 1).view(-1, 1, 1)
        final = torch.cat([fwd.gather(1, last.expand(-1, 1, fwd.shape[2])).squeeze(1),
                           bwd.gather(1, last.expand(-1, 1, bwd.shape[2])).squeeze(1)], dim=-1)
        out = torch.cat([fwd, reverse_within_length(bwd, lengths)], dim=-1)
        mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)
        return out * mask.unsqueeze(-1).to(out.dtype), final


class LyricEncoder(nn.Module):
    def __init__(
        self,
        embeddings: np.ndarray | torch.Tensor,
        *,
        hidden: int = 128,
        attention: bool = False,
        attention_dim: int | None = None,
        query_dim: int | None = None,
    ):
        super().__init__()
        emb = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        self.embedding = nn.Embedding.from_pretrained(emb, freeze=True, padding_idx=0)
        self.word_dim = emb.shape[1]
        self.hidden = hidden
        self.attention = attention
        self.lstm = BiLSTM(self.word_dim, hidden)
        if attention:
            a = attention_dim or hidden
            self.W_am = nn.Linear(2 * hidden, a, bias=False)
            self.W_qm = nn.Linear(query_dim or self.word_dim, a, bias=True)
            self.w_ms = nn.Linear(a, 1, bias=False)

    @property
    def output_dim(self) -> int:
        return 2 * self.hidden

    def context(self, tokens: torch.Tensor, lengths: torch.Tensor, chunk: int = LENGTH_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
        """First BiLSTM -> (outputs h_t [B, L, 2H], final output [B, 2H]); independent of the image.

        The BiLSTM steps through every padded position, and a batch's lyrics vary in length (a few words
        to ``max_len``): lyrics of similar length go through it together, ``chunk`` at a time, each chunk
        cut to its own longest lyric. Padding changes no output, so the result is the same."""
        if len(lengths) <= chunk:
            return self.lstm(self.embedding(tokens), lengths)
        order = torch.argsort(lengths, stable=True)
        outputs, finals = [], []
        for part in order.split(chunk):
            n = int(lengths[part].max())
            h, final = self.lstm(self.embedding(tokens[part.to(tokens.device), :n]), lengths[part])
            outputs.append(F.pad(h, (0, 0, 0, tokens.shape[1] - n)))
            finals.append(final)
        inverse = torch.argsort(order).to(tokens.device)
        return torch.cat(outputs)[inverse], torch.cat(finals)[inverse]

    def attention_keys(self, h: torch.Tensor) -> torch.Tensor:
        """``W_am h_t`` [..., L, A]: the half of ``m_t`` that does not depend on the image, so a lyric's keys are
        computed once and reused for every image it is paired with."""
        return self.W_am(h)

    def _token_weights(self, keys: torch.Tensor, query: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """softmax_t(w_ms . tanh(keys + query)) over the real tokens; ``query`` (``W_qm q``) broadcasts against
        ``keys`` [..., L, A], ``lengths`` [B] against the lyric axis."""
        logits = self.w_ms(torch.tanh(keys + query)).squeeze(-1)
        mask = torch.arange(keys.shape[-2], device=keys.device) < lengths.to(keys.device).unsqueeze(-1)
        return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)

    def attention_weights(self, h: torch.Tensor, lengths: torch.Tensor, q: torch.Tensor,
                          keys: torch.Tensor | None = None) -> torch.Tensor:
        """s_t [B, L], one query per lyric: softmax over each lyric's real tokens (padding gets exactly 0).
        ``keys``: the lyrics' ``attention_keys`` when already computed."""
        keys = self.attention_keys(h) if keys is None else keys
        return self._token_weights(keys, self.W_qm(q).unsqueeze(1), lengths)

    def attend(self, h: torch.Tensor, lengths: torch.Tensor, q: torch.Tensor,
               keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reweight h_t by the tag attention and sum over the lyric -> (lyric vector [B, 2H], s [B, L])."""
        s = self.attention_weights(h, lengths, q, keys)
        return torch.einsum("bl,bld->bd", s, h), s

    def attend_grid(self, h: torch.Tensor, lengths: torch.Tensor, q: torch.Tensor,
                    keys: torch.Tensor | None = None) -> torch.Tensor:
        """Every query with every lyric -> lyric vectors [Q, B, 2H] for ``q`` [Q, D] and lyrics ``h`` [B, L, 2H]:
        the same as ``attend`` on each (query, lyric) pair, without copying a lyric's outputs per pair."""
        keys = self.attention_keys(h) if keys is None else keys
        s = self._token_weights(keys, self.W_qm(q)[:, None, None, :], lengths)  # [Q, B, L]
        return torch.einsum("qbl,bld->qbd", s, h)

    def forward(self, tokens, lengths, q=None, return_attention: bool = False):
        h, final = self.context(tokens, lengths)
        s = None
        if self.attention:
            if q is None:
                raise ValueError("this encoder uses tag attention: pass q, the pooled tag embedding [B, D]")
            final, s = self.attend(h, lengths, q)
        return (final, s) if return_attention else final
