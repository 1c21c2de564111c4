"""Image fetching and validation: content type and magic bytes, Pillow verification, a
decompression-bomb guard, EXIF orientation, sha256 and a perceptual hash."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
from PIL import Image, ImageOps

from crawlers.http import FetchError, PoliteClient

MAX_PIXELS = 40_000_000  # larger images are refused as possible decompression bombs
MAGIC = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png", b"GIF87a": "image/gif",
         b"GIF89a": "image/gif", b"RIFF": "image/webp"}


class BadImage(ValueError):
    """The bytes are not an image we accept; the message says why."""


@dataclass(frozen=True)
class FetchedImage:
    url: str
    data: bytes
    sha256: str
    phash: str
    width: int
    height: int
    content_type: str


def sniff(data: bytes) -> str | None:
    for magic, kind in MAGIC.items():
        if data.startswith(magic) and (kind != "image/webp" or data[8:12] == b"WEBP"):
            return kind
    return None


def validate_image(data: bytes, *, declared_type: str | None = None, url: str = "",
                   max_pixels: int = MAX_PIXELS) -> FetchedImage:
    """Check that ``data`` is a real, sane image and describe it. Raises BadImage with the reason."""
    kind = sniff(data)
    if kind is None:
        raise BadImage(f"not an image (magic bytes {data[:8]!r}, declared {declared_type!r})")
    if declared_type and not declared_type.split(";")[0].strip().lower().startswith("image/"):
        raise BadImage(f"declared content type {declared_type!r} is not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > max_pixels:
                    raise BadImage(f"{width}x{height} exceeds {max_pixels} pixels (decompression bomb guard)")
                probe.verify()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
                phash = str(imagehash.phash(upright.convert("RGB")))
                width, height = upright.size
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"decompression bomb: {error}") from error
    except Exception as error:  # Pillow raises many types for broken files
        raise BadImage(f"broken image: {type(error).__name__}: {error}") from error
    return FetchedImage(url, data, hashlib.sha256(data).hexdigest(), phash, width, height, kind)


def fetch_image(client: PoliteClient, url: str) -> FetchedImage:
    """Fetch and validate one image. Raises FetchError, BadImage or crawlers.http.Disallowed."""
    response = client.get(url)
    if response.status >= 400:
        raise FetchError(url, f"HTTP {response.status}", response.status)
    return validate_image(response.content, declared_type=response.headers.get("content-type"), url=url)
