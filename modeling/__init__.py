"""Image tagging, word vectors, lyric encoder, models and baselines (``models/``), the harness that trains,
evaluates and reports them (``harness/``), and search.

Stage functions (each takes plain arguments and returns a small, loggable summary dict):

- ``modeling.tags.extract_tags``         snapshot images -> tag store -> per-vocabulary views (Parquet)
- ``modeling.harness.training.train_models``     snapshot + tags -> every model (``<name>.pt``) + ``training.json``
- ``modeling.harness.evaluation.evaluate_models`` those models on the test part -> ``evaluation.json``
- ``modeling.harness.reports.write_run_report``  a run's evaluations -> ``report.md`` + ``report.html`` + plots
- ``modeling.search.SongSearch``         an image -> top-k songs (and a song -> top-k images), indexed

Importing this package is cheap (names and ``resolve_device``; torch and friends are imported by the
submodules only): Airflow DAG files may read its names at parse time, never its submodules.
"""

from __future__ import annotations

# The baselines the harness trains beside the paper's model (``models.baselines``), by name; ``neighbours``
# also enables the hybrid. Here, torch-free, so that the CLI and the DAG can validate choices cheaply.
BASELINES = ("attentive-reader", "psi", "minilm", "topics", "conse", "control", "neighbours", "popularity")


def resolve_device(device: str = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
