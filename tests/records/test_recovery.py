"""A live instance is never lost: torn, garbled or deleted records come back from its PID 1.

Real instances, real files: each test damages the registry the way a crash, a full disk
or a careless ``rm`` would, then checks that the instance can still be found, that its
name stays taken, and that it can be stopped leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from instancelib import Instance, InstanceRegistry, NameConflict
from instancelib.linux import procfs

SLEEPER = "#!/bin/sh\nexec sleep 1000\n"


def _files(registry: InstanceRegistry) -> list[str]:
    return sorted(os.listdir(registry.instances_dir))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "another-instance",
                                    "wrong-schema"])
def test_a_damaged_record_of_a_live_instance_is_recovered_not_pruned(
        damage, make_image, start, registry):
    instance = start(make_image(startscript=SLEEPER), "torn")
    path = registry.record_path("torn")
    good = path.read_bytes()
    damaged = {"truncated": good[: len(good) // 2], "garbage": b"\x00\xffnot json",
               "empty": b"", "wrong-schema": json.dumps({"schema": 99}).encode(),
               "another-instance": json.dumps({**json.loads(good), "pid": 2**22 - 1}).encode(),
               }[damage]
    path.write_bytes(damaged)
    assert [i.name for i in InstanceRegistry(registry.root).list()] == ["torn"]
    assert json.loads(path.read_bytes()) == json.loads(good)   # re-published
    recovered = registry.get("torn")
    assert recovered.pid == instance.pid and recovered.is_running()
    assert recovered.exec(["echo", "still here"]).stdout == "still here\n"
    recovered.stop()
    assert not procfs.is_alive(instance.pid, instance._record.starttime)
    assert _files(registry) == [".lock"]


def test_the_name_of_a_live_instance_with_a_garbled_record_stays_taken(
        make_image, start, registry):
    image = make_image(startscript=SLEEPER)
    first = start(image, "taken")
    registry.record_path("taken").write_bytes(b"{torn")
    with pytest.raises(NameConflict, match="already exists"):
        start(image, "taken")
    assert [i.pid for i in registry.list()] == [first.pid]
    first.stop()
    again = start(image, "taken")   # free once the instance has gone
    again.stop()


def test_a_deleted_record_is_recovered_through_the_held_name_lock(make_image, start, registry):
    instance = start(make_image(startscript=SLEEPER), "deleted")
    registry.record_path("deleted").unlink()
    listed = InstanceRegistry(registry.root).list()
    assert [(i.name, i.pid) for i in listed] == [("deleted", instance.pid)]
    assert listed[0].exec(["true"]).returncode == 0   # the environment came back too
    with pytest.raises(NameConflict):
        start(make_image(), "deleted")
    listed[0].stop()
    assert _files(registry) == [".lock"]


def test_an_instance_whose_files_were_all_deleted_is_found_by_recover(
        make_image, start, registry):
    instance = start(make_image(startscript=SLEEPER), "orphan")
    try:
        for path in (registry.record_path("orphan"), registry.lock_path("orphan")):
            path.unlink()
        assert registry.list() == []
        found = InstanceRegistry(registry.root).recover()
        assert [(i.name, i.pid) for i in found] == [("orphan", instance.pid)]
        assert [i.name for i in registry.list()] == ["orphan"]
        assert registry.recover() == []   # nothing lost any more
        registry.get("orphan").stop()
        assert not instance.is_running()
    finally:
        instance.stop()   # (no record needed: the pidfd check is enough)


def test_recover_adopts_only_this_registrys_instances(make_image, start, registry, tmp_path):
    other = InstanceRegistry(tmp_path / "other")
    mine = start(make_image(startscript=SLEEPER), "mine")
    theirs = Instance.start(make_image(startscript=SLEEPER), "theirs", registry=other)
    try:
        for reg, name in ((registry, "mine"), (other, "theirs")):
            for path in (reg.record_path(name), reg.lock_path(name)):
                path.unlink()
        assert [i.name for i in registry.recover()] == ["mine"]
        assert [i.name for i in other.recover()] == ["theirs"]
    finally:
        theirs.stop()
        mine.stop()


def test_the_cli_lists_a_recovered_instance(make_image, start, registry):
    instance = start(make_image(startscript=SLEEPER), "cli-orphan")
    try:
        for path in (registry.record_path("cli-orphan"), registry.lock_path("cli-orphan")):
            path.unlink()
        env = dict(os.environ, INSTANCELIB_HOME=str(registry.root))
        plain = subprocess.run([sys.executable, "-m", "instancelib", "instance", "list"],
                               capture_output=True, text=True, env=env, check=False, timeout=60)
        assert "cli-orphan" not in plain.stdout
        recovered = subprocess.run([sys.executable, "-m", "instancelib", "instance", "list",
                                    "--recover"], capture_output=True, text=True, env=env,
                                   check=False, timeout=60)
        assert recovered.returncode == 0, recovered.stderr
        assert "cli-orphan" in recovered.stdout and str(instance.pid) in recovered.stdout
    finally:
        instance.stop()


def test_a_stale_lock_file_without_an_instance_is_removed(registry):
    registry.ensure_dirs()
    registry.lock_path("gone").write_bytes(b"")
    assert registry.list() == []
    assert not registry.lock_path("gone").exists()


def test_a_record_without_its_instance_is_still_pruned(make_image, start, registry):
    instance = start(make_image(startscript=SLEEPER), "killed")
    instance.kill()
    instance.wait(5)
    assert InstanceRegistry(registry.root).list() == []
    assert _files(registry) == [".lock"]


def test_an_instance_killed_right_after_start_frees_its_name(make_image, start, registry):
    """The lock may still be in flight to PID 1 when it is killed: the kernel drops it late."""
    image = make_image(startscript=SLEEPER)
    for _ in range(30):
        instance = start(image, "short")
        instance.kill()
        instance.wait(5)
        assert _files(registry) == [".lock"]
    start(image, "short").stop()
