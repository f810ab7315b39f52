"""An ordinary user's instances inside a cgroup v2 subtree delegated to them.

systemd's user manager delegates ``user@UID.service`` to each user: the user
owns the directory and its ``cgroup.procs``, ``cgroup.subtree_control`` and
``cgroup.threads``, and their processes sit in leaves below.  This test makes
such a subtree itself (root only, so the suite's unprivileged pass skips it),
runs ``ilib-a`` in a leaf of it, and checks what they get: on a pure cgroup v2
host a cgroup with the limits they ask for; on a hybrid host (controllers on
v1, which stays root's) a cgroup for pause and kill, and limits refused.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from instancelib.cgroups import tree
from instancelib.linux.userns import has_host_root
from tests.helpers import remove_cgroup_trees
from tests.users import USER_A, VENV_PYTHON, user_env

pytestmark = [
    pytest.mark.cgroups,
    pytest.mark.skipif(not has_host_root(), reason="needs root: makes a delegated subtree "
                       "for the user ilib-a"),
]

USER = USER_A
DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")

USER_CODE = r"""
import json, os, sys
from pathlib import Path
from instancelib import Image, Instance, Limits, Unsupported
sys.stdin.readline()  # root has moved us into the delegated leaf
out = {"own": Path("/proc/self/cgroup").read_text()}
image = Image(IMAGE)
try:
    instance = Instance.start(image, "delegated", limits=Limits(pids_limit=20, memory="64M"))
except Unsupported as err:
    out["limits_refused"] = str(err)
    instance = Instance.start(image, "delegated")
info = instance.cgroup
out["cgroup"] = info.to_dict() if info else None
if info is not None and info.v2:
    files = {}
    for name in ("pids.max", "memory.max"):
        path = Path(info.v2, name)
        if path.exists():
            files[name] = path.read_text().strip()
    out["files"] = files
    out["in_it"] = f":{info.name}\n" in Path(f"/proc/{instance.pid}/cgroup").read_text()
    instance.pause()
    out["paused"] = instance.paused
    instance.resume()
    out["stats_source"] = instance.stats().source
instance.stop()
out["left"] = info is not None and info.v2 is not None and os.path.exists(info.v2)
print(json.dumps(out))
"""


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@pytest.fixture
def delegated() -> Iterator[Path]:
    """A subtree of the v2 hierarchy owned by ilib-a, with a leaf for their processes."""
    mount = tree.detect().v2_mount
    if mount is None:
        pytest.skip("the kernel has no cgroup v2 hierarchy mounted here")
    entry = pwd.getpwnam(USER)
    top = Path(mount) / f"instancelib-test-delegated.{secrets.token_hex(3)}"
    top.mkdir()
    try:
        leaf = top / "session"
        leaf.mkdir()
        for directory in (top, leaf):
            os.chown(directory, entry.pw_uid, entry.pw_gid)
            for name in DELEGATED_FILES:
                os.chown(directory / name, entry.pw_uid, entry.pw_gid)
        yield top
    finally:
        remove_cgroup_trees([top])


def test_a_user_gets_cgroups_inside_their_delegated_subtree(delegated, shared):
    entry = pwd.getpwnam(USER)
    code = f"IMAGE = {str(shared / 'image')!r}\n" + USER_CODE
    env = user_env(entry, shared)
    with subprocess.Popen([VENV_PYTHON, "-c", code], user=entry.pw_uid, group=entry.pw_gid,
                          extra_groups=[], env=env, cwd="/", stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            _write(delegated / "session" / "cgroup.procs", str(proc.pid))
            stdout, stderr = proc.communicate("go\n", timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr
    out = json.loads(stdout.splitlines()[-1])
    assert f"{delegated.name}/session" in out["own"]
    info = out["cgroup"]
    assert info is not None, "a user with a delegated subtree gets a cgroup"
    assert info["v2"].startswith(str(delegated / "instancelib") + "/")
    assert out["in_it"] and out["paused"] is True and out["left"] is False
    offered = set((Path(tree.detect().v2_mount or "") / "cgroup.subtree_control")
                  .read_text().split())
    if {"memory", "pids"} <= offered:  # a pure v2 host: the limits hold
        assert "limits_refused" not in out
        assert out["files"] == {"pids.max": "20", "memory.max": str(64 << 20)}
        assert out["stats_source"] == "cgroup v2"
    else:  # hybrid: the controllers are on v1, which is root's
        assert "cgroup v1 is root's" in out["limits_refused"]
        assert out["files"] == {}
    assert not (delegated / "instancelib").exists()
