"""crawlers.text.safe_text: outside text made safe for any database, the original bytes' hash kept."""

import hashlib

import pytest

from crawlers.text import safe_text


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_clean_text_passes_unchanged_without_a_hash():
    assert safe_text("Héllo\tworld\r\nnext line") == ("Héllo\tworld\r\nnext line", None)
    assert safe_text(None) == (None, None)
    assert safe_text("ok".encode()) == ("ok", None)


def test_invalid_utf8_bytes_are_replaced_and_hashed():
    raw = b"caf\xe9 \xff\xfe end"
    text, digest = safe_text(raw)
    assert text == "caf\ufffd \ufffd\ufffd end"
    text.encode("utf-8")
    assert digest == sha(raw)


def test_lone_surrogates_are_replaced_and_the_hash_tells_them_apart():
    text, digest = safe_text("a\ud800b")
    assert text == "a\ufffdb"
    text.encode("utf-8")  # would raise with the surrogate
    other_text, other_digest = safe_text("a\udfffb")
    assert other_text == text and other_digest != digest
    assert digest == sha("a\ud800b".encode("utf-8", "surrogatepass"))


def test_nul_and_control_characters_are_removed():
    text, digest = safe_text("a\x00b\x07c\x1bd\x7fe\x85f\ng")
    assert text == "abcdef\ng"
    assert digest == sha("a\x00b\x07c\x1bd\x7fe\x85f\ng".encode())


def test_over_long_text_is_cut_and_hashed():
    text, digest = safe_text("x" * 50, max_len=10)
    assert text == "x" * 10 and digest == sha(b"x" * 50)
    assert safe_text("x" * 10, max_len=10) == ("x" * 10, None)


def test_other_types_are_refused():
    with pytest.raises(TypeError):
        safe_text(12)
