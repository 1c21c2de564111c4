"""Retrieval models: the paper's model (``paper``), its baselines (``baselines/``) and the hybrid scorer.

Every model answers one question the same way: ``score(image_probs [I, T], song_ids, song_texts) ->
[I, S]`` (higher = more relevant), so the harness (``modeling.harness``) trains, evaluates and
reports them side by side. A model is fitted on a ``modeling.harness.data.SplitData`` (train and
validation pairs of one split, one tag vocabulary) with ``fit(data, ...)``.

The trainable ones share a small torch interface, ``JointModule``: images and songs are mapped to one
space and compared by cosine similarity; a *conditional* module (tag attention) builds a song's vector
for a given image, so its song side takes a context computed once per song (``song_context``) and
finishes it per (image, song) pair (``song_pairs``, in training) or for every image and song of a block
at once (``song_grid``, in scoring).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

class JointModule(nn.Module):
    """Images and songs in one space; see the package docstring."""

    conditional = False

    def image_side(self, probs: torch.Tensor) -> torch.Tensor:  # [B, T] tag probs -> [B, D]
        raise NotImplementedError

    def song_context(self, songs: Any, rows: torch.Tensor) -> Any:
        """What the song side needs for ``rows`` (indices into ``songs``, the model's prepared inputs)."""
        raise NotImplementedError

    def song_pairs(self, context: Any, idx: torch.Tensor, probs: torch.Tensor | None) -> torch.Tensor:
        """Song vectors [P, D] for pairs: ``idx`` [P] indexes the context's songs, ``probs`` [P, T] the
        paired images (used by conditional modules only)."""
        raise NotImplementedError

    def song_vectors(self, context: Any) -> torch.Tensor:
        """All songs of a context [U, D]; non-conditional modules only."""
        raise NotImplementedError

    def song_grid(self, context: Any, probs: torch.Tensor) -> torch.Tensor:
        """Song vectors [I, U, D] of every image of ``probs`` [I, T] with every song of the context;
        conditional modules only."""
        raise NotImplementedError


@torch.inference_mode()
def score_matrix(module: JointModule, songs: Any, n_songs: int, probs: np.ndarray, *, device=None,
                 song_batch: int = 128, pair_batch: int = 4096) -> np.ndarray:
    """Cosine similarity [I, S] between images (tag probs) and the first ``n_songs`` prepared songs."""
    module.eval()
    dev = device or next(itertools.chain(module.parameters(), module.buffers()), torch.zeros(0)).device
    p = torch.as_tensor(np.asarray(probs, dtype=np.float32), device=dev)
    n_img = p.shape[0]
    out = np.zeros((n_img, n_songs), dtype=np.float32)
    if n_img == 0 or n_songs == 0:
        return out
    img = F.normalize(module.image_side(p).float(), dim=-1)
    # A conditional module attends over every padded token of every pair: blocks of songs of similar
    # length (its songs are token lists) pad little.
    order = sorted(range(n_songs), key=lambda i: len(songs[i])) if module.conditional else list(range(n_songs))
    for s0 in range(0, n_songs, song_batch):
        block = order[s0 : s0 + song_batch]
        rows = torch.tensor(block, device=dev)
        ctx = module.song_context(songs, rows)
        if not module.conditional:
            vec = F.normalize(module.song_vectors(ctx).float(), dim=-1)
            out[:, block] = (img @ vec.T).cpu().numpy()
            continue
        per = max(1, pair_batch // len(rows))  # images per step
        for i0 in range(0, n_img, per):
            i1 = min(n_img, i0 + per)
            vec = F.normalize(module.song_grid(ctx, p[i0:i1]).float(), dim=-1)  # [k, songs, D]
            out[i0:i1, block] = torch.einsum("kcd,kd->kc", vec, img[i0:i1]).cpu().numpy()
    return out


def rowwise_standardize(scores: np.ndarray) -> np.ndarray:
    """Each query's scores minus their mean over the candidates, divided by their standard deviation."""
    s = np.asarray(scores, dtype=np.float64)
    return (s - s.mean(1, keepdims=True)) / np.maximum(s.std(1, keepdims=True), 1e-12)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (a zero row stays zero)."""
    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def save_scorer(scorer, path) -> "Path":
    """Write a fitted model (any scorer of this package) to one file, atomically."""
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = getattr(scorer, "module", None)
    if module is not None:
        module.cpu()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(scorer, tmp)
    os.replace(tmp, path)
    return path


def load_scorer(path, *, device: str = "auto"):
    """Read a model written by ``save_scorer`` (a pickle: load only run folders you trust); a folder
    means its ``paper.pt`` (the paper's model of an experiment)."""
    from pathlib import Path

    from modeling import resolve_device

    path = Path(path)
    if path.is_dir():
        path = path / "paper.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}")
    scorer = torch.load(path, map_location="cpu", weights_only=False)
    module = getattr(scorer, "module", None)
    if module is not None:
        module.to(resolve_device(device)).eval()
    return scorer
