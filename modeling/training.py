"""Train the image2song model on a snapshot split's train part.

Pairs are the split's training triplets (image, song) whose image has ``ok`` tags; each pair's
target is the image's tag vector in the model's ``ImageSpace`` and its input the song's
``modeling_text``. Optimiser RMSprop, mini-batches of 100 pairs (the paper), gradient-norm clipping
at 5. Losses:

- ``"mse"`` (default, the paper): mean squared error between projected lyric and image vector;
- ``"cosine"``: ``1 - cos(projected lyric, image vector)``;
- ``"margin"``: hinge ranking on cosine, ``max(0, margin - cos(i, s+) + cos(i, s-))``. Without
  attention every other song of the batch is a negative, in both directions; with attention (each
  pair costs an encoder pass) one rolled in-batch song per image. Negatives of the same song are
  masked out.

Deterministic on CPU for a given ``seed`` (same machine, same thread count).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modeling import resolve_device
from modeling.lyric_encoder import DEFAULT_MAX_LEN, Vocabulary, pad_batch, tag_embedding_matrix
from modeling.model import DEFAULT_CENTER, DEFAULT_IMAGE_REPR, Image2SongModel, ImageSpace, save_model

log = logging.getLogger(__name__)

LOSSES = ("mse", "cosine", "margin")


def tag_lookup(tags_path: str | os.PathLike) -> tuple[dict[str, int], np.ndarray, list[str]]:
    """-> (image_sha256 -> row, probs [N, T], tag_names) for the ``ok`` rows of a tags file."""
    from modeling.tags import load_tags

    names, probs, shas = load_tags(tags_path)
    return {s: i for i, s in enumerate(shas)}, probs, names


def split_pairs(snapshot, split: str, part: str, sha_index: dict[str, int]):
    """The split part's triplets that have tags -> (DataFrame of kept rows, number dropped)."""
    df = snapshot.split(split, part)
    keep = df["image_sha256"].isin(sha_index.keys())
    return df[keep].reset_index(drop=True), int((~keep).sum())


def _loss(kind: str, pred, target, *, margin: float, same_song=None, neg_pred=None):
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
    t = F.normalize(target, dim=-1)
    p = F.normalize(pred, dim=-1)
    pos = (t * p).sum(-1)
    if neg_pred is not None:  # attention: one negative song per image
        neg = (t * F.normalize(neg_pred, dim=-1)).sum(-1)
        valid = (~same_song).float()
        return (F.relu(margin - pos + neg) * valid).sum() / valid.sum().clamp(min=1.0)
    sim = t @ p.T  # [image, song]
    valid = (~same_song).float()
    i2s = F.relu(margin - pos.unsqueeze(1) + sim) * valid
    s2i = F.relu(margin - pos.unsqueeze(0) + sim) * valid
    return (i2s.sum() + s2i.sum()) / (2 * valid.sum().clamp(min=1.0))


def train(
    snapshot_dir: str | os.PathLike,
    tags_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "a",
    epochs: int = 5,
    attention: bool = False,
    loss: str = "mse",
    hidden: int = 128,
    lr: float = 1e-3,
    batch_size: int = 100,
    seed: int = 0,
    word_vectors="glove-6b-50d",
    device: str = "auto",
    progress: bool = True,
    max_len: int = DEFAULT_MAX_LEN,
    image_repr: str = DEFAULT_IMAGE_REPR,
    center_images: bool = DEFAULT_CENTER,
    mlp_hidden: int = 512,
    dropout: float = 0.0,
    margin: float = 0.2,
    weight_decay: float = 0.0,
    vocab_scope: str = "train",
    word_vectors_cache: str | os.PathLike | None = None,
) -> dict:
    """Train on ``split``'s train part; write ``out_dir/model.pt`` and ``out_dir/training.json``.

    ``word_vectors``: ``"glove-6b-50d"``, a word2vec file path, or loaded ``KeyedVectors``
    (``word_vectors_cache`` is passed to ``load_word_vectors`` as its cache folder).
    ``vocab_scope``: ``"train"`` builds the vocabulary from the training songs only; ``"all"`` from
    every song of the snapshot (embeddings are frozen, so this uses no labels; it lets unseen test
    songs keep words that no training lyric has).
    """
    from tqdm.auto import tqdm

    from curation.snapshots.reader import load_snapshot
    from modeling.word_vectors import load_word_vectors

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
    if vocab_scope not in ("train", "all"):
        raise ValueError(f"vocab_scope must be 'train' or 'all', not {vocab_scope!r}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    snap = load_snapshot(snapshot_dir)
    sha_index, all_probs, tag_names = tag_lookup(tags_path)
    pairs, n_untagged = split_pairs(snap, split, "train", sha_index)
    if pairs.empty:
        raise ValueError(f"split {split!r} has no tagged training pairs (dropped {n_untagged} untagged)")
    songs = snap.songs.set_index("song_id")
    missing = set(pairs["song_id"]) - set(songs.index)
    if missing:
        raise ValueError(f"{len(missing)} training songs are not in songs.parquet, e.g. {sorted(missing)[:3]}")

    wv = load_word_vectors(word_vectors, cache_dir=word_vectors_cache)
    song_ids = sorted(set(pairs["song_id"]))
    vocab_texts = songs.loc[song_ids, "modeling_text"] if vocab_scope == "train" else songs["modeling_text"]
    vocab = Vocabulary.build(vocab_texts.fillna(""), wv)
    song_row = {s: i for i, s in enumerate(song_ids)}
    seqs = [vocab.encode(t, max_len) for t in songs.loc[song_ids, "modeling_text"].fillna("")]
    n_empty = sum(1 for s in seqs if s == [0])

    probs = all_probs[[sha_index[s] for s in pairs["image_sha256"]]]
    space = ImageSpace.fit(probs, image_repr, center_images)
    targets = torch.from_numpy(space.transform(probs))
    probs_t = torch.from_numpy(probs)
    pair_song = torch.tensor([song_row[s] for s in pairs["song_id"]], dtype=torch.long)

    dev = resolve_device(device)
    model = Image2SongModel(
        vocab.embedding_matrix(wv),
        tag_embedding_matrix(tag_names, wv),
        hidden=hidden,
        attention=attention,
        mlp_hidden=mlp_hidden,
        dropout=dropout,
    ).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)

    config = {
        "hidden": hidden, "attention": attention, "mlp_hidden": mlp_hidden, "dropout": dropout,
        "top_k_tags": model.top_k_tags, "max_len": max_len, "image_repr": image_repr, "center_images": space.center, "loss": loss,
        "margin": margin, "lr": lr, "weight_decay": weight_decay, "epochs": epochs, "batch_size": batch_size,
        "seed": seed, "split": split, "vocab_scope": vocab_scope,
        "word_vectors": word_vectors if isinstance(word_vectors, (str, os.PathLike)) else "<KeyedVectors>",
        "word_dim": int(wv.vector_size), "snapshot_version": snap.manifest.get("version"),
    }
    config["word_vectors"] = str(config["word_vectors"])
    log.info("training: %d pairs, %d songs, vocab %d, split %s, attention=%s, loss=%s, device %s",
             len(pairs), len(song_ids), len(vocab), split, attention, loss, dev)

    n = len(pairs)
    history = []
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        bar = tqdm(total=n, desc=f"epoch {epoch}/{epochs}", unit="pair", disable=not progress, leave=False)
        for b0 in range(0, n, batch_size):
            idx = order[b0 : b0 + batch_size]
            song_idx = pair_song[idx]
            tokens, lengths = pad_batch([seqs[i] for i in song_idx.tolist()])
            tokens = tokens.to(dev)
            p = probs_t[idx].to(dev)
            target = targets[idx].to(dev)
            pred = model(tokens, lengths, p)
            kw = {}
            if loss == "margin":
                if attention:
                    shift = int(torch.randint(1, max(2, len(idx)), (1,), generator=gen)) if len(idx) > 1 else 0
                    perm = torch.roll(torch.arange(len(idx)), shift)
                    kw["neg_pred"] = model(tokens[perm.to(dev)], lengths[perm], p)
                    kw["same_song"] = (song_idx == song_idx[perm]).to(dev)
                else:
                    kw["same_song"] = (song_idx.unsqueeze(1) == song_idx.unsqueeze(0)).to(dev)
            batch_loss = _loss(loss, pred, target, margin=margin, **kw)
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            total += float(batch_loss.detach()) * len(idx)
            seen += len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{total / seen:.4f}")
        bar.close()
        mean_loss = total / max(seen, 1)
        history.append({"epoch": epoch, "loss": mean_loss, "seconds": round(time.perf_counter() - te, 3)})
        log.info("training: epoch %d/%d loss %.5f (%.1f s)", epoch, epochs, mean_loss, history[-1]["seconds"])

    model_path = save_model(out_dir / "model.pt", model.cpu(), config=config, vocab=vocab, tag_names=tag_names, image_space=space)
    seconds = time.perf_counter() - t0
    summary = {
        "model_path": str(model_path),
        "training_json": str(out_dir / "training.json"),
        "split": split,
        "epochs": epochs,
        "final_loss": history[-1]["loss"] if history else None,
        "losses": [h["loss"] for h in history],
        "n_pairs": int(n),
        "n_untagged_dropped": n_untagged,
        "n_songs": len(song_ids),
        "n_songs_without_known_words": n_empty,
        "vocab_size": len(vocab),
        "device": str(dev),
        "seconds": round(seconds, 3),
    }
    (out_dir / "training.json").write_text(json.dumps({"config": config, "history": history, "summary": summary}, indent=2))
    return summary
