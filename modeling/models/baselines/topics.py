"""Visual topics: a song's words predict which kinds of picture its posts show.

The training images are clustered into ``k`` visual topics (k-means on their unit vectors in an
``ImageSpace``). A softmax regression on the lyric's tf-idf bag of words (``lyric_encoder.tfidf_bags``,
every word of the snapshot's lyrics) learns the topics of a song's images, one sample per training pair.
An image scores a song by how much likelier the image's topics are under the song's prediction than a
priori:

    score(i, s) = log sum_c p(c | i) q(c | s) / pi(c),    p(c | i) = softmax_c(cos(i, centre_c) / T)

with ``pi(c)`` the topic's share of the training images. Nothing is learned per song, so a song never
seen in training (split A) is scored from its words alone, as well as any other. The image space,
``k`` and ``T`` are chosen on the validation part (``fit_topics``). Fitting uses scikit-learn
(``KMeans``, ``LogisticRegression``); the fitted model keeps plain arrays only, so a saved model does not
depend on scikit-learn's version.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Callable, Sequence

import numpy as np

from modeling.lyric_encoder import tfidf_bags, tfidf_vocabulary
from modeling.models import unit_rows
from modeling.models.paper import ImageSpace

log = logging.getLogger(__name__)

TOPIC_GRID = (32, 64, 128)
TEMPERATURE_GRID = (0.05, 0.1, 0.2)
REGULARISATION = 1.0  # scikit-learn's C: the inverse L2 strength of the softmax regression
MAX_ITER = 500


def topic_count(topics: int, n_images: int) -> int:
    """The topics a fit makes: ``topics``, at most half the training images, at least 2."""
    return max(2, min(int(topics), n_images // 2))


def _bag_matrix(bags: list[list[tuple[int, float]]], n_words: int):
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(b) for b in bags])
    ids = np.array([i for b in bags for i, _ in b], dtype=np.int64)
    values = np.array([x for b in bags for _, x in b], dtype=np.float32)
    return csr_matrix((values, ids, indptr), shape=(len(bags), n_words))


class VisualTopics:
    name = "topics"

    def __init__(self, space: ImageSpace, centres: np.ndarray, prior: np.ndarray, weights: np.ndarray,
                 bias: np.ndarray, words: dict[str, int], idf: np.ndarray, temperature: float, config: dict):
        # centres [k, D] unit rows; prior [k]; weights [k, n_words] and bias [k]: the softmax regression.
        self.space, self.centres, self.prior = space, centres, prior
        self.weights, self.bias, self.words, self.idf = weights, bias, words, idf
        self.temperature, self.config = float(temperature), config

    @classmethod
    def fit(cls, texts: Sequence[str], train_probs: np.ndarray, train_song_texts: Sequence[str], space: ImageSpace, *,
            topics: int = 64, temperature: float = 0.1, seed: int = 0) -> "VisualTopics":
        """``texts``: every lyric of the snapshot (the bag-of-words vocabulary and idf); ``train_probs``
        [N, T] the training images and ``train_song_texts`` [N] the lyric of each one's song."""
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        if len(train_probs) != len(train_song_texts):
            raise ValueError(f"{len(train_probs)} training images but {len(train_song_texts)} song lyrics")
        if len(train_probs) < 2:
            raise ValueError("visual topics need at least two training images")
        vectors = unit_rows(space.transform(np.asarray(train_probs)))
        k = topic_count(topics, len(vectors))
        with warnings.catch_warnings():
            # Fewer distinct images than topics leaves some topics empty: they get no prior and no prediction.
            warnings.simplefilter("ignore", ConvergenceWarning)
            kmeans = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(vectors)
        labels = kmeans.labels_
        k = int(kmeans.cluster_centers_.shape[0])
        words, idf = tfidf_vocabulary(texts)
        weights = np.zeros((k, len(idf)), dtype=np.float32)
        bias = np.full(k, -np.inf, dtype=np.float32)
        present = np.unique(labels)
        if len(present) >= 2:
            x = _bag_matrix(tfidf_bags(train_song_texts, words, idf), len(idf))
            with warnings.catch_warnings():  # lbfgs stopping at MAX_ITER still gives a usable fit
                warnings.simplefilter("ignore", ConvergenceWarning)
                regression = LogisticRegression(C=REGULARISATION, max_iter=MAX_ITER).fit(x, labels)
            if len(regression.classes_) == 2:  # scikit-learn keeps one row, the second class's log-odds
                weights[regression.classes_[1]], bias[regression.classes_] = regression.coef_[0], (0.0, regression.intercept_[0])
            else:
                weights[regression.classes_], bias[regression.classes_] = regression.coef_, regression.intercept_
        else:  # one topic holds every image: the prediction is that topic, whatever the words
            bias[present] = 0.0
        prior = np.bincount(labels, minlength=k).astype(np.float64) / len(labels)
        config = dict(topics=k, temperature=float(temperature), image_repr=space.label, n_words=len(words),
                      regularisation=REGULARISATION, seed=seed)
        return cls(space, unit_rows(kmeans.cluster_centers_.astype(np.float32)), prior, weights, bias, words, idf, temperature, config)

    def image_topics(self, image_probs: np.ndarray) -> np.ndarray:
        """p(c | i) [I, k]."""
        z = unit_rows(self.space.transform(np.asarray(image_probs))) @ self.centres.T / self.temperature
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def song_topics(self, song_texts: Sequence[str]) -> np.ndarray:
        """q(c | s) [S, k], the regression's prediction from each lyric."""
        x = _bag_matrix(tfidf_bags(song_texts, self.words, self.idf), len(self.idf))
        logits = np.asarray(x @ self.weights.T, dtype=np.float64) + self.bias
        logits = np.exp(logits - logits.max(1, keepdims=True))
        return logits / logits.sum(1, keepdims=True)

    def score(self, image_probs: np.ndarray, song_ids: Sequence[str], song_texts: Sequence[str]) -> np.ndarray:
        ratio = self.image_topics(image_probs) / np.maximum(self.prior, 1e-12)
        return np.log(ratio @ self.song_topics(song_texts).T + 1e-12)


def fit_topics(texts: Sequence[str], train_probs: np.ndarray, train_song_texts: Sequence[str],
               spaces: Sequence[ImageSpace], validate: Callable[[VisualTopics], float], *, seed: int = 0,
               topics: Sequence[int] = TOPIC_GRID, temperatures: Sequence[float] = TEMPERATURE_GRID,
               ) -> tuple[VisualTopics, dict]:
    """The model with the highest ``validate(model)`` over every image space, topic count and temperature
    (ties: the first tried); and every setting's value, keyed ``"<space> k=<k> T=<T>"``. The temperature
    only changes scoring, so each space and ``k`` is fitted once."""
    best, grid = None, {}
    for space in spaces:
        for k in dict.fromkeys(topic_count(k, len(train_probs)) for k in topics):  # capped alike: fitted once
            t0 = time.perf_counter()
            model = VisualTopics.fit(texts, train_probs, train_song_texts, space, topics=k, seed=seed)
            for t in temperatures:
                model.temperature = float(t)
                value = grid[f"{space.label} k={model.config['topics']} T={t}"] = float(validate(model))
                if best is None or value > best[0]:
                    best = (value, model, float(t))
            log.info("topics: %s k=%d fitted in %.1f s", space.label, model.config["topics"], time.perf_counter() - t0)
    _, model, temperature = best
    model.temperature, model.config = temperature, {**model.config, "temperature": temperature}
    return model, grid
