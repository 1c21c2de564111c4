"""Image tags: backends (a classifier with pixel attributes, a region detector), vocabularies
(``obj``, ``attr``, ``obj+attr``, ``imagenet``), the tag store, and the tagging stage.

- ``extract_tags(snapshot, object_store, store_root, views_dir, …)``: the stage (``pipeline``)
- ``load_tags(path) -> (tag_names, probs [n_images, n_tags], image_sha256)``: read a view (``store``)
- ``Tagger(vocabulary, backend)``: tag single images, e.g. a search query (``pipeline``)
- ``make_backend(name, …)`` / ``@register(name)``: the backend registry (``backends``)

Importing this package is cheap: torch is imported by the functions that need it.
"""

from __future__ import annotations

from modeling.tags.backends import backend_names, make_backend, register
from modeling.tags.pipeline import Tagger, extract_tags
from modeling.tags.store import load_tags, write_view
from modeling.tags.vocabularies import VOCABULARIES


__all__ = ["VOCABULARIES", "Tagger", "backend_names", "extract_tags", "load_tags", "make_backend", "register",
           "write_view"]
