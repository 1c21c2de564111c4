"""The tag store: every image tagged once per tagger, kept across snapshots.

Layout: ``<root>/<tagger>/part-<time>-<random>.parquet`` where ``<root>`` is a folder or an fsspec URL
and ``<tagger>`` is the backend's name and version (``efficientnet-lite0-v1``). One row per image and
run; when an image has several rows (an error retried later) the newest part wins. Columns::

    image_sha256  string
    status        string   "ok" or "error"
    error         string   null when ok; "read: …" (retried by a later run) or "decode: …" (kept)
    <head>        fixed_size_list<float32>[n] per head of the backend, null when status is "error"

File metadata: ``tagger`` (name + version), ``tag_model``, ``heads`` (JSON {head: [names]}). Each part is
written whole (a local file is renamed into place; an object-store PUT is atomic), so a run that
crashes loses at most the part it was filling, and the next run tags only what is missing.

Per-snapshot *views* are the files training reads (:func:`write_view`, :func:`load_tags`): one
vocabulary, the snapshot's images only, columns ``image_sha256, status, error, probs`` and metadata
``tag_names`` and ``tag_model``.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_META_TAG_NAMES = b"tag_names"
_META_TAG_MODEL = b"tag_model"
_META_TAGGER = b"tagger"
_META_HEADS = b"heads"


def _fs(root: str | os.PathLike):
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(root))
    return fs, path.rstrip("/")


def _write_parquet(fs, path: str, table: pa.Table) -> None:
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        return
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    with fs.open(path, "wb") as fh:  # one PUT: the part appears whole or not at all
        fh.write(buffer.getvalue())


def _fixed_lists(scores: np.ndarray, ok: np.ndarray) -> pa.FixedSizeListArray:
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    scores[~ok] = 0.0
    return pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1), pa.float32()), scores.shape[1],
                                             mask=pa.array(~ok))


def _to_numpy(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(col) == 0:
        return np.zeros((0, width), np.float32)
    values = col.values.slice(col.offset * width, len(col) * width)
    out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), width).copy()
    if col.null_count:
        out[np.asarray(col.is_null().to_numpy(zero_copy_only=False))] = 0.0
    return out


class TagStore:
    """The parts of one tagger under ``root``."""

    def __init__(self, root: str | os.PathLike, tagger: str, heads: dict[str, list[str]], model: str):
        self.fs, base = _fs(root)
        self.folder = f"{base}/{tagger}"
        self.tagger, self.heads, self.model = tagger, {h: list(n) for h, n in heads.items()}, model
        self.schema = pa.schema(
            [pa.field("image_sha256", pa.string(), nullable=False), pa.field("status", pa.string(), nullable=False),
             pa.field("error", pa.string())]
            + [pa.field(h, pa.list_(pa.float32(), len(n))) for h, n in self.heads.items()],
            metadata={_META_TAGGER: tagger.encode(), _META_TAG_MODEL: model.encode(),
                      _META_HEADS: json.dumps(self.heads).encode()})

    def parts(self) -> list[str]:
        if not self.fs.exists(self.folder):
            return []
        return sorted(p for p in self.fs.ls(self.folder, detail=False) if p.rsplit("/", 1)[-1].startswith("part-")
                      and p.endswith(".parquet"))

    def _check(self, part: str, schema: pa.Schema) -> None:
        meta = schema.metadata or {}
        if meta.get(_META_TAGGER) != self.tagger.encode() or json.loads(meta.get(_META_HEADS, b"{}")) != self.heads:
            raise ValueError(f"{part} was written by another tagger or with other tag names than "
                             f"{self.tagger}; it does not belong in {self.folder}")

    def statuses(self) -> dict[str, tuple[str, str | None]]:
        """image_sha256 -> (status, error) of the newest row of each image in the store."""
        out: dict[str, tuple[str, str | None]] = {}
        for part in self.parts():
            with self.fs.open(part, "rb") as fh:
                table = pq.read_table(fh, columns=["image_sha256", "status", "error"])
            self._check(part, table.schema)
            for sha, status, error in zip(*(table.column(c).to_pylist() for c in ("image_sha256", "status", "error"))):
                out[sha] = (status, error)
        return out

    def append(self, shas: list[str], errors: list[str | None], heads: dict[str, np.ndarray]) -> str:
        """Write one part: a row per image, ``errors[i]`` None for a tagged image."""
        ok = np.array([e is None for e in errors], dtype=bool)
        columns = [pa.array(shas, pa.string()), pa.array(np.where(ok, "ok", "error").tolist(), pa.string()),
                   pa.array(errors, pa.string())]
        columns += [_fixed_lists(heads[h], ok) for h in self.heads]
        table = pa.Table.from_arrays(columns, schema=self.schema)
        self.fs.makedirs(self.folder, exist_ok=True)
        path = f"{self.folder}/part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        _write_parquet(self.fs, path, table)
        return path

    def rows(self, shas: list[str]) -> pa.Table:
        """The newest row of each of ``shas`` found in the store (order of ``shas``; missing ones left out)."""
        wanted = pa.array(sorted(set(shas)), pa.string())
        tables = []
        for part in self.parts():
            with self.fs.open(part, "rb") as fh:
                table = pq.read_table(fh)
            self._check(part, table.schema)
            tables.append(table.filter(pc.is_in(table.column("image_sha256"), value_set=wanted)))
        if not tables:
            return self.schema.empty_table()
        merged = pa.concat_tables([t.cast(self.schema) for t in tables]).combine_chunks()
        last = {s: i for i, s in enumerate(merged.column("image_sha256").to_pylist())}  # newest part wins
        order = [last[s] for s in dict.fromkeys(shas) if s in last]
        return merged.take(pa.array(order, pa.int64()))

    def compact(self) -> int:
        """Merge all parts into one (newest row per image); returns the number of parts replaced."""
        parts = self.parts()
        if len(parts) < 2:
            return 0
        tables = []
        for part in parts:
            with self.fs.open(part, "rb") as fh:
                tables.append(pq.read_table(fh).cast(self.schema))
        merged = pa.concat_tables(tables).combine_chunks()
        last = {s: i for i, s in enumerate(merged.column("image_sha256").to_pylist())}
        merged = merged.take(pa.array(sorted(last.values()), pa.int64()))
        self.fs.makedirs(self.folder, exist_ok=True)
        _write_parquet(self.fs, f"{self.folder}/part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet", merged)
        for part in parts:
            self.fs.rm(part)
        return len(parts)


def head_arrays(table: pa.Table, heads: dict[str, list[str]]) -> dict[str, tuple[list[str], np.ndarray]]:
    return {h: (names, _to_numpy(table.column(h), len(names))) for h, names in heads.items()}


def view_schema(tag_names: list[str], tag_model: str) -> pa.Schema:
    return pa.schema(
        [pa.field("image_sha256", pa.string(), nullable=False), pa.field("status", pa.string(), nullable=False),
         pa.field("error", pa.string()), pa.field("probs", pa.list_(pa.float32(), len(tag_names)))],
        metadata={_META_TAG_NAMES: json.dumps(list(tag_names)).encode(), _META_TAG_MODEL: tag_model.encode()})


def write_view(path: str | os.PathLike, image_sha256: list[str], probs: np.ndarray, tag_names: list[str], *,
               errors: list[str | None] | None = None, tag_model: str = "") -> str:
    """Write a tags file (one vocabulary; the format :func:`load_tags` reads). ``errors[i]`` not None
    makes row ``i`` an error row. Also for tests, benchmarks and tags made elsewhere."""
    probs = np.asarray(probs, dtype=np.float32)
    errors = [None] * len(image_sha256) if errors is None else list(errors)
    if probs.shape != (len(image_sha256), len(tag_names)) or len(errors) != len(image_sha256):
        raise ValueError(f"probs must be [{len(image_sha256)}, {len(tag_names)}] (images × tag names); got {probs.shape}")
    ok = np.array([e is None for e in errors], dtype=bool)
    table = pa.Table.from_arrays(
        [pa.array(list(image_sha256), pa.string()), pa.array(np.where(ok, "ok", "error").tolist(), pa.string()),
         pa.array(errors, pa.string()), _fixed_lists(probs.copy(), ok)],
        schema=view_schema(tag_names, tag_model))
    fs, target = _fs(path)
    parent = target.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    _write_parquet(fs, target, table)
    return str(path)


def load_tags(path: str | os.PathLike, *, include_errors: bool = False) -> tuple[list[str], np.ndarray, list[str]]:
    """A tags file -> ``(tag_names, probs float32 [n_images, n_tags], image_sha256)``.

    Rows of images that could not be tagged (``status="error"``) are left out unless
    ``include_errors`` (then their probs are zeros)."""
    fs, target = _fs(path)
    with fs.open(target, "rb") as fh:
        table = pq.read_table(fh)
    meta = table.schema.metadata or {}
    if _META_TAG_NAMES not in meta:
        raise ValueError(f"{path} has no tag_names in its schema metadata; is it a tags file?")
    tag_names = json.loads(meta[_META_TAG_NAMES])
    if not include_errors:
        table = table.filter(pc.equal(table.column("status"), "ok"))
    return tag_names, _to_numpy(table.column("probs"), len(tag_names)), table.column("image_sha256").to_pylist()
