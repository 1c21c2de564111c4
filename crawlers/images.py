"""Image validation: declared content type and magic bytes, a decompression-bomb guard (checked on the
header, before any pixel is decoded), a full Pillow decode (a broken or truncated file fails), EXIF
orientation, an optional resize for storage, the sha256 of the stored bytes and a perceptual hash.

Memory is bounded by a **pixel budget** shared by the decodes in flight in a process (``decode_budget``
pixels, 40 M by default: about 350 MB at the worst, an RGBA PNG with its RGB copy and hashes): a decode
waits until its pixels fit, and one image larger than the budget takes it whole. Decompression-heavy
files (a 150 KB PNG of 40 Mpx) therefore cost one image's memory at a time, not one per thread.

JPEGs are decoded through ``Image.draft`` at the smallest scale that still serves the purpose (the
libjpeg decoder reads every entropy-coded block at any scale, so a damaged file is still caught): the
perceptual hash needs 64 pixels on the short side, a resize to 256 needs 256. That keeps the CPU cost per image low.

The perceptual hash is imagehash's pHash (64 bits, 16 hex characters), computed here with a numpy DCT
so worker processes need not import scipy; ``tests/test_crawlers.py`` checks it agrees with imagehash
(on images larger than 64 pixels a box reduction comes first, ``reducing_gap=2``, which may move a bit
or two).
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from crawlers.http import FetchError, PoliteClient

MAX_PIXELS = 40_000_000  # larger images are refused as possible decompression bombs
MAGIC = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png", b"GIF87a": "image/gif",
         b"GIF89a": "image/gif", b"RIFF": "image/webp"}
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}
GENERIC_TYPES = ("application/octet-stream", "binary/octet-stream")  # object stores often say this
ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_N = 32
_HASH_SIDE = 64  # the short side a JPEG is decoded to for its pHash (smaller ones hash less steadily)
_DCT = np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(_N)[None, :] + 1) / (2 * _N))  # 8×32 DCT-II rows
Image.MAX_IMAGE_PIXELS = None  # our own guard below runs on the header, with a clear message


def _return_large_buffers_to_the_os() -> None:
    """glibc raises its mmap threshold after the first large buffer is freed, and from then on keeps
    freed image buffers in each thread's arena: the pixel budget would bound the decodes in flight but
    not the memory held. A fixed threshold (glibc's initial 128 KiB) hands every large buffer back to
    the OS when it is freed. Nothing happens on other C libraries."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


_return_large_buffers_to_the_os()


class BadImage(ValueError):
    """The bytes are not an image we accept; the message says why."""


@dataclass(frozen=True)
class ImageOptions:
    """How images are checked and stored. ``resize``: longest side in pixels for storage (None: store
    the bytes as they came); ``quality``: JPEG quality of a resized image."""

    resize: int | None = None
    quality: int = 90
    max_pixels: int = MAX_PIXELS
    max_bytes: int = 20 * 1024 * 1024
    decode_budget: int = MAX_PIXELS  # pixels decoded at once in this process, all threads together


class PixelBudget:
    """Pixels being decoded at once in this process: a decode waits until its share fits."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        pixels = max(1, min(pixels, self.capacity))
        with self._cond:
            self._cond.wait_for(lambda: self.used + pixels <= self.capacity)
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


_budgets: dict[int, PixelBudget] = {}
_budgets_lock = threading.Lock()


def pixel_budget(capacity: int) -> PixelBudget:
    """The process's budget of that size (one per size, shared by every thread)."""
    with _budgets_lock:
        return _budgets.setdefault(capacity, PixelBudget(capacity))


@dataclass(frozen=True)
class FetchedImage:
    url: str
    data: bytes  # the bytes to store (the original, or the resized re-encoding)
    sha256: str  # of ``data``: the object store's content address
    phash: str
    width: int  # upright (EXIF orientation applied), of what is stored
    height: int
    content_type: str  # of ``data``
    source_sha256: str | None = None  # of the downloaded bytes, when they were re-encoded


def sniff(data: bytes) -> str | None:
    for magic, kind in MAGIC.items():
        if data.startswith(magic) and (kind != "image/webp" or data[8:12] == b"WEBP"):
            return kind
    return None


def phash(image: Image.Image) -> str:
    """imagehash.phash(image) (hash_size 8, highfreq_factor 4), as 16 hex characters (see above)."""
    small = image.convert("L").resize((_N, _N), Image.Resampling.LANCZOS, reducing_gap=2.0)
    pixels = np.asarray(small, dtype=np.float64)
    low = _DCT @ pixels @ _DCT.T  # the 8×8 lowest frequencies of the 2-D DCT-II (scale does not matter)
    return np.packbits(low > np.median(low)).tobytes().hex()


def _declared_ok(declared_type: str | None) -> bool:
    if not declared_type:
        return True
    kind = declared_type.split(";")[0].strip().lower()
    return kind.startswith("image/") or kind in GENERIC_TYPES


def validate_image(data: bytes, *, declared_type: str | None = None, url: str = "",
                   max_pixels: int = MAX_PIXELS, options: ImageOptions | None = None) -> FetchedImage:
    """Check that ``data`` is a real, sane image and describe it (resized when ``options.resize``).
    Raises BadImage with the reason."""
    options = options or ImageOptions(max_pixels=max_pixels)
    kind = sniff(data)
    if kind is None:
        raise BadImage(f"not an image (magic bytes {data[:8]!r}, declared {declared_type!r})")
    if not _declared_ok(declared_type):
        raise BadImage(f"declared content type {declared_type!r} is not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=[FORMATS[kind]]) as image:
                width, height = image.size
                if width * height > options.max_pixels or width > 65500 or height > 65500:
                    raise BadImage(f"{width}x{height} exceeds {options.max_pixels} pixels "
                                   "(decompression bomb guard)")
                orientation = image.getexif().get(0x0112, 1) if kind in ("image/jpeg", "image/webp") else 1
                if kind == "image/jpeg":  # decode at the smallest scale that serves (see the docstring)
                    if options.resize:
                        scale = min(1.0, options.resize / max(width, height))
                    else:
                        scale = min(1.0, _HASH_SIDE / min(width, height))
                    image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
                else:
                    with Image.open(io.BytesIO(data), formats=[FORMATS[kind]]) as probe:
                        probe.verify()  # PNG: chunk CRCs
                with pixel_budget(options.decode_budget).hold(image.size[0] * image.size[1]):
                    return _decode(image, data, kind, width, height, orientation, url, options)
    except BadImage:
        raise
    except Image.DecompressionBombError as error:
        raise BadImage(f"decompression bomb: {error}") from error
    except Exception as error:  # Pillow raises many types for broken files
        raise BadImage(f"broken image: {type(error).__name__}: {error}") from error


def _decode(image, data: bytes, kind: str, width: int, height: int, orientation: int, url: str,
            options: ImageOptions) -> FetchedImage:
    """The full decode (within the pixel budget), orientation, optional resize, hashes."""
    image.load()  # a full decode: broken or truncated data fails here
    decoded = image if image.mode in ("RGB", "L") else image.convert("RGB")
    if orientation in ORIENTATION:
        decoded = decoded.transpose(ORIENTATION[orientation])
        if orientation >= 5:
            width, height = height, width
    source_sha = hashlib.sha256(data).hexdigest()
    if options.resize and max(width, height) > options.resize:
        decoded = decoded.convert("RGB")
        scale = options.resize / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        decoded = decoded.resize(size, Image.Resampling.BOX)  # area averaging, as cv2's INTER_AREA
        out = io.BytesIO()
        decoded.save(out, "JPEG", quality=options.quality)
        stored = out.getvalue()
        return FetchedImage(url, stored, hashlib.sha256(stored).hexdigest(), phash(decoded),
                            size[0], size[1], "image/jpeg", source_sha)
    return FetchedImage(url, data, source_sha, phash(decoded), width, height, kind)


def fetch_image(client: PoliteClient, url: str, options: ImageOptions | None = None) -> FetchedImage:
    """Fetch and validate one image. Raises FetchError, BadImage or crawlers.http.Disallowed."""
    response = client.get(url)
    if response.status >= 400:
        raise FetchError(url, f"HTTP {response.status}", response.status)
    return validate_image(response.content, declared_type=response.headers.get("content-type"), url=url,
                          options=options)

