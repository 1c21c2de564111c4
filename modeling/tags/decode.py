"""Reading and decoding images into fixed-size uint8 crops, on the CPU (PIL) or on a GPU (nvJPEG).

Geometry, as the classifiers expect (and as before): scale the short side to ``resize``, take the
centre ``crop`` × ``crop`` square. It is done in one resampling step: the centre square of side
``short × crop / resize`` of the original is resized to ``crop`` × ``crop``. JPEGs are first decoded
at a reduced scale with ``Image.draft`` (DCT scaling by 1/2, 1/4 or 1/8 while staying at least
``crop`` px), which is most of the CPU speed-up on large photos.

A broken image never raises out of a batch: its slot is zeros and its reason is returned.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ImageReadError(Exception):
    """The bytes could not be read (missing object, I/O error): worth trying again later."""


@dataclass(frozen=True)
class Geometry:
    resize: int = 256
    crop: int = 224


def read_bytes(object_store_root: str | os.PathLike, rel_path: str) -> bytes:
    """The bytes at ``rel_path`` below the object-store root (a local folder or an fsspec URL)."""
    root = str(object_store_root)
    try:
        if "://" in root:
            import fsspec

            with fsspec.open(root.rstrip("/") + "/" + rel_path.lstrip("/"), "rb") as fh:
                return fh.read()
        return (Path(root) / rel_path).read_bytes()
    except Exception as exc:  # noqa: BLE001 - any failure to read is recorded on the image
        raise ImageReadError(f"{type(exc).__name__}: {exc}") from exc


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


def centre_box(width: int, height: int, geometry: Geometry) -> tuple[float, float, float, float]:
    side = min(width, height) * geometry.crop / geometry.resize
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def decode_pil(data: bytes, geometry: Geometry = Geometry()) -> np.ndarray:
    """Encoded image -> uint8 [crop, crop, 3] (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            # DCT scaling keeps both sides >= the request, so the short side stays >= `resize`.
            img.draft("RGB", (geometry.resize, geometry.resize))
        img.load()
        img = _to_rgb(ImageOps.exif_transpose(img))
        box = centre_box(img.width, img.height, geometry)
        out = img.resize((geometry.crop, geometry.crop), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
        return np.array(out, dtype=np.uint8)  # writable: torch.from_numpy refuses read-only arrays


def decode_batch(items, object_store_root, geometry: Geometry = Geometry()):
    """``items``: [(sha256, relative path)] -> (uint8 [B, 3, crop, crop] tensor, [error or None] * B).

    Errors are ``"read: …"`` (retried by a later run) or ``"decode: …"`` (kept)."""
    import torch

    out = np.zeros((len(items), geometry.crop, geometry.crop, 3), np.uint8)
    errors: list[str | None] = []
    for i, (_, rel) in enumerate(items):
        try:
            data = read_bytes(object_store_root, rel)
        except ImageReadError as exc:
            errors.append(f"read: {exc}"[:500])
            continue
        try:
            out[i] = decode_pil(data, geometry)
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - an undecodable image is recorded, never fatal
            errors.append(f"decode: {type(exc).__name__}: {exc}"[:500])
    return torch.from_numpy(out).permute(0, 3, 1, 2), errors


class BatchDataset:
    """A map-style dataset whose items are whole decoded batches (one worker decodes one batch)."""

    def __init__(self, items, object_store_root, batch_size: int, geometry: Geometry):
        self.items = items
        self.root = str(object_store_root)
        self.batch_size = batch_size
        self.geometry = geometry

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def __getitem__(self, i):
        chunk = self.items[i * self.batch_size:(i + 1) * self.batch_size]
        pixels, errors = decode_batch(chunk, self.root, self.geometry)
        return i, pixels, errors


class BytesDataset(BatchDataset):
    """Items are batches of raw bytes, for decoding on the GPU."""

    def __getitem__(self, i):
        chunk = self.items[i * self.batch_size:(i + 1) * self.batch_size]
        blobs, errors = [], []
        for _, rel in chunk:
            try:
                blobs.append(read_bytes(self.root, rel))
                errors.append(None)
            except ImageReadError as exc:
                blobs.append(b"")
                errors.append(f"read: {exc}"[:500])
        return i, blobs, errors


def decode_on_gpu(blobs: list[bytes], errors: list, device, geometry: Geometry = Geometry()):
    """Raw bytes -> uint8 [B, 3, crop, crop] on ``device``: JPEGs in one nvJPEG batch call, anything else
    (PNG, CMYK JPEG, a broken file nvJPEG refuses) through PIL on the CPU."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.zeros((len(blobs), 3, geometry.crop, geometry.crop), dtype=torch.uint8, device=device)
    jpeg = [i for i, b in enumerate(blobs) if errors[i] is None and b[:3] == b"\xff\xd8\xff"]
    decoded = {}
    if jpeg:
        try:
            tensors = decode_jpeg([torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpeg],
                                  mode=ImageReadMode.RGB, device=device)
            decoded = dict(zip(jpeg, tensors))
        except RuntimeError:
            decoded = {}  # one bad file fails the batch call: those go through PIL below
    for i, blob in enumerate(blobs):
        if errors[i] is not None:
            continue
        img = decoded.get(i)
        if img is None:
            try:
                out[i] = torch.from_numpy(decode_pil(blob, geometry)).permute(2, 0, 1).to(device, non_blocking=True)
            except Exception as exc:  # noqa: BLE001
                errors[i] = f"decode: {type(exc).__name__}: {exc}"[:500]
            continue
        h, w = img.shape[-2:]
        left, top, right, bottom = centre_box(w, h, geometry)
        square = img[:, int(top):max(int(top) + 1, int(bottom)), int(left):max(int(left) + 1, int(right))]
        out[i] = F.interpolate(square.unsqueeze(0).float(), size=(geometry.crop, geometry.crop), mode="bilinear",
                               antialias=True, align_corners=False).round_().clamp_(0, 255).to(torch.uint8)[0]
    return out, errors
