"""Train every model of one experiment (a snapshot split, one tag vocabulary) in one harness.

``train_models`` fits, on the split's train part minus its validation part (``harness.data``):

- ``paper``: the paper's model (``models.paper``), frozen word vectors whose vocabulary covers every
  lyric of the snapshot, optional tag attention, MLP into tag space;
- ``permuted``: the same model trained with the lyrics permuted among the training songs (a derangement)
  and evaluated with the true lyrics: the control that must sit at chance;
- the baselines (``models.baselines``) and the ``hybrid``: a lyric model (of those trained: the paper's,
  the Attentive Reader, PSI, MiniLM, the visual topics) fused with the lyric-free image-history
  neighbours; the lyric model, the weight and the neighbours' image space and bandwidth are fitted
  together on the validation part, to minimise the geometric mean rank (``negative_mean_log_rank``).

PSI, MiniLM, the visual topics, the control and the neighbours are fitted in each of ``models.paper.validated_spaces`` (two
tag spaces and the discriminant space learned from the training songs' images) and keep the best on
validation; the BiLSTM models keep the default space.

The loop (``fit_joint``) is shared by every trainable model: RMSprop, mini-batches of ``batch_size``
(100, the paper) pairs, gradient-norm clipping at 5, at most ``epochs`` epochs with early stopping on
the validation part's image -> song mean reciprocal rank (``patience`` epochs without improvement; the
best epoch's weights are kept). Losses (each model lists those it accepts):

- ``"mse"`` (the paper): mean squared error between the projected lyric and the image's tag vector;
- ``"cosine"``: ``1 - cos``;
- ``"margin"``: hinge ranking on cosine, ``max(0, margin - cos(i, s) + cos(i, s'))`` and
  ``max(0, margin - cos(i, s) + cos(i', s))``, with ``negatives`` negative songs ``s'`` and images
  ``i'`` per pair drawn from the **whole training set** (not the batch); a draw of the pair's own song
  is masked out;
- ``"infonce"``: symmetric InfoNCE over the batch (temperature 0.05; non-conditional models only).

Seed and configuration are saved in ``training.json`` beside the models. Deterministic on CPU for a
given ``seed`` (same machine, same thread count).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from modeling import BASELINES, resolve_device
from modeling.harness.data import Pairs, SplitData, load_split
from modeling.harness.evaluation import closest_relevant_rank, pairs_test_set
from modeling.models import JointModule, save_scorer, score_matrix

log = logging.getLogger(__name__)

LOSSES = ("mse", "cosine", "margin", "infonce")
LYRIC_MODELS = ("paper", "attentive-reader", "psi", "minilm", "topics")
BILSTM_MODELS = ("paper", "permuted", "attentive-reader")
DEFAULT_MODELS = ("paper", "permuted", *BASELINES, "hybrid")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mean_reciprocal_rank(scores: np.ndarray, relevant: np.ndarray) -> float:
    return float(np.mean(1.0 / closest_relevant_rank(scores, relevant)))


def negative_mean_log_rank(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Minus the log of the geometric mean rank: what the hybrid and the image-history scorers fit their
    settings to. Over a few hundred validation queries it is steadier than the MRR, which rests on the
    few queries ranked near the top, and it rewards R@10 and the median rank alike."""
    return -float(np.mean(np.log(closest_relevant_rank(scores, relevant))))


def _loss(kind: str, module: JointModule, inputs, rows: torch.Tensor, probs: torch.Tensor, *, all_rows: torch.Tensor,
          train_probs: torch.Tensor, train_rows: torch.Tensor, margin: float, negatives: int, temperature: float,
          gen: torch.Generator) -> torch.Tensor:
    img = module.image_side(probs)
    if kind in ("mse", "cosine"):
        uniq, inv = rows.unique(return_inverse=True)
        pred = module.song_pairs(module.song_context(inputs, uniq), inv, probs)
        return F.mse_loss(pred, img) if kind == "mse" else (1.0 - F.cosine_similarity(pred, img, dim=-1)).mean()
    if kind == "infonce":
        uniq, inv = rows.unique(return_inverse=True)
        songs = F.normalize(module.song_vectors(module.song_context(inputs, uniq)), dim=-1)
        logits = F.normalize(img, dim=-1) @ songs.T / temperature  # [P, U]
        i2s = F.cross_entropy(logits, inv)
        own = F.one_hot(inv, len(uniq)).bool().T  # [U, P]: the song's images in the batch
        s2i = (torch.logsumexp(logits.T, 1) - torch.logsumexp(logits.T.masked_fill(~own, float("-inf")), 1)).mean()
        return (i2s + s2i) / 2
    # margin: negatives from the whole training set
    p, k = len(rows), negatives
    neg_songs = all_rows[torch.randint(len(all_rows), (p * k,), generator=gen)]
    neg_pairs = torch.randint(len(train_rows), (p * k,), generator=gen)
    uniq, inv = torch.cat([rows, neg_songs]).unique(return_inverse=True)
    ctx = module.song_context(inputs, uniq)
    inv_pos, inv_neg = inv[:p], inv[p:]
    img_n = F.normalize(img, dim=-1)
    pos = (F.normalize(module.song_pairs(ctx, inv_pos, probs), dim=-1) * img_n).sum(-1)
    probs_k = probs.repeat_interleave(k, 0)
    neg_s = (F.normalize(module.song_pairs(ctx, inv_neg, probs_k), dim=-1) * img_n.repeat_interleave(k, 0)).sum(-1)
    neg_probs = train_probs[neg_pairs]
    neg_img = F.normalize(module.image_side(neg_probs), dim=-1)
    neg_i = (F.normalize(module.song_pairs(ctx, inv_pos.repeat_interleave(k), neg_probs), dim=-1) * neg_img).sum(-1)
    pos_k = pos.repeat_interleave(k)
    rows_k = rows.repeat_interleave(k)
    valid_s = (neg_songs != rows_k).float()
    valid_i = (train_rows[neg_pairs] != rows_k).float()
    hinge = F.relu(margin - pos_k + neg_s) * valid_s + F.relu(margin - pos_k + neg_i) * valid_i
    return hinge.sum() / (valid_s.sum() + valid_i.sum()).clamp(min=1.0)


def fit_joint(module: JointModule, inputs, song_rows: dict[str, int], train: Pairs, *, validation=None, loss: str = "mse",
              epochs: int = 30, patience: int = 3, batch_size: int = 100, lr: float = 1e-3, margin: float = 0.2,
              negatives: int = 5, temperature: float = 0.05, seed: int = 0, device: str = "auto", progress: bool = False,
              name: str = "model") -> dict:
    """Train ``module`` on ``train`` pairs; ``inputs``: the model's prepared songs, indexed by ``song_rows``.

    ``validation``: ``(inputs, n_songs, probs, relevant)`` of the validation queries, or None (no early
    stopping). Returns the history and the best epoch; the module ends with the best epoch's weights.
    """
    from tqdm.auto import tqdm

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
    if loss == "infonce" and module.conditional:
        raise ValueError("infonce needs song vectors that do not depend on the image")
    seed_everything(seed)
    dev = resolve_device(device)
    module.to(dev)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)
    gen = torch.Generator().manual_seed(seed)
    train_rows = torch.tensor([song_rows[s] for s in train.song_ids], dtype=torch.long)
    all_rows = torch.tensor(sorted(set(train_rows.tolist())), dtype=torch.long)
    train_probs = torch.from_numpy(np.asarray(train.probs, dtype=np.float32))
    n = len(train)
    history, best, best_state, best_epoch, waited = [], -1.0, None, 0, 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        module.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        with tqdm(total=n, desc=f"{name} epoch {epoch}", unit="pair", disable=not progress, leave=False) as bar:
            for b0 in range(0, n, batch_size):
                idx = order[b0 : b0 + batch_size]
                value = _loss(loss, module, inputs, train_rows[idx].to(dev), train_probs[idx].to(dev),
                              all_rows=all_rows.to(dev), train_probs=train_probs.to(dev), train_rows=train_rows.to(dev),
                              margin=margin, negatives=negatives, temperature=temperature, gen=gen)
                opt.zero_grad(set_to_none=True)
                value.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                total += float(value.detach()) * len(idx)
                bar.update(len(idx))
        entry = {"epoch": epoch, "loss": total / max(n, 1)}
        if validation is not None:
            v_inputs, v_n, v_probs, v_rel = validation
            entry["validation_mrr"] = mean_reciprocal_rank(score_matrix(module, v_inputs, v_n, v_probs), v_rel)
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(entry)
        log.info("%s: epoch %d loss %.5f%s (%.1f s)", name, epoch, entry["loss"],
                 f" validation MRR {entry['validation_mrr']:.4f}" if validation is not None else "", entry["seconds"])
        score = entry.get("validation_mrr", -entry["loss"])
        if score > best:
            best, best_epoch, waited = score, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
        else:
            waited += 1
            if validation is not None and waited >= patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return {"history": history, "best_epoch": best_epoch, "best_validation_mrr": best if validation is not None else None}


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) that moves every element (n >= 2): a cyclic shift of a shuffle."""
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=int)
    out[order] = np.roll(order, 1)
    return out


def train_models(
    snapshot_dir: str | os.PathLike,
    tags_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "b",
    vocabulary: str = "imagenet",
    models: Sequence[str] = DEFAULT_MODELS,
    loss: str = "mse",
    attention: bool = True,
    tag_pooling: str = "mean",
    epochs: int = 30,
    bilstm_epochs: int | None = None,
    patience: int | None = None,
    batch_size: int = 100,
    lr: float = 1e-3,
    hidden: int = 64,
    mlp_hidden: int = 256,
    margin: float = 0.2,
    negatives: int = 5,
    seed: int = 0,
    word_vectors="glove-6b-50d",
    word_vectors_cache: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = False,
) -> dict:
    """Fit ``models`` on one split and vocabulary; write ``<name>.pt`` per model and ``training.json``.

    ``bilstm_epochs`` caps the BiLSTM models (the paper's, the permuted control, the Attentive Reader), whose
    epochs cost far more than the others', separately from ``epochs`` (None: ``epochs``). ``patience`` (None:
    3 epochs for the BiLSTM models, 10 for the others, whose epochs cost seconds: a validation MRR over a few
    hundred queries is noisy, and a short patience stops them early)."""
    from modeling.models.baselines.attentive_reader import AttentiveReader
    from modeling.models.baselines.conse import ConseScorer
    from modeling.models.baselines.control import ImageHistoryControl
    from modeling.models.baselines.minilm import MiniLMScorer
    from modeling.models.baselines.neighbours import ImageHistoryNeighbours, fit_neighbours, setting_key
    from modeling.models.baselines.popularity import PopularityScorer
    from modeling.models.baselines.semantic_indexing import SemanticIndexing
    from modeling.models.baselines.topics import fit_topics
    from modeling.models.hybrid import HybridScorer, fit_hybrid
    from modeling.models.paper import PaperModel, validated_spaces
    from modeling.word_vectors import load_word_vectors

    unknown = sorted(set(models) - set(DEFAULT_MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}: choose from {list(DEFAULT_MODELS)}")
    if loss not in PaperModel.losses:
        raise ValueError(f"the paper's model takes loss {PaperModel.losses}, not {loss!r}")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    data: SplitData = load_split(snapshot_dir, tags_path, split, vocabulary=vocabulary, seed=seed)
    all_texts = data.songs["modeling_text"].fillna("").tolist()
    train_songs = sorted(set(data.train.song_ids))
    song_rows = {s: i for i, s in enumerate(train_songs)}
    train_texts = data.texts(train_songs)
    val_songs = data.validation_songs
    val_ts = pairs_test_set(data.validation, val_songs, data.texts(val_songs), split, data.tag_names)
    # The hybrid needs a lyric model: the paper's, unless another one is trained.
    train_paper = "paper" in models or ("hybrid" in models and not set(LYRIC_MODELS) & set(models))
    needs_vectors = train_paper or bool({"permuted", "attentive-reader", "conse"} & set(models))
    wv = load_word_vectors(word_vectors, cache_dir=word_vectors_cache) if needs_vectors else None
    config = dict(split=split, vocabulary=vocabulary, models=list(models), loss=loss, attention=attention,
                  tag_pooling=tag_pooling, epochs=epochs, bilstm_epochs=bilstm_epochs or epochs, patience=patience,
                  batch_size=batch_size, lr=lr, hidden=hidden,
                  mlp_hidden=mlp_hidden, margin=margin, negatives=negatives, seed=seed, word_vectors=str(word_vectors),
                  snapshot=str(snapshot_dir), tags_path=str(tags_path), device=str(resolve_device(device)))
    log.info("training split %s, vocabulary %s: %d train pairs (%d songs), %d validation pairs, models %s",
             split, vocabulary, len(data.train), len(train_songs), len(data.validation), ", ".join(models))
    fit_kw = dict(batch_size=batch_size, lr=lr, margin=margin, negatives=negatives, seed=seed, device=device,
                  progress=progress)
    fitted, results = {}, {}
    val_objective = lambda s: negative_mean_log_rank(s, val_ts.relevant)  # noqa: E731

    def train_joint(name, scorer, model_loss, texts=train_texts):
        t0 = time.perf_counter()
        val = (scorer.prepare(val_ts.song_texts), len(val_ts.song_ids), val_ts.image_probs, val_ts.relevant)
        bilstm = name in BILSTM_MODELS
        out = fit_joint(scorer.module, scorer.prepare(texts), song_rows, data.train, validation=val, loss=model_loss,
                        name=name, epochs=(bilstm_epochs or epochs) if bilstm else epochs,
                        patience=patience or (3 if bilstm else 10), **fit_kw)
        scorer.module.cpu()
        results[name] = {**out, "loss": model_loss, "config": scorer.config, "seconds": round(time.perf_counter() - t0, 2)}
        fitted[name] = scorer

    # The models cheap to fit are fitted in each validated image space; the best on validation is kept.
    spaces = validated_spaces(data.train.probs, data.train.song_ids)

    def train_in_each_space(name, build, model_loss):
        by_space = {}
        for space in spaces:
            train_joint(name, build(space), model_loss)
            by_space[space.label] = (results[name], fitted[name])
        best = max(by_space, key=lambda r: by_space[r][0]["best_validation_mrr"])
        results[name], fitted[name] = by_space[best]
        results[name]["validation_mrr_by_space"] = {r: v[0]["best_validation_mrr"] for r, v in by_space.items()}

    paper_kw = dict(hidden=hidden, attention=attention, mlp_hidden=mlp_hidden, tag_pooling=tag_pooling)
    if train_paper:
        train_joint("paper", PaperModel.build(all_texts, data.tag_names, wv, data.train.probs, **paper_kw), loss)
    if "permuted" in models:
        shuffled = [train_texts[j] for j in derangement(len(train_texts), seed)] if len(train_texts) > 1 else train_texts
        train_joint("permuted", PaperModel.build(all_texts, data.tag_names, wv, data.train.probs, **paper_kw), loss, shuffled)
    if "attentive-reader" in models:
        train_joint("attentive-reader", AttentiveReader.build(all_texts, data.tag_names, wv, data.train.probs,
                                                              hidden=hidden, mlp_hidden=mlp_hidden), loss)
    if "psi" in models:
        train_in_each_space("psi", lambda space: SemanticIndexing.build(all_texts, data.tag_names, data.train.probs,
                                                                        image_space=space), "margin")
    if "minilm" in models:
        lyric_cache: dict = {}  # the frozen encoder's lyric embeddings, shared by the spaces' fits

        def minilm_in(space):
            scorer = MiniLMScorer.build(data.tag_names, data.train.probs, image_space=space)
            scorer.cache = lyric_cache
            return scorer

        train_in_each_space("minilm", minilm_in, "infonce")
    if "topics" in models:
        t0 = time.perf_counter()
        fitted["topics"], grid = fit_topics(
            all_texts, data.train.probs, data.texts(data.train.song_ids), spaces, seed=seed,
            validate=lambda m: mean_reciprocal_rank(m.score(val_ts.image_probs, val_ts.song_ids, val_ts.song_texts),
                                                    val_ts.relevant))
        results["topics"] = {"best_validation_mrr": max(grid.values()), "validation_mrr_by_setting": grid,
                             "config": fitted["topics"].config, "seconds": round(time.perf_counter() - t0, 2)}
    if "conse" in models:
        fitted["conse"] = ConseScorer.build(all_texts, data.tag_names, wv)
    # At test time a song's history is all its training images, validation ones included (no test image);
    # on validation, the training images only.
    history_probs = np.concatenate([data.train.probs, data.validation.probs])
    history_ids = data.train.song_ids + data.validation.song_ids
    if "control" in models:
        by_space = {space.label: val_objective(ImageHistoryControl.build(data.train.probs, data.train.song_ids, space).score(
            val_ts.image_probs, val_ts.song_ids)) for space in spaces}
        space = max(spaces, key=lambda sp: by_space[sp.label])
        fitted["control"] = ImageHistoryControl.build(history_probs, history_ids, space)
        results["control"] = {"image_space": space.label, "validation_objective_by_space": by_space}
    if "neighbours" in models:
        space, bandwidth, grid = fit_neighbours(spaces, data.train.probs, data.train.song_ids, val_ts.image_probs,
                                                val_ts.song_ids, val_objective)
        fitted["neighbours"] = ImageHistoryNeighbours.build(history_probs, history_ids, space, bandwidth)
        results["neighbours"] = {"image_space": space.label, "bandwidth": bandwidth, "validation_objective_by_setting": grid}
    if "popularity" in models:
        fitted["popularity"] = PopularityScorer.build(data.posts["song_id"].tolist(), data.posts["favorite_count"].fillna(0).tolist())
    if "hybrid" in models:
        # The lyric side (a trained lyric model, the permuted control aside) and the history side (image-history
        # neighbours, their space and bandwidth) are fitted with the weight, on the fused validation scores:
        # the lyric model best alone is not always the one that adds most to a history.
        best, by_lyric = None, {}
        for lyric in (n for n in LYRIC_MODELS if n in fitted):
            lyric_val = fitted[lyric].score(val_ts.image_probs, val_ts.song_ids, val_ts.song_texts)
            space, bandwidth, weight, grid = fit_hybrid(lyric_val, spaces, data.train.probs, data.train.song_ids,
                                                        val_ts.image_probs, val_ts.song_ids, val_objective)
            by_lyric[lyric] = grid[setting_key(space, bandwidth)]
            if best is None or by_lyric[lyric] > by_lyric[best[0]]:
                best = (lyric, space, bandwidth, weight, grid)
        lyric, space, bandwidth, weight, grid = best
        history = ImageHistoryNeighbours.build(history_probs, history_ids, space, bandwidth)
        fitted["hybrid"] = HybridScorer(fitted[lyric], history, weight)
        results["hybrid"] = {"lyric_model": lyric, "weight": weight, "image_space": space.label, "bandwidth": bandwidth,
                             "validation_objective_by_lyric_model": by_lyric,
                             "validation_objective_by_setting": grid}
    paths = {}
    for name in models:
        paths[name] = str(save_scorer(fitted[name], out_dir / f"{name}.pt"))
    summary = {
        "out_dir": str(out_dir), "split": split, "vocabulary": vocabulary, "models": paths,
        "n_train_pairs": len(data.train), "n_validation_pairs": len(data.validation), "n_train_songs": len(train_songs),
        "n_untagged": data.n_untagged, "seconds": round(time.perf_counter() - t_start, 2),
    }
    (out_dir / "training.json").write_text(json.dumps({"config": config, "summary": summary, "models": results}, indent=2, default=float))
    log.info("training split %s, vocabulary %s done in %.1f s", split, vocabulary, summary["seconds"])
    return summary
