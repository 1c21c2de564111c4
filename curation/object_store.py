"""Content-addressed blob storage through fsspec: a local folder by default, any fsspec URL for scale.

Keys look like ``ab/cd/abcdef….jpg`` (the sha256 of the bytes), so storing the same bytes twice
stores them once.
"""

from __future__ import annotations

import hashlib

import fsspec


class ObjectStore:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    @staticmethod
    def key_for(sha256: str, suffix: str = "") -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}{suffix}"

    def put(self, data: bytes, suffix: str = "") -> str:
        """Store ``data`` (idempotent) and return its key."""
        key = self.key_for(hashlib.sha256(data).hexdigest(), suffix)
        path = f"{self.root}/{key}"
        if "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)):
            return self._put_local(path, data, key)  # the same, without fsspec's per-call overhead
        if not self.fs.exists(path):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            temporary = f"{path}.partial"
            with self.fs.open(temporary, "wb") as handle:
                handle.write(data)
            self.fs.mv(temporary, path)  # readers never see half a file
        return key

    @staticmethod
    def _put_local(path: str, data: bytes, key: str) -> str:
        import os
        import uuid

        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temporary = f"{path}.{uuid.uuid4().hex[:8]}.partial"
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)  # readers never see half a file
        return key

    def get(self, key: str) -> bytes:
        with self.fs.open(f"{self.root}/{key}", "rb") as handle:
            return handle.read()

    def exists(self, key: str) -> bool:
        return self.fs.exists(f"{self.root}/{key}")
