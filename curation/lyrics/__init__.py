"""Lyrics on the catalog side: the provider cache, cleaning (``text``), the explained filters and
their evaluation on a labelled set."""
