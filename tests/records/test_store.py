"""The registry on disk: names, records, atomic writes, pruning, permissions."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import attrs
import pytest

from instancelib import (
    InstanceRecord,
    InstanceRegistry,
    InvalidName,
    NameConflict,
    NotFound,
    RegistryError,
)
from instancelib.linux import procfs
from instancelib.registry import validate_name


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A live process that looks like an instance's PID 1: ``sleep`` run as ``instancelib-init``.

    (The kernel names a process after the file it executes: the link's name.)
    """
    link = tmp_path_factory.mktemp("stand-in") / "instancelib-init"
    link.symlink_to(shutil.which("sleep") or "/bin/sleep")
    process = subprocess.Popen([str(link), "1000"])
    try:
        stat = procfs.read_stat(process.pid)
        assert stat is not None and stat.comm == procfs.INIT_COMM
        yield process.pid, stat.starttime
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def own_record(stand_in):  # type: ignore[no-untyped-def]
    """Make records of a live 'instance' owned by the caller."""
    pid, starttime = stand_in

    def make(name: str, **changes: object) -> InstanceRecord:
        record = InstanceRecord(name=name, state="running", pid=pid, starttime=starttime,
                                image="/img", log_out="/o", log_err="/e", uid=os.geteuid())
        return attrs.evolve(record, **changes)

    return make


def test_layout_and_permissions(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path / "reg")
    registry.claim(own_record("a"))
    assert registry.instances_dir == tmp_path / "reg" / "instances" / registry.host
    assert registry.logs_dir == tmp_path / "reg" / "logs" / registry.host
    for directory in (registry.instances_dir, registry.logs_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(registry.record_path("a").stat().st_mode) == 0o600


def test_record_json_has_singularity_fields(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    registry.claim(own_record("a"))
    data = json.loads(registry.record_path("a").read_text())
    for key in ("instance", "pid", "img", "ip", "logErrPath", "logOutPath"):
        assert key in data
    assert InstanceRecord.from_json(data) == own_record("a")


def test_claim_conflicts_with_a_live_record(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    registry.claim(own_record("a"))
    with pytest.raises(NameConflict):
        registry.claim(own_record("a"))


def test_claim_replaces_a_dead_record(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    registry.claim(own_record("a", starttime=1))  # our PID with another start time: dead
    registry.claim(own_record("a"))
    assert registry._read("a") == own_record("a")


def test_dead_records_are_pruned_on_list(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    registry.claim(own_record("alive"))
    registry.claim(own_record("dead", pid=2**22 - 1))
    registry.claim(own_record("reused", starttime=12345))
    assert [r.name for r in registry.records()] == ["alive"]
    assert not registry.record_path("dead").exists()
    assert not registry.record_path("reused").exists()


@pytest.mark.parametrize("garbage", [b"", b"not json", b"[]", b'{"schema": 99}',
                                     b'{"schema": 1, "instance": "g"}', {"pid": "1"},
                                     {"pid": -5}, {"pid": 1}, {"uid": 12345},
                                     {"state": "weird"}, b"x" * (2 << 20)])
def test_garbage_records_are_pruned_not_fatal(tmp_path, garbage, own_record):
    registry = InstanceRegistry(tmp_path)
    registry.ensure_dirs()
    if isinstance(garbage, dict):  # a valid record with one field spoilt
        garbage = json.dumps({**own_record("g").to_json(), **garbage}).encode()
    registry.record_path("g").write_bytes(garbage)
    assert registry.records() == []
    with pytest.raises(NotFound):
        registry.get("g")
    assert not registry.record_path("g").exists()


def test_record_under_another_name_is_ignored(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    registry.claim(own_record("a"))
    registry.record_path("b").write_bytes(registry.record_path("a").read_bytes())
    assert [r.name for r in registry.records()] == ["a"]


def test_symlinked_record_is_not_followed(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    registry.claim(own_record("a"))
    os.symlink(registry.record_path("a"), registry.record_path("link"))
    assert [r.name for r in registry.records()] == ["a"]


def test_starting_records_are_hidden_but_hold_the_name(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    me = procfs.read_stat(os.getpid())
    assert me is not None
    lock = registry.claim(InstanceRecord(name="s", state="starting", owner_pid=me.pid,
                                         owner_starttime=me.starttime, uid=os.geteuid()))
    assert registry.records() == []
    with pytest.raises(NameConflict, match="being started"):
        registry.claim(own_record("s"))
    # A start holds the name's lock while it runs: once let go, the claim is abandoned.
    lock.close()
    assert registry.records() == []
    registry.claim(own_record("s")).close()
    assert [r.name for r in registry.records()] == ["s"]


def test_list_filters_by_glob(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    for name in ("web1", "web2", "db"):
        registry.claim(own_record(name))
    assert [r.name for r in registry.records("web*")] == ["web1", "web2"]
    assert [r.name for r in registry.records("db")] == ["db"]
    assert [r.name for r in registry.records()] == ["db", "web1", "web2"]


def test_remove_spares_a_record_replaced_meanwhile(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    old = own_record("a", starttime=1)
    registry.claim(old)
    new = own_record("a")
    registry.claim(new)
    registry.remove(old)
    assert registry._read("a") == new


def test_writes_leave_no_temporary_files(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    registry.claim(own_record("a"))
    registry.publish(own_record("a"), {"K": "V"})
    assert sorted(p.name for p in registry.instances_dir.iterdir()) == [".lock", "a.json",
                                                                         "a.lock"]
    assert registry.load_env("a") == {"K": "V"}


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 129, None, 3])
def test_validate_name_refuses(name):
    with pytest.raises(InvalidName):
        validate_name(name)


def test_registry_on_a_file_is_a_registry_error(tmp_path):
    (tmp_path / "file").write_text("")
    registry = InstanceRegistry(tmp_path / "file")
    with pytest.raises(RegistryError):
        registry.ensure_dirs()


def test_list_of_an_empty_registry(tmp_path):
    assert InstanceRegistry(tmp_path / "none").list() == []


def test_cached_record_is_reread_when_replaced(tmp_path, own_record):
    registry = InstanceRegistry(tmp_path)
    registry.claim(own_record("a", image="/one"))
    assert [r.image for r in registry.records()] == ["/one"]
    registry._write(own_record("a", image="/two"))
    assert [r.image for r in registry.records()] == ["/two"]


def test_cached_record_of_an_ended_process_is_pruned(tmp_path, own_record):
    link = tmp_path / "instancelib-init"
    link.symlink_to(shutil.which("sleep") or "/bin/sleep")
    child = subprocess.Popen([str(link), "100"])
    try:
        stat = procfs.read_stat(child.pid)
        assert stat is not None
        registry = InstanceRegistry(tmp_path)
        registry.claim(own_record("a", pid=child.pid, starttime=stat.starttime))
        assert [r.name for r in registry.records()] == ["a"]
    finally:
        child.kill()
        child.wait()
    assert registry.records() == []
    assert not registry.record_path("a").exists()


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_no_temporary_file(tmp_path, own_record, monkeypatch, failure):
    registry = InstanceRegistry(tmp_path)
    registry.claim(own_record("a"))

    def fail(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])   # part of it reached the temporary file
        raise failure

    monkeypatch.setattr("instancelib.records.files.write_all", fail)
    with pytest.raises(RegistryError if isinstance(failure, OSError) else KeyboardInterrupt):
        registry._write(own_record("a", image="/other"))
    assert sorted(p.name for p in registry.instances_dir.iterdir()) == [".lock", "a.json",
                                                                         "a.lock"]
    assert registry._read("a") == own_record("a")   # the old record, whole
