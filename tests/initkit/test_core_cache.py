"""initkit.cache: where the cache is, created 0700, and refused when it is not the user's own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from initkit.cache import cache_dir, cache_root
from initkit.errors import InitkitError


def test_root_and_parts_are_created_private(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path / "a" / "cache"))
    made = cache_dir("hostrun", "vmlinux")
    assert made == tmp_path / "a" / "cache" / "hostrun" / "vmlinux" and made.is_dir()
    for path in (made, made.parent, made.parent.parent):
        assert path.stat().st_mode & 0o777 == 0o700, path


def test_default_root_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INITKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "initkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "initkit"


def _refused(monkeypatch: pytest.MonkeyPatch, root: Path, *needles: str) -> None:
    monkeypatch.setenv("INITKIT_CACHE", str(root))
    with pytest.raises(InitkitError) as caught:
        cache_dir("x")
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_a_symlinked_cache_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    _refused(monkeypatch, tmp_path / "link", f"{tmp_path / 'link'} is a symbolic link",
             "set $INITKIT_CACHE to the real directory")
    assert list((tmp_path / "real").iterdir()) == []


def test_a_cache_of_another_user_is_refused(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    _refused(monkeypatch, other, "belongs to", "uid 65534", "not to you")


def test_a_cache_everyone_may_write_is_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    _refused(monkeypatch, shared, "writable by everyone (mode 0777)", f"chmod o-w {shared}")


def test_a_file_where_the_cache_should_be_is_refused(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    _refused(monkeypatch, tmp_path / "file", "is not a directory")
    _refused(monkeypatch, tmp_path / "file" / "below", f"{tmp_path / 'file'} is not a directory",
             "set $INITKIT_CACHE to a directory elsewhere")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "x").write_text("a file where a part should be")
    _refused(monkeypatch, cache, f"{cache / 'x'}: it exists and is not a directory")


def test_a_cache_on_proc_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _refused(monkeypatch, Path("/proc/initkit-cache"),
             "cannot create the cache directory /proc/initkit-cache: /proc (proc) takes no "
             "new files here", "set $INITKIT_CACHE to a directory elsewhere")


def test_a_cache_removed_while_running_is_made_again(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path / "c"))
    cache_dir("a")
    (tmp_path / "c" / "a").rmdir()
    (tmp_path / "c").rmdir()
    assert cache_dir("a").is_dir()
