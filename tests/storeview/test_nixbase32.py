"""Nix's base-32 against Nix's own tools, and the hash notations of narinfo files."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess

import pytest
from realparts import missing_part

from hostrun.storeview import nixbase32
from hostrun.storeview.narinfo import parse_narinfo
from initkit.errors import InitkitError


def test_encoding_matches_nix_hash() -> None:
    if shutil.which("nix-hash") is None:
        missing_part("nix-hash is not installed (apt-get install nix-bin)")
    for data in (b"", b"initkit", bytes(range(256))):
        digest = hashlib.sha256(data).digest()
        theirs = subprocess.run(["nix-hash", "--type", "sha256", "--to-base32",
                                 digest.hex()], capture_output=True, text=True,
                                check=True).stdout.strip()
        assert nixbase32.encode(digest) == theirs
        assert nixbase32.decode(theirs, 32) == digest


def test_store_path_hash_length_and_alphabet() -> None:
    digest = bytes(range(20))
    text = nixbase32.encode(digest)
    assert len(text) == 32 and nixbase32.is_hash_part(text)
    assert not set(text) & set("eout")
    assert nixbase32.decode(text, 20) == digest


@pytest.mark.parametrize("bad", ["e" * 52, "0" * 51, "z" * 52])
def test_decode_refuses_what_is_not_a_digest(bad: str) -> None:
    with pytest.raises(ValueError):
        nixbase32.decode(bad, 32)  # "zzz..." sets bits beyond 256


def test_hash_notations() -> None:
    digest = hashlib.sha256(b"x").digest()
    forms = [f"sha256:{nixbase32.encode(digest)}", f"sha256:{digest.hex()}",
             f"sha256-{base64.b64encode(digest).decode()}"]
    for form in forms:
        assert nixbase32.parse_sha256(form, what="NarHash") == digest
    with pytest.raises(InitkitError, match="NarHash 'md5:abc': not a SHA-256"):
        nixbase32.parse_sha256("md5:abc", what="NarHash")


@pytest.mark.parametrize("name", ["0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs",
                                  "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-a.b+c_d?=e"])
def test_store_names(name: str) -> None:
    assert nixbase32.is_store_name(name)


@pytest.mark.parametrize("name", ["docs", "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8", "..",
                                  "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-.hidden",
                                  "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxre-docs",
                                  "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-a/b"])
def test_not_store_names(name: str) -> None:
    assert not nixbase32.is_store_name(name)


NARINFO = """\
StorePath: /nix/store/4bh57sc2nx9w0k1s1szxw59n7izr3qvr-mylib
URL: nar/09kxyd68d2nylk7ims23pj3i09s4nnv9p3dv6iij1q9canv42w6d.nar.xz
Compression: xz
FileHash: sha256:09kxyd68d2nylk7ims23pj3i09s4nnv9p3dv6iij1q9canv42w6d
FileSize: 124
NarHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
NarSize: 120
References: 4bh57sc2nx9w0k1s1szxw59n7izr3qvr-mylib 0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs
Deriver: 4j70mb2jv2k0ylfhi324c1g3im6afy56-mylib.drv
"""


def test_narinfo_fields() -> None:
    info = parse_narinfo(NARINFO, source="x.narinfo")
    assert info.store_name == "4bh57sc2nx9w0k1s1szxw59n7izr3qvr-mylib"
    assert info.hash_part == "4bh57sc2nx9w0k1s1szxw59n7izr3qvr"
    assert info.compression == "xz" and info.nar_size == 120 and info.file_size == 124
    assert info.references == ("4bh57sc2nx9w0k1s1szxw59n7izr3qvr-mylib",
                               "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs")


@pytest.mark.parametrize(("old", "new", "message"), [
    ("URL: nar/", "URL: ../../etc/", "URL '../../etc/.*leaves the cache directory"),
    ("URL: nar/", "URL: /etc/", "leaves the cache directory"),
    ("StorePath: /nix/store/", "StorePath: /gnu/store/", "not a path in /nix/store"),
    ("Compression: xz", "Compression: br", "Compression 'br' is not supported"),
    ("NarSize: 120", "NarSize: -1", "NarSize '-1' is not a number"),
    ("NarHash: sha256:1x", "NarHash: sha256:ex", "NarHash.*not a valid SHA-256"),
    ("References: 4bh", "References: ../4bh", "References names '../4bh"),
    ("NarHash", "Narhash", "no NarHash field"),
])
def test_narinfo_refusals(old: str, new: str, message: str) -> None:
    with pytest.raises(InitkitError, match=f"x.narinfo.*{message}"):
        parse_narinfo(NARINFO.replace(old, new, 1), source="x.narinfo")
