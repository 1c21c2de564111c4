"""The image2song model: lyric encoder -> MLP into the image tag space, plus the image-side space.

Image representation (``ImageSpace``). The image is its 1000 tag probabilities; the model regresses
a lyric onto a transformed copy of them and retrieval uses cosine similarity in that space.
``image_repr`` picks the transform, ``center_images`` subtracts the training images' mean vector:

- ``"sqrt"`` + centring (the default): ``sqrt(p) - mean_train(sqrt(p))``. ``sqrt(p)`` (the
  Hellinger embedding) has unit norm and spreads the signal beyond the top tag; centring removes
  the component every image shares, which otherwise makes a few images (or songs) "hubs" that rank
  high for every query;
- ``"prob"`` the softmax probabilities as they are (the paper's choice with its 515 tags);
- ``"l2"``   probabilities divided by their L2 norm;
- ``"logstd"`` ``log(p + 1e-6)`` standardised per tag (always centred).

Measured (MSE, no attention, 20 epochs, mean of 3 seeds; R@1 / R@5 / MedR):

- 415 real images (Tux Paint stamps, tagged by EfficientNet-Lite0) paired with 83 "songs" (fortune
  poems with 8 caption words of their images mixed in), split B, chance 1.2 / 6.0 / 42:
  sqrt+centre image->song 30.9 / 63.9 / 3.0, song->image 28.9 / 59.0 / 3.7;
  sqrt 28.5 / 65.1 / 3.0 and 18.9 / 34.9 / 13.7; l2 26.5 / 52.6 / 5.0 and 18.1 / 39.8 / 9.3;
  l2+centre 26.1 / 50.2 / 5.3 and 21.3 / 47.0 / 6.0; prob 20.9 / 43.4 / 7.0 and 18.5 / 36.5 / 10.0;
  prob+centre 21.7 / 46.2 / 6.0 and 18.9 / 39.8 / 9.0; logstd 18.9 / 43.0 / 7.7 and 24.9 / 42.6 / 8.7.
- the tests' synthetic task (tag vectors peaked on one class, 40 songs, chance R@1 2.5), image->song
  / song->image R@1: sqrt+centre 83.3 / 60.8, sqrt 56.7 / 3.3, l2 97.5 / 79.2, l2+centre 99.2 / 82.5,
  prob 74.2 / 50.8, logstd 2.5 / 5.8 (log-scaling gives the noisy tail of tiny probabilities as much
  weight as the tags that carry the content).

Saved file ``model.pt`` (``torch.load(..., weights_only=True)`` safe): ``state_dict``, ``config``,
``vocab`` (words), ``tag_names``, ``image_space``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modeling import resolve_device
from modeling.lyric_encoder import DEFAULT_MAX_LEN, LyricEncoder, Vocabulary, pad_batch

IMAGE_REPRS = ("sqrt", "prob", "l2", "logstd")
DEFAULT_IMAGE_REPR = "sqrt"
DEFAULT_CENTER = True
TOP_K_TAGS = 5
_LOG_EPS = 1e-6


@dataclass
class ImageSpace:
    """Maps tag probabilities [N, T] to the target/retrieval space (see the module docstring)."""

    repr: str = DEFAULT_IMAGE_REPR
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    center: bool = False

    @classmethod
    def fit(cls, probs: np.ndarray, repr: str = DEFAULT_IMAGE_REPR, center: bool = DEFAULT_CENTER) -> "ImageSpace":
        if repr not in IMAGE_REPRS:
            raise ValueError(f"image_repr must be one of {IMAGE_REPRS}, not {repr!r}")
        p = np.asarray(probs, dtype=np.float64)
        if repr == "logstd":
            logp = np.log(p + _LOG_EPS)
            return cls(repr, logp.mean(0).astype(np.float32), (logp.std(0) + 1e-3).astype(np.float32), True)
        if not center:
            return cls(repr)
        return cls(repr, cls(repr)._base(p).mean(0).astype(np.float32), None, True)

    def _base(self, p: np.ndarray) -> np.ndarray:
        if self.repr == "prob":
            return p.copy()
        if self.repr == "l2":
            return p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
        if self.repr == "sqrt":
            return np.sqrt(np.maximum(p, 0.0))
        return (np.log(p + _LOG_EPS) - self.mean) / self.std

    def transform(self, probs: np.ndarray) -> np.ndarray:
        out = self._base(np.asarray(probs, dtype=np.float32))
        if self.center and self.repr != "logstd":
            out = out - self.mean
        return np.asarray(out, dtype=np.float32)

    def to_dict(self) -> dict:
        d = {"repr": self.repr, "center": self.center}
        if self.mean is not None:
            d["mean"] = torch.from_numpy(np.asarray(self.mean))
        if self.std is not None:
            d["std"] = torch.from_numpy(np.asarray(self.std))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImageSpace":
        mean, std = d.get("mean"), d.get("std")
        return cls(
            d["repr"],
            None if mean is None else np.asarray(mean),
            None if std is None else np.asarray(std),
            bool(d.get("center", False)),
        )


class Image2SongModel(nn.Module):
    """BiLSTM lyric encoder (optionally tag-attentive) + MLP into the ``out_dim``-d tag space."""

    def __init__(
        self,
        embeddings: np.ndarray,
        tag_embeddings: np.ndarray,
        *,
        hidden: int = 128,
        attention: bool = False,
        mlp_hidden: int = 512,
        dropout: float = 0.0,
        top_k_tags: int = TOP_K_TAGS,
    ):
        super().__init__()
        tag_emb = torch.as_tensor(np.asarray(tag_embeddings), dtype=torch.float32)
        self.encoder = LyricEncoder(embeddings, hidden=hidden, attention=attention)
        self.register_buffer("tag_embeddings", tag_emb)
        self.top_k_tags = top_k_tags
        self.mlp = nn.Sequential(
            nn.Linear(self.encoder.output_dim, mlp_hidden),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, tag_emb.shape[0]),
        )

    @property
    def attention(self) -> bool:
        return self.encoder.attention

    def query_vector(self, probs: torch.Tensor) -> torch.Tensor:
        """q [B, D]: mean embedding of each image's top-k tags (tags with no known word are skipped)."""
        top = probs.topk(self.top_k_tags, dim=-1).indices
        emb = self.tag_embeddings[top]  # [B, k, D]
        known = (emb.abs().sum(-1) > 0).to(emb.dtype).unsqueeze(-1)
        return (emb * known).sum(1) / known.sum(1).clamp(min=1.0)

    def forward(self, tokens, lengths, probs=None, return_attention: bool = False):
        """-> projected lyric [B, T] (and attention weights [B, L] or None)."""
        q = self.query_vector(probs) if self.attention else None
        vec, s = self.encoder(tokens, lengths, q, return_attention=True)
        out = self.mlp(vec)
        return (out, s) if return_attention else out


def save_model(
    path: str | os.PathLike,
    model: Image2SongModel,
    *,
    config: dict,
    vocab: Vocabulary,
    tag_names: Sequence[str],
    image_space: ImageSpace,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": "image2song-model/1",
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dict(config),
        "vocab": list(vocab.words),
        "tag_names": list(tag_names),
        "image_space": image_space.to_dict(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


@dataclass
class LoadedModel:
    """A trained model with what it needs to score (image, song) pairs."""

    model: Image2SongModel
    vocab: Vocabulary
    tag_names: list[str]
    image_space: ImageSpace
    config: dict
    device: torch.device

    @property
    def max_len(self) -> int:
        return int(self.config.get("max_len", DEFAULT_MAX_LEN))

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.vocab.encode(t, self.max_len) for t in texts]

    def image_vectors(self, image_probs: np.ndarray) -> torch.Tensor:
        """Images in the model's tag space, L2-normalised [I, T] (CPU)."""
        return F.normalize(torch.from_numpy(self.image_space.transform(np.asarray(image_probs, dtype=np.float32))), dim=-1)

    @torch.inference_mode()
    def song_vectors(self, song_texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        """Projected lyrics, L2-normalised [S, T] (CPU); only for models without tag attention."""
        if self.model.attention:
            raise ValueError("with tag attention a song's vector depends on the image: use score()")
        self.model.eval()
        seqs = self.encode_texts(song_texts)
        vecs = []
        for i in range(0, len(seqs), batch_size):
            tokens, lengths = pad_batch(seqs[i : i + batch_size])
            vecs.append(self.model(tokens.to(self.device), lengths).float().cpu())
        if not vecs:
            return torch.zeros(0, self.model.mlp[-1].out_features)
        return F.normalize(torch.cat(vecs), dim=-1)

    @torch.inference_mode()
    def score(
        self,
        image_probs: np.ndarray,
        song_texts: Sequence[str],
        *,
        batch_size: int = 256,
        pair_batch: int = 2048,
        progress: bool = False,
    ) -> np.ndarray:
        """Cosine similarity [I, S] between images (tag probs [I, T]) and songs (modeling_text).

        Without attention each song is encoded once; with attention every (image, song) pair is
        encoded with that image's tag query (the first BiLSTM still runs once per song).
        """
        from tqdm.auto import tqdm

        self.model.eval()
        dev = self.device
        probs = torch.as_tensor(np.asarray(image_probs, dtype=np.float32))
        img = self.image_vectors(probs.numpy())
        n_img, n_song = probs.shape[0], len(song_texts)
        if n_img == 0 or n_song == 0:
            return np.zeros((n_img, n_song), dtype=np.float32)
        if not self.model.attention:
            return (img @ self.song_vectors(song_texts, batch_size=batch_size).T).numpy()
        seqs = self.encode_texts(song_texts)
        enc = self.model.encoder
        # Attention: per-song context once, then per-pair attention + second BiLSTM.
        q_all = self.model.query_vector(probs.to(dev))
        img_dev = img.to(dev)
        scores = np.zeros((n_img, n_song), dtype=np.float32)
        bar = tqdm(total=n_img * n_song, desc="scoring pairs", unit="pair", disable=not progress)
        for start in range(0, n_song, batch_size):
            tokens, lengths = pad_batch(seqs[start : start + batch_size])
            h, _ = enc.context(tokens.to(dev), lengths)
            chunk = h.shape[0]
            per = max(1, pair_batch // chunk)  # images per step
            for i0 in range(0, n_img, per):
                i1 = min(n_img, i0 + per)
                k = i1 - i0
                hh = h.unsqueeze(0).expand(k, *h.shape).reshape(k * chunk, *h.shape[1:])
                vec, _ = enc.attend(hh, lengths.repeat(k), q_all[i0:i1].repeat_interleave(chunk, dim=0))
                pred = F.normalize(self.model.mlp(vec).float(), dim=-1).reshape(k, chunk, -1)
                scores[i0:i1, start : start + chunk] = torch.einsum("kcd,kd->kc", pred, img_dev[i0:i1]).cpu().numpy()
                bar.update(k * chunk)
        bar.close()
        return scores


def load_model(model_dir: str | os.PathLike, *, device: str = "auto") -> LoadedModel:
    """Load ``<model_dir>/model.pt`` (or the file itself) written by ``training.train``."""
    path = Path(model_dir)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"no trained model at {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = blob["config"]
    sd = blob["state_dict"]
    model = Image2SongModel(
        sd["encoder.embedding.weight"].numpy(),
        sd["tag_embeddings"].numpy(),
        hidden=cfg["hidden"],
        attention=cfg["attention"],
        mlp_hidden=cfg["mlp_hidden"],
        dropout=cfg.get("dropout", 0.0),
        top_k_tags=cfg.get("top_k_tags", TOP_K_TAGS),
    )
    model.load_state_dict(sd)
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedModel(
        model=model,
        vocab=Vocabulary(list(blob["vocab"])),
        tag_names=list(blob["tag_names"]),
        image_space=ImageSpace.from_dict(blob["image_space"]),
        config=cfg,
        device=dev,
    )
