"""Text from outside made safe before it reaches a database, with a trace of what it was.

Providers and sites send what they like: bytes that are not UTF-8, JSON strings holding lone surrogate
code points (``"\\ud800"`` is valid JSON but cannot be encoded), NUL (PostgreSQL refuses it in text),
control characters, and fields of any length. ``safe_text`` turns any of these into a string every
database and every UTF-8 writer accepts, and returns the SHA-256 of the original bytes whenever it had
to change something, so the record keeps proof of what was received.
"""

from __future__ import annotations

import hashlib
import re

REPLACEMENT = "\ufffd"
# C0 controls except tab, newline and carriage return; DEL; C1 controls. Lone surrogates are handled
# apart (they cannot even be encoded).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def original_bytes(value: str | bytes) -> bytes:
    """The bytes a value was received as: bytes as they are; a string as UTF-8, lone surrogates
    included (``surrogatepass``), so that two different strings never share a hash."""
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogatepass")


def safe_text(value: str | bytes | None, max_len: int | None = None) -> tuple[str | None, str | None]:
    """``(text, original_sha256)``: ``value`` as a string safe for any database, and the SHA-256 (hex)
    of the original bytes when anything had to change, else None.

    - bytes are decoded as UTF-8; invalid sequences become U+FFFD;
    - lone surrogates become U+FFFD;
    - NUL and other control characters (all but tab, newline, carriage return) are removed;
    - text longer than ``max_len`` characters is cut to ``max_len``.

    None stays None (with no hash); any other type is refused with a TypeError.
    """
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        text = value.decode("utf-8", "replace")
        changed = text.encode("utf-8") != value
    elif isinstance(value, str):
        text = _SURROGATE.sub(REPLACEMENT, value)
        changed = text is not value and text != value
    else:
        raise TypeError(f"safe_text takes str or bytes, not {type(value).__name__}")
    cleaned = _CONTROL.sub("", text)
    changed = changed or cleaned != text
    if max_len is not None and len(cleaned) > max_len:
        cleaned, changed = cleaned[:max_len], True
    return cleaned, (hashlib.sha256(original_bytes(value)).hexdigest() if changed else None)
