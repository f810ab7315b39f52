"""The image cache: built once, bounded, and never evicting what an instance uses."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from instancelib import InvalidArgument
from instancelib.image import cache


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INSTANCELIB_CACHE", str(tmp_path / "cache"))


def _entry(key: str, size: int) -> tuple:  # type: ignore[type-arg]
    def build(target):  # type: ignore[no-untyped-def]
        (target / "blob").write_bytes(b"x" * size)

    return cache.entry(key, build, what=key)


def test_an_entry_is_built_once(tmp_path):
    calls = []

    def build(target):  # type: ignore[no-untyped-def]
        calls.append(target)
        (target / "f").write_text("x")

    first = cache.entry("k", build, what="k")
    second = cache.entry("k", build, what="k")
    assert first == second and len(calls) == 1
    assert (first[0] / "f").read_text() == "x"


def test_a_failed_build_leaves_nothing(tmp_path):
    def build(target):  # type: ignore[no-untyped-def]
        (target / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.entry("broken", build, what="broken")
    assert sorted(p.name for p in (cache.cache_root() / "rootfs").iterdir()) == [
        "broken.build", "broken.lock"]


def test_eviction_removes_least_recently_used_idle_entries(monkeypatch):
    monkeypatch.setattr(cache, "RECENT", 0.0)
    old, _ = _entry("old", 200_000)
    busy, busy_lock = _entry("busy", 200_000)
    new, _ = _entry("new", 200_000)
    for index, key in enumerate(("old", "busy", "new")):
        stamp = time.time() - 1000 + index
        os.utime(cache.cache_root() / "rootfs" / f"{key}.lock", (stamp, stamp))
    fd = os.open(busy_lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # as an instance's PID 1 does
    try:
        removed = cache.evict(limit=250_000)
    finally:
        os.close(fd)
    # Oldest first; "busy" is in use, so "new" goes too to get under the bound.
    assert removed == ["old", "new"]
    assert not old.exists() and busy.exists() and not new.exists()


def test_entries_just_handed_out_are_not_evicted():
    directory, _ = _entry("fresh", 100_000)
    assert cache.evict(limit=0) == []
    assert directory.exists()


def test_cache_bound_setting(monkeypatch):
    monkeypatch.setenv("INSTANCELIB_CACHE_MAX", "1.5G")
    assert cache.max_bytes() == int(1.5 * (1 << 30))
    monkeypatch.setenv("INSTANCELIB_CACHE_MAX", "lots")
    with pytest.raises(InvalidArgument):
        cache.max_bytes()
