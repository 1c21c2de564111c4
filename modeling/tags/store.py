"""The tag store: every image tagged once per tagger, kept across snapshots.

Layout: ``<root>/<tagger>/part-<time>-<random>.parquet`` where ``<root>`` is a folder or an fsspec URL
and ``<tagger>`` is the backend's name and version (``efficientnet-lite0-v1``). One row per image and
run; when an image has several rows (an error retried later) the newest part wins (parts sort by name,
oldest first). Columns::

    image_sha256  string
    status        string   "ok" or "error"
    error         string   null when ok; "read: …" (retried by a later run) or "decode: …" (kept)
    <head>        fixed_size_list<float32>[n] per head of the backend, null when status is "error"

File metadata: ``tagger`` (name + version), ``tag_model``, ``heads`` (JSON {head: [names]}), and in a
compacted part ``replaces`` (JSON [part file names]). Each part is written whole (a local file is renamed
into place; elsewhere a finished local file is uploaded in one put), so a run that crashes loses at most
the part it was filling, and the next run tags only what is missing.

Reads: rows are sorted by ``image_sha256`` within a part and written in row groups of
``ROW_GROUP_ROWS``, so a read of some images skips the row groups whose sha256 range holds none of them
(Parquet statistics), filters the rest batch by batch and decodes only the columns asked for.

Compaction (:meth:`TagStore.compact`; the stage calls it when a tagger has more than
``COMPACT_ABOVE_PARTS`` parts) merges every part into one, keeping the newest row per image. It is
crash-safe: the merged part names the parts it replaces in its metadata and readers skip those, so from
the moment it appears (whole, by rename or put) every row is visible exactly once, whether or not the old
parts are removed yet; a kill before that leaves the old parts as they were. Leftovers of a killed
compaction are removed by the next one. It reads the store ``COMPACT_ROWS_PER_PASS`` rows' worth of
sha256 range at a time, so its memory stays bounded. Two compactions of one tagger must not run at the
same time (the tag task runs in the accelerator pool); a duplicate they left would still read right, the
newest part winning.

Per-snapshot *views* are the files training reads (:func:`write_view`, :func:`load_tags`): one
vocabulary, the snapshot's images only, columns ``image_sha256, status, error, probs`` and metadata
``tag_names`` and ``tag_model``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

_META_TAG_NAMES = b"tag_names"
_META_TAG_MODEL = b"tag_model"
_META_TAGGER = b"tagger"
_META_HEADS = b"heads"
_META_REPLACES = b"replaces"
_KEY_COLUMNS = ("image_sha256", "status", "error")

ROW_GROUP_ROWS = 4096
COMPACT_ABOVE_PARTS = 16
COMPACT_ROWS_PER_PASS = 100_000
# A temporary file this old was left by a killed writer (a live one renames its file within minutes).
STALE_TEMPORARY_SECONDS = 24 * 3600
# A read that finds a part gone (a compaction removed it meanwhile) lists the parts again, this many times.
_READ_ATTEMPTS = 5


def _fs(root: str | os.PathLike):
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(root))
    return fs, path.rstrip("/")


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


@contextmanager
def _parquet_writer(fs, path: str, schema: pa.Schema):
    """A ``ParquetWriter`` whose file appears at ``path`` whole, only when the block ends without error:
    a local file is written beside its target and renamed into place; elsewhere a local temporary file
    is uploaded in one put (an object store shows it whole or not at all)."""
    if _is_local(fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    else:
        handle, tmp = tempfile.mkstemp(suffix=".parquet")
        os.close(handle)
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            yield writer
        if _is_local(fs):
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_parquet(fs, path: str, table: pa.Table) -> None:
    with _parquet_writer(fs, path, table.schema) as writer:
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)


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


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _newest_row_index(table: pa.Table) -> dict[str, int]:
    """image_sha256 -> the index of its last row (tables are concatenated oldest part first: the newest wins)."""
    return {s: i for i, s in enumerate(table.column("image_sha256").to_pylist())}


def _newest_rows(table: pa.Table) -> pa.Table:
    """One row per image: the newest."""
    return table.take(pa.array(sorted(_newest_row_index(table).values()), pa.int64()))


def _sha_ranges(n: int) -> list[tuple[str | None, str | None]]:
    """``n`` ranges of sha256 hex strings that partition every string: [None, b1), [b1, b2), …, [b_n-1, None)."""
    bounds = [None, *(f"{i * 16 ** 8 // n:08x}" for i in range(1, n)), None]
    return list(zip(bounds[:-1], bounds[1:]))


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

    # ---------------------------------------------------------------- listing
    def _files(self) -> list[str]:
        if not self.fs.exists(self.folder):
            return []
        return sorted(self.fs.ls(self.folder, detail=False))

    def _check(self, part: str, schema: pa.Schema) -> None:
        meta = schema.metadata or {}
        if meta.get(_META_TAGGER) != self.tagger.encode() or json.loads(meta.get(_META_HEADS, b"{}")) != self.heads:
            raise ValueError(f"{part} was written by another tagger or with other tag names than "
                             f"{self.tagger}; it does not belong in {self.folder}")

    def _scan(self) -> tuple[list[ds.ParquetFileFragment], list[str]]:
        """(the visible parts, oldest first; the parts a compaction replaced that are still there)."""
        listed = [p for p in self._files() if _name(p).startswith("part-") and p.endswith(".parquet")]
        if not listed:
            return [], []
        fragments = list(ds.dataset(listed, format="parquet", filesystem=self.fs).get_fragments())
        replaced: set[str] = set()
        for fragment in fragments:
            schema = fragment.physical_schema
            self._check(fragment.path, schema)
            replaced.update(json.loads((schema.metadata or {}).get(_META_REPLACES, b"[]")))
        visible = [f for f in fragments if _name(f.path) not in replaced]
        return visible, [f.path for f in fragments if _name(f.path) in replaced]

    def parts(self) -> list[str]:
        """The parts readers see, oldest first (those a compaction replaced are left out)."""
        return [f.path for f in self._retrying(lambda: self._scan()[0])]

    def _retrying(self, read):
        for attempt in range(_READ_ATTEMPTS):
            try:
                return read()
            except FileNotFoundError:  # a compaction removed a part between listing and reading: list again
                if attempt == _READ_ATTEMPTS - 1:
                    raise

    def _read(self, columns: list[str], expression=None) -> pa.Table:
        """The visible parts' rows matching ``expression`` (every row when None), ``columns`` only, oldest
        part first; row groups whose statistics exclude the expression are not read."""
        def read() -> pa.Table:
            visible, _ = self._scan()
            schema = pa.schema([self.schema.field(c) for c in columns])
            tables = [f.to_table(columns=columns, filter=expression).cast(schema) for f in visible]
            return pa.concat_tables(tables) if tables else schema.empty_table()

        return self._retrying(read)

    # ---------------------------------------------------------------- reads
    def statuses(self, shas: list[str] | None = None) -> dict[str, tuple[str, str | None]]:
        """image_sha256 -> (status, error) of the newest row of each image in the store (of ``shas`` only
        when given)."""
        wanted = None if shas is None else pc.field("image_sha256").isin(pa.array(sorted(set(shas)), pa.string()))
        table = self._read(list(_KEY_COLUMNS), wanted)
        out: dict[str, tuple[str, str | None]] = {}
        for sha, status, error in zip(*(table.column(c).to_pylist() for c in _KEY_COLUMNS)):
            out[sha] = (status, error)
        return out

    def rows(self, shas: list[str], heads: list[str] | None = None) -> pa.Table:
        """The newest row of each of ``shas`` found in the store (order of ``shas``; missing ones left out),
        with the key columns and ``heads`` (default: every head)."""
        unknown = sorted(set(heads or ()) - set(self.heads))
        if unknown:
            raise ValueError(f"{self.tagger} has no heads {unknown}; it has {list(self.heads)}")
        columns = [*_KEY_COLUMNS, *(self.heads if heads is None else heads)]
        wanted = pa.array(sorted(set(shas)), pa.string())
        merged = self._read(columns, pc.field("image_sha256").isin(wanted)).combine_chunks()
        last = _newest_row_index(merged)
        order = [last[s] for s in dict.fromkeys(shas) if s in last]
        return merged.take(pa.array(order, pa.int64()))

    # ---------------------------------------------------------------- writes
    def _new_part(self, time_ns: int | None = None) -> str:
        return f"{self.folder}/part-{time.time_ns() if time_ns is None else time_ns:020d}-{uuid.uuid4().hex[:8]}.parquet"

    def append(self, shas: list[str], errors: list[str | None], heads: dict[str, np.ndarray]) -> str:
        """Write one part: a row per image, ``errors[i]`` None for a tagged image."""
        ok = np.array([e is None for e in errors], dtype=bool)
        columns = [pa.array(shas, pa.string()), pa.array(np.where(ok, "ok", "error").tolist(), pa.string()),
                   pa.array(errors, pa.string())]
        columns += [_fixed_lists(heads[h], ok) for h in self.heads]
        table = pa.Table.from_arrays(columns, schema=self.schema)
        table = table.take(pc.sort_indices(table.column("image_sha256")))  # stable: a repeated image keeps its order
        self.fs.makedirs(self.folder, exist_ok=True)
        path = self._new_part()
        _write_parquet(self.fs, path, table)
        return path

    def compact(self, *, min_parts: int = 2) -> int:
        """Merge the visible parts into one (newest row per image, sorted by sha256) when there are at least
        ``min_parts``; remove what a killed compaction left. Returns the number of part files removed."""
        visible, leftovers = self._scan()
        if len(visible) < max(2, min_parts):
            self._remove(leftovers)
            return len(leftovers)
        replaced = [f.path for f in visible] + leftovers
        total = sum(f.metadata.num_rows for f in visible)
        # Named at the newest replaced part's time: a part appended meanwhile stays newer than the merge.
        newest_time = int(_name(visible[-1].path).split("-")[1])
        schema = self.schema.with_metadata({**self.schema.metadata,
                                            _META_REPLACES: json.dumps(sorted(_name(p) for p in replaced)).encode()})
        field = pc.field("image_sha256")
        with _parquet_writer(self.fs, self._new_part(newest_time), schema) as writer:
            for lo, hi in _sha_ranges(max(1, -(-total // COMPACT_ROWS_PER_PASS))):
                expression = None if lo is None else field >= lo
                if hi is not None:
                    expression = field < hi if expression is None else expression & (field < hi)
                merged = _newest_rows(pa.concat_tables(
                    [f.to_table(filter=expression).cast(self.schema) for f in visible]).combine_chunks())
                merged = merged.take(pc.sort_indices(merged.column("image_sha256")))
                writer.write_table(merged.cast(schema), row_group_size=ROW_GROUP_ROWS)
        # From here the merged part hides the replaced ones: removing them changes nothing readers see.
        self._remove(replaced)
        self._remove_stale_temporaries()
        return len(replaced)

    def _remove(self, paths: list[str]) -> None:
        for path in paths:
            try:
                self.fs.rm(path)
            except FileNotFoundError:
                pass

    def _remove_stale_temporaries(self) -> None:
        if not _is_local(self.fs):
            return  # elsewhere the temporary files are local to the writer's machine
        cutoff = time.time() - STALE_TEMPORARY_SECONDS
        for path in self._files():
            if ".parquet.tmp-" in _name(path) and os.path.getmtime(path) < cutoff:
                self._remove([path])


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
