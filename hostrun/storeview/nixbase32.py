"""Nix's base-32 (the alphabet without e, o, u, t) and the hash notations of narinfo files.

Nix writes a digest as one little-endian number in base 32, most significant digit first:
character ``k`` from the end holds bits ``5k .. 5k+4``. So a 20-byte store path hash is
32 characters and a SHA-256 digest 52.
"""

from __future__ import annotations

import base64
import binascii
import re

from initkit.errors import InitkitError

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}

STORE_DIR = "/nix/store"  # the store the guest sees; narinfo files must name the same
HASH_CHARS = 32  # a store path's hash part: 160 bits in base 32
SHA256_BYTES = 32
# A store path's name: Nix's allowed characters, not starting with a dot.
_NAME = re.compile(r"[0-9a-zA-Z+\-_?=][0-9a-zA-Z+\-._?=]*")
_HASH_PART = re.compile(f"[{ALPHABET}]{{{HASH_CHARS}}}")


def encoded_length(size: int) -> int:
    """Characters of the base-32 form of ``size`` bytes."""
    return (size * 8 + 4) // 5


def encode(digest: bytes) -> str:
    """``digest`` in Nix's base-32."""
    value = int.from_bytes(digest, "little")
    return "".join(ALPHABET[(value >> (5 * k)) & 31]
                   for k in reversed(range(encoded_length(len(digest)))))


def decode(text: str, size: int) -> bytes:
    """The ``size`` bytes that ``text`` (Nix base-32) stands for; ValueError if it is not
    exactly such a string (wrong length, a character outside the alphabet, bits set
    beyond ``size`` bytes)."""
    if len(text) != encoded_length(size):
        raise ValueError(f"{len(text)} characters where {encoded_length(size)} are expected")
    value = 0
    for char in text:
        digit = _VALUE.get(char)
        if digit is None:
            raise ValueError(f"{char!r} is not a Nix base-32 character")
        value = (value << 5) | digit
    if value >> (8 * size):
        raise ValueError("value is larger than the digest")
    return value.to_bytes(size, "little")


def parse_sha256(text: str, *, what: str) -> bytes:
    """A SHA-256 digest as narinfo files write it: ``sha256:`` + base-32 (what Nix
    writes), base-16 or base-64, or SRI ``sha256-<base64>``. ``what`` names the field."""
    text = text.strip()
    forms: tuple[str, ...]
    if text.startswith("sha256-"):
        body, forms = text[len("sha256-"):], ("base64",)
    elif text.startswith("sha256:"):
        body, forms = text[len("sha256:"):], ("base32", "base16", "base64")
    else:
        raise InitkitError(f"{what} {text!r}: not a SHA-256 hash (expected sha256:<hash>)")
    for form in forms:
        try:
            if form == "base32" and len(body) == encoded_length(SHA256_BYTES):
                return decode(body, SHA256_BYTES)
            if form == "base16" and len(body) == 2 * SHA256_BYTES:
                return bytes.fromhex(body)
            if form == "base64" and len(body) == 44:
                digest = base64.b64decode(body, validate=True)
                if len(digest) == SHA256_BYTES:
                    return digest
        except (ValueError, binascii.Error):
            continue
    raise InitkitError(f"{what} {text!r}: not a valid SHA-256 hash")


def is_hash_part(text: str) -> bool:
    """True for 32 characters of Nix base-32 (the start of a store path's base name)."""
    return _HASH_PART.fullmatch(text) is not None


def is_store_name(name: str) -> bool:
    """True for a store path's base name: ``<32-char hash>-<name>``, as Nix allows it."""
    return (len(name) > HASH_CHARS + 1 and name[HASH_CHARS] == "-"
            and is_hash_part(name[:HASH_CHARS]) and len(name) <= 211
            and _NAME.fullmatch(name[HASH_CHARS + 1:]) is not None)
