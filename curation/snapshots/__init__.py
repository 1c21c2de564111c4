"""Snapshots: immutable, versioned Parquet splits built from approved catalog rows.

``recipe`` (the paper's protocol) → ``select`` (in-database selection) → ``leakage`` (near-duplicate
checks) → ``build`` (write, manifest, datasheet) → ``store`` (atomic publish, local or fsspec);
``reader`` is the one way modeling and other readers load a snapshot.
"""

from curation.snapshots.build import (
    SnapshotError, build_snapshot, check_leakage, diff_snapshots, latest_snapshot, list_snapshots, verify_snapshots,
)
from curation.snapshots.recipe import Recipe

__all__ = ["Recipe", "SnapshotError", "build_snapshot", "check_leakage", "diff_snapshots", "latest_snapshot",
           "list_snapshots", "verify_snapshots"]
