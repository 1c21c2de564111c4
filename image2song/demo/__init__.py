"""The demo world: a local sharing site and an LRCLIB-compatible lyric API built from packaged real material.

``build_corpus`` writes a corpus folder from Debian's ``fortunes`` and ``tuxpaint-stamps-default``;
``DemoWorld`` serves it over HTTP on loopback.
"""

from .corpus import CorpusSummary, build_corpus
from .material import FORTUNES_DIR, STAMPS_DIR, MaterialMissingError
from .servers import DemoWorld

__all__ = ["CorpusSummary", "DemoWorld", "FORTUNES_DIR", "MaterialMissingError", "STAMPS_DIR", "build_corpus"]
