"""Search: songs for an image, images for a song, over a persisted vector index (exact or faiss IVF)."""

from .index import VectorIndex, exact_top_k, normalize, recall_at_k

__all__ = ["VectorIndex", "exact_top_k", "normalize", "recall_at_k"]
