"""Where snapshots live, through fsspec: a local folder by default, any fsspec URL (``s3://…``) otherwise.

Publishing is atomic for readers on both:

- **Local folder**: the snapshot is written into ``<root>/.staging-<version>-<pid>/`` on the same file
  system and renamed to ``<root>/<version>/`` with one ``os.replace``: the folder appears whole or not at all.
- **Object stores** (S3 and alike) have no rename (a "move" is a copy of every object, then a delete), so
  the commit is the manifest: files are staged on local disk, uploaded under ``<root>/<version>/``
  (a fresh, never-reused prefix) and ``manifest.json`` goes last, in one PUT, which S3 makes visible
  atomically. A snapshot exists only once its manifest does: readers (``reader``), listings and
  the catalog's snapshot list never look at a prefix without one, and a reader can check each file
  against the size and sha256 the manifest lists. A failed upload removes what it wrote (what a crash
  leaves behind has no manifest, so no reader sees it; ``orphans()`` lists such prefixes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

MANIFEST = "manifest.json"


class SnapshotStore:
    def __init__(self, root: str | os.PathLike, **storage_options):
        self.root_url = str(root).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url, **storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)

    def uri(self, version: str) -> str:
        """Where snapshot ``version`` lives: a plain path on local disk, else a URL with its protocol."""
        if self.local:
            return str(Path(self.root) / version)
        return self.fs.unstrip_protocol(f"{self.root}/{version}")

    def staging(self, version: str) -> Path:
        """A fresh local folder to write a snapshot into before publishing it."""
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            path = Path(self.root) / f".staging-{version}-{os.getpid()}"
            path.mkdir()
            return path
        return Path(tempfile.mkdtemp(prefix=f"image2song-snapshot-{version}-"))

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def publish(self, staging: Path, version: str) -> str:
        """Make the staged snapshot visible as ``version``, atomically for readers; returns its URI."""
        if not (staging / MANIFEST).exists():
            raise ValueError(f"{staging} holds no {MANIFEST}: nothing to publish")
        if self.local:
            final = Path(self.root) / version
            if final.exists():
                raise FileExistsError(f"snapshot {version} already exists at {final}")
            os.replace(staging, final)  # the atomic publish
            return str(final)
        prefix = f"{self.root}/{version}"
        if self.fs.exists(f"{prefix}/{MANIFEST}"):
            raise FileExistsError(f"snapshot {version} already exists at {self.uri(version)}")
        try:
            for path in sorted(staging.iterdir()):
                if path.name != MANIFEST:
                    self.fs.put_file(str(path), f"{prefix}/{path.name}")
            self.fs.put_file(str(staging / MANIFEST), f"{prefix}/{MANIFEST}")  # the commit
        except BaseException:
            try:
                self.fs.rm(prefix, recursive=True)
            except Exception:  # noqa: BLE001 - best effort: without a manifest nobody reads it anyway
                pass
            raise
        finally:
            self.discard(staging)
        self.fs.invalidate_cache()
        return self.uri(version)

    def versions(self) -> list[str]:
        """Published snapshots found in the store itself (those with a manifest), oldest first."""
        if not self.fs.exists(self.root):
            return []
        found = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith(".") and self.fs.exists(f"{self.root}/{name}/{MANIFEST}"):
                found.append(name)
        return sorted(found)

    def orphans(self) -> list[str]:
        """Prefixes without a manifest: leftovers of crashed builds, invisible to readers."""
        if not self.fs.exists(self.root):
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(self.root, detail=False)]
        return sorted(n for n in names if not self.fs.exists(f"{self.root}/{n}/{MANIFEST}"))
