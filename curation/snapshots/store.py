"""Where snapshots live, through fsspec: a local folder by default, any fsspec URL (``s3://…``) otherwise.

Publishing is atomic for readers on both:

- **Local folder**: the snapshot is written into ``<root>.staging/<version>-<pid>/``, a sibling of the
  root on the same file system, so no ``<root>/*/…`` glob (DuckDB's ``snapshots/*/triplets.parquet``)
  ever reads a half-written file, and renamed to ``<root>/<version>/`` with one ``os.replace``: the
  folder appears whole or not at all. Leftovers of a killed build (their process is gone) are removed
  by the next build (``clean_staging``).
- **Object stores** (S3 and alike) have no rename (a "move" is a copy of every object, then a delete), so
  the commit is the manifest: files are staged on local disk, uploaded under ``<root>/<version>/``
  (a fresh, never-reused prefix) and ``manifest.json`` goes last, in one PUT, which S3 makes visible
  atomically. A snapshot exists only once its manifest does: readers (``reader``), listings and
  the catalog's snapshot list never look at a prefix without one, and a reader can check each file
  against the size and sha256 the manifest lists. A failed upload removes what it wrote (what a crash
  leaves behind has no manifest, so no reader sees it; ``orphans()`` lists such prefixes).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

MANIFEST = "manifest.json"
TEMP_PREFIX = "image2song-snapshot-"
log = logging.getLogger(__name__)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_pid(name: str) -> int | None:
    found = re.search(r"-(\d+)(?:-[^-]*)?$", name)
    return int(found.group(1)) if found else None


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

    @property
    def staging_root(self) -> Path:
        """Where builds stage their files: beside the root (same file system), never inside it."""
        if self.local:
            root = Path(self.root)
            return root.parent / f"{root.name}.staging"
        return Path(tempfile.gettempdir())

    def staging(self, version: str) -> Path:
        """A fresh local folder to write a snapshot into before publishing it."""
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self.staging_root.mkdir(parents=True, exist_ok=True)
            path = self.staging_root / f"{version}-{os.getpid()}"
            path.mkdir()
            return path
        return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{version}-{os.getpid()}-"))

    def clean_staging(self) -> list[str]:
        """Remove what killed builds left behind (staging folders whose process is gone), including the
        old in-root ``.staging-*`` folders; returns their names."""
        candidates = []
        if self.local:
            if self.staging_root.is_dir():
                candidates += list(self.staging_root.iterdir())
            if Path(self.root).is_dir():
                candidates += [p for p in Path(self.root).iterdir() if p.name.startswith(".staging-")]
        else:
            candidates += [p for p in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*")]
        removed = []
        for path in candidates:
            pid = _staging_pid(path.name)
            if pid is not None and _process_alive(pid):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        if removed:
            log.info("removed %d staging folder(s) left by killed builds: %s", len(removed), ", ".join(removed))
        return removed

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
