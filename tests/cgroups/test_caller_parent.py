"""``cgroup_parent="caller"``: an instance inside its caller's cgroup (a systemd unit's).

The test makes a cgroup standing for a unit in every hierarchy (as systemd
makes ``/system.slice/NAME.service``, with ``Delegate=yes`` offering it the
controllers), runs a caller process in it, and checks what systemd would
rely on: the instance's cgroup is a child of the unit's in every hierarchy,
its limits hold, the unit's accounting counts it, killing the unit's cgroup
(``systemctl stop``) ends it, and a stop removes what the start made.  On
the hybrid host and, from ``.ci/run``, in the pure cgroup v2 VM.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from instancelib import InstanceRegistry, InvalidArgument, Unsupported
from instancelib.cgroups import caller, tree
from instancelib.linux.userns import has_host_root
from instancelib.options import StartOptions
from tests.helpers import remove_cgroup_trees, wait_for
from tests.users import USER_A, as_user

pytestmark = pytest.mark.cgroups
ROOT_ONLY = pytest.mark.skipif(not has_host_root(), reason="needs root: makes a cgroup "
                               "standing for a systemd unit in every hierarchy")

CALLER = r"""
import json, sys
from pathlib import Path
from instancelib import Image, Instance, InstanceRegistry, Limits
sys.stdin.readline()  # the test has moved us into the unit's cgroups
registry = InstanceRegistry(REGISTRY)
out = {}
for name, parent, limits in (("a", "caller", Limits(memory="64M", pids_limit=40)),
                             ("b", "caller", None), ("c", None, None)):
    instance = Instance.start(Image(IMAGE), name, registry=registry, limits=limits,
                              cgroup_parent=parent)
    out[name] = {"pid": instance.pid, "cgroup": instance.cgroup.to_dict()}
out["own"] = Path("/proc/self/cgroup").read_text()
print(json.dumps(out), flush=True)
"""


class Unit:
    """A cgroup standing for a unit: one directory of one name in each hierarchy."""

    def __init__(self) -> None:
        hierarchies = tree.detect()
        self.name = f"instancelib-test-unit.{secrets.token_hex(3)}"
        self.mounts = sorted({*hierarchies.v1_mounts.values(),
                              *([hierarchies.v2_mount] if hierarchies.v2_mount else [])})
        self.v2 = (Path(hierarchies.v2_mount) / self.name) if hierarchies.v2_mount else None
        self.v1 = {controller: Path(mount) / self.name
                   for controller, mount in hierarchies.v1_mounts.items()}
        try:
            for mount in self.mounts:
                directory = Path(mount) / self.name
                directory.mkdir()
                if mount in hierarchies.v1_mounts.values() and (directory / "cpuset.cpus").exists():
                    for key in ("cpuset.cpus", "cpuset.mems"):  # v1: a member needs them first
                        (directory / key).write_text((Path(mount) / key).read_text())
        except BaseException:
            self.remove()
            raise

    def directories(self) -> list[Path]:
        return [Path(mount) / self.name for mount in self.mounts]

    def enter(self, pid: int) -> None:
        for directory in self.directories():
            (directory / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """Kill what the test left in it (only its processes can be there), rmdir it all."""
        remove_cgroup_trees(self.directories())


@pytest.fixture
def unit() -> Iterator[Unit]:
    made = Unit()
    try:
        yield made
    finally:
        made.remove()


def _run_caller(unit: Unit, image: Path, registry: Path) -> dict:
    code = f"IMAGE = {str(image)!r}\nREGISTRY = {str(registry)!r}\n" + CALLER
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd="/") as proc:
        try:
            unit.enter(proc.pid)
            stdout, stderr = proc.communicate("go\n", timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr
    return json.loads(stdout.splitlines()[-1])


def _kernel_paths(pid: int) -> dict[str, str]:
    """Each hierarchy's path of ``pid``, from the kernel (``""``: v2)."""
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _offers_controllers(directory: Path) -> bool:
    """Whether it is offered any controller an instance asks for (not just hugetlb)."""
    return bool(caller.offered(str(directory)) & set(tree.ALWAYS_CONTROLLERS))


@ROOT_ONLY
def test_an_instance_goes_into_its_callers_cgroup_and_the_unit_covers_it(unit, image,
                                                                          tmp_path):
    registry_dir = tmp_path / "registry"
    out = _run_caller(unit, Path(image.path), registry_dir)
    registry = InstanceRegistry(registry_dir)
    try:
        inside = f"/{unit.name}/{tree.TREE}/"
        for name in ("a", "b"):
            info = out[name]["cgroup"]
            kernel = _kernel_paths(out[name]["pid"])
            # Every hierarchy the instance uses holds it below the unit's cgroup.
            if unit.v2 is not None:
                assert info["v2"].startswith(f"{unit.v2}/{tree.TREE}/i.0.")
                assert kernel[""].startswith(inside)
            for controller, directory in info["v1"].items():
                assert directory.startswith(f"{unit.v1[controller]}/{tree.TREE}/i.0.")
                assert kernel[controller].startswith(inside)
        # The default still leaves the caller's cgroup for instancelib's own tree.
        default = out["c"]["cgroup"]
        assert not any(unit.name in d for d in [default["v2"] or "", *default["v1"].values()])
        # On cgroup v2, a unit offered controllers (Delegate=yes) had its processes moved
        # into <unit>/supervisor so that it could pass them down; the second start, made
        # from there, still went into the unit's instancelib/ (not supervisor's).
        own_v2 = next((line[3:] for line in out["own"].splitlines()
                       if line.startswith("0::")), None)
        if unit.v2 is not None and _offers_controllers(unit.v2):
            assert own_v2 == f"/{unit.name}/{caller.SUPERVISOR}"
            assert "memory" in (unit.v2 / "cgroup.subtree_control").read_text().split()
        elif unit.v2 is not None:
            assert own_v2 == f"/{unit.name}"  # nothing to gain: nothing moved
        # The limits hold in the instance's own cgroup.
        a = registry.get("a")
        memory = a.cgroup.directory("memory")
        assert memory is not None and unit.name in memory
        limit_file = "memory.max" if a.cgroup.controllers["memory"] == "v2" \
            else "memory.limit_in_bytes"
        assert int(Path(memory, limit_file).read_text()) == 64 << 20
        # The unit's accounting counts the instance: its memory includes the instance's
        # (the caller has exited: only instances are left in the unit).
        stats = a.stats()
        assert stats.memory_usage > 0 and stats.source.startswith("cgroup")
        unit_memory = Path(memory).parent.parent
        usage = "memory.current" if limit_file == "memory.max" else "memory.usage_in_bytes"
        assert int((unit_memory / usage).read_text()) >= stats.memory_usage
        # A stop removes the instance's cgroup; the unit's instancelib/ stays while b is in it.
        a.stop()
        assert not Path(memory).exists()
        b = registry.get("b")
        b_dirs = [d for d in [b.cgroup.v2, *b.cgroup.v1.values()] if d]
        # systemctl stop (KillMode=control-group) kills the unit's whole cgroup: b ends.
        if unit.v2 is not None:
            (unit.v2 / "cgroup.kill").write_text("1")
        else:
            for pid in (unit.v1["freezer"] / tree.TREE / Path(b_dirs[0]).name
                        / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: not b.is_running(), timeout=10)
        assert [i.name for i in registry.list()] == ["c"]
        # What the start made in the unit went with the dead instance's pruning.
        wait_for(lambda: not any(Path(d).exists() for d in b_dirs), timeout=5)
        for directory in unit.directories():
            wait_for(lambda d=directory: not (d / tree.TREE).exists(), timeout=5)
    finally:
        registry.stop(force=True)


@ROOT_ONLY
def test_limits_a_callers_cgroup_cannot_pass_down_are_refused(unit, image, tmp_path):
    if unit.v2 is None or not {"memory", "pids"} <= caller.offered(str(unit.v2.parent)):
        pytest.skip("a pure cgroup v2 host's behaviour (the v2 VM runs it): here cgroup v1 "
                    "serves memory")
    # A unit that systemd offers no memory controller (no Delegate=yes, no MemoryMax=).
    (unit.v2 / "cgroup.subtree_control").write_text("+pids")
    inner = unit.v2 / "service"
    inner.mkdir()
    code = ("import sys\nfrom instancelib import Image, Instance, Limits, Unsupported\n"
            "sys.stdin.readline()\n"
            f"try:\n    Instance.start(Image({str(image.path)!r}), 'x', registry=None, "
            "cgroup_parent='caller', limits=Limits(memory='64M'))\n"
            "except Unsupported as err:\n    print(err)\n")
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd="/", env={**os.environ, "INSTANCELIB_HOME": str(tmp_path)}) as proc:
        try:
            (inner / "cgroup.procs").write_text(str(proc.pid))
            stdout, stderr = proc.communicate("go\n", timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr
    assert "cannot enforce the memory limits" in stdout
    assert f"the caller's cgroup {inner} is offered only: pids" in stdout
    assert "Delegate=yes" in stdout
    assert not (inner / tree.TREE).exists()  # nothing made


@ROOT_ONLY
def test_an_ordinary_user_whose_cgroup_is_not_theirs_is_told_so(shared):
    result = as_user(USER_A, shared, (
        "from instancelib import Image, Instance, Limits, Unsupported\n"
        "try:\n    Instance.start(Image(IMAGE), 'x', cgroup_parent='caller', "
        "limits=Limits(pids_limit=10))\n"
        "except Unsupported as err:\n    print(err)\n"))
    assert result.returncode == 0, result.stderr
    assert "cgroup_parent='caller': the caller's cgroup" in result.stdout
    assert "is not this user's to write" in result.stdout


def test_the_callers_cgroup_is_read_from_the_kernels_lines():
    text = ("12:memory:/system.slice/web.service\n"
            "3:cpu,cpuacct:/system.slice/web.service\n"
            "1:name=systemd:/system.slice/web.service\n"
            "0::/system.slice/web.service/supervisor\n")
    own = caller.own_cgroups(text)
    # supervisor (systemd's DelegateSubgroup=, or our own move) stands for its parent
    assert own[""] == "/system.slice/web.service"
    assert own["memory"] == own["cpu"] == own["cpuacct"] == "/system.slice/web.service"


@pytest.mark.parametrize("path", ["/../../system.slice", "/a/../b", "/a//b"])
def test_a_cgroup_outside_the_namespaces_view_is_refused(path):
    with pytest.raises(Unsupported, match="outside the cgroup namespace"):
        caller.own_cgroups(f"0::{path}\n")


def test_an_unknown_cgroup_parent_is_refused_before_anything_starts():
    with pytest.raises(InvalidArgument, match="cgroup_parent must be 'instancelib' or "
                                              "'caller'"):
        StartOptions(cgroup_parent="/system.slice")
    assert StartOptions().cgroup_parent == "instancelib"
    assert StartOptions(cgroup_parent="caller").to_record()["cgroup_parent"] == "caller"
