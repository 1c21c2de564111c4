"""image2song: the application shell (CLI, settings, demo world). It wires the packages; it holds no stage logic."""

__version__ = "0.1.0"
