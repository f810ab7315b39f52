"""Attacks of an ordinary user on root, run for real with the users ilib-a and ilib-b.

Each test is an attack that worked before: the user sets the trap, root does what an
administrator would (exec into the user's instance, ``instance stop -u``, read the
user's logs, start with a pid file), and the test checks that nothing of root's or of
anybody else's was touched.  Root only (the users are switched to).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from instancelib import (
    Instance,
    InstanceRecord,
    InstanceRegistry,
    RegistryError,
    StartError,
    Unsupported,
)
from instancelib.cgroups.tree import CgroupInfo
from instancelib.linux import procfs
from instancelib.linux.userns import has_host_root
from tests.users import USER_A, USER_B, VENV_PYTHON, as_user

pytestmark = pytest.mark.skipif(not has_host_root(),
                                reason="needs root: switches between the users ilib-a and ilib-b")

SLEEPER = "#!/bin/sh\nexec sleep 1000\n"


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A directory of ilib-a's, in /tmp (which ilib-a may fill with traps)."""
    directory = Path(tempfile.mkdtemp(prefix="instancelib-attack-"))
    os.chown(directory, *_ids(USER_A))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A directory of root's holding what the attacks go for (readable, not writable)."""
    directory = Path(tempfile.mkdtemp(prefix="instancelib-target-"))
    directory.chmod(0o755)
    (directory / "root-only").write_text("TOP SECRET\n")
    (directory / "root-only").chmod(0o600)
    (directory / "root-log").write_text("untouched\n")
    (directory / "root-log").chmod(0o644)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    found = {}
    for path in sorted(directory.rglob("*")):
        info = os.lstat(path)
        found[str(path)] = (info.st_mode, info.st_uid,
                            path.read_bytes() if path.is_file() and not path.is_symlink() else b"")
    return found


def _users_registry(root: Path | None = None) -> InstanceRegistry:
    """ilib-a's registry, its directories made by ilib-a itself."""
    code = ("from instancelib import InstanceRegistry\n"
            f"InstanceRegistry({str(root) if root else None!r}).ensure_dirs()\n")
    result = _run_as_a(code)
    assert result.returncode == 0, result.stderr
    return InstanceRegistry(root, user=USER_A)


def _run_as_a(code: str) -> subprocess.CompletedProcess[str]:
    return as_user(USER_A, _SHARED[0], code)


_SHARED: list[Path] = [Path("/nonexistent")]


@pytest.fixture(autouse=True)
def _package_for_the_users(shared: Path) -> None:
    _SHARED[0] = shared


# -- 4. root exec into a user's instance -----------------------------------------------------------


def test_root_exec_into_a_users_instance_runs_as_that_user(shared, user_dir, root_dir):
    attack = user_dir / "attack.sh"
    attack.write_text("#!/bin/sh\nid -u\nid -G\ncat /host/root-only\n"
                      "echo pwned >> /host/root-log\n")
    attack.chmod(0o755)
    os.chown(attack, *_ids(USER_A))
    before = _snapshot(root_dir)
    started = as_user(USER_A, shared, f"""
from instancelib import Instance, Image
Instance.start(Image(IMAGE), "box", binds=["{root_dir}:/host", "{user_dir}:/u"])
""")
    assert started.returncode == 0, started.stderr
    instance = InstanceRegistry(user=USER_A).get("box")
    try:
        for run in (lambda: instance.exec(["/u/attack.sh"]),
                    lambda: instance.run(["-c", "/u/attack.sh"])):
            result = run()
            uid, gid = _ids(USER_A)
            assert result.stdout.split()[:2] == [str(uid), str(gid)], result.stdout
            assert "TOP SECRET" not in result.stdout
        assert _snapshot(root_dir) == before
    finally:
        instance.stop()


# -- 5. a forged record naming another instance's cgroup -------------------------------------------


def test_a_forged_record_cannot_make_root_kill_or_freeze_another_instance(shared, make_image,
                                                                         tmp_path, user_dir):
    victim = Instance.start(make_image(startscript=SLEEPER), "victim",
                            registry=InstanceRegistry(tmp_path / "root-registry"))
    try:
        cgroup = CgroupInfo.from_dict(victim._record.cgroup)
        assert cgroup is not None, "root's instances have a cgroup on this host"
        link = user_dir / "instancelib-init"   # the kernel names a process after its file
        link.symlink_to(shutil.which("sleep") or "/bin/sleep")
        uid, gid = _ids(USER_A)
        fake = subprocess.Popen([str(link), "1000"], user=uid, group=gid, extra_groups=[])
        try:
            stat = procfs.read_stat(fake.pid)
            assert stat is not None and stat.comm == procfs.INIT_COMM
            # The record names the fake's own cgroup (what /proc/PID/cgroup shows)
            # with the victim's directories: a check of the name alone passes it.
            with open(f"/proc/{fake.pid}/cgroup") as f:
                own = f.readline().strip().split(":", 2)[2]
            registry = _users_registry()
            registry._write(InstanceRecord(name="forged", state="running", pid=fake.pid,
                                           starttime=stat.starttime, uid=uid,
                                           cgroup={**victim._record.cgroup, "name": own}))
            forged = registry.get("forged")
            assert forged.cgroup is None
            with pytest.raises(Unsupported):
                forged.pause()
            stopped = subprocess.run([sys.executable, "-m", "instancelib", "instance", "stop",
                                      "-u", USER_A, "--all", "--timeout", "1"],
                                     capture_output=True, text=True, timeout=60, check=False)
            assert stopped.returncode == 0, stopped.stderr
        finally:
            fake.kill()
            fake.wait()
        assert victim.is_running() and not victim.paused
        assert victim.exec(["true"]).returncode == 0
        for directory in [cgroup.v2, *cgroup.v1.values()]:
            assert directory and os.path.isdir(directory), directory
    finally:
        victim.stop()


# -- 6. a racing renamer in the user's registry -------------------------------------------------

RENAMER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
real, swap, seconds = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3])
swaps, end = 0, time.monotonic() + seconds
print("racing", flush=True)
while time.monotonic() < end:
    if libc.renameat2(-100, real, -100, swap, 2) == 0:   # RENAME_EXCHANGE
        swaps += 1
print(swaps, flush=True)
"""


def test_a_users_racing_renamer_never_makes_root_touch_other_files(shared, user_dir, root_dir):
    for name in ("a.json", "a.env", "b.json", "b.lock", "c.json"):
        (root_dir / name).write_bytes(b"not a record")   # garbage a prune would remove
    before = _snapshot(root_dir)
    registry = _users_registry(user_dir / "registry")
    real = registry.instances_dir
    (real / "junk.json").write_bytes(b"garbage of the user's own")
    os.chown(real / "junk.json", *_ids(USER_A))
    swap = real.parent / "swap"
    swap.symlink_to(root_dir)
    os.lchown(swap, *_ids(USER_A))
    uid, gid = _ids(USER_A)
    racer = subprocess.Popen([VENV_PYTHON, "-c", RENAMER, str(real), str(swap), "5"],
                             user=uid, group=gid, extra_groups=[], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert racer.stdout is not None and racer.stdout.readline() == "racing\n"
        calls = 0
        deadline = time.monotonic() + 4
        while calls < 256 and time.monotonic() < deadline:
            fresh = InstanceRegistry(user_dir / "registry", user=USER_A)   # nothing cached
            for act in (fresh.list, lambda r=fresh: r.stop("*", timeout=0),
                        lambda r=fresh: r.get("a")):
                with contextlib.suppress(RegistryError, LookupError, PermissionError):
                    act()
            calls += 1
    finally:
        racer.wait(timeout=30)
    swaps = int(racer.stdout.read().strip() or 0)
    assert swaps > 100, "the renamer did not race"
    assert calls >= 50
    assert _snapshot(root_dir) == before


# -- 7. logs, pid files, the session directory ------------------------------------------------


@pytest.mark.parametrize("trap", ["symlink", "fifo"])
def test_root_reading_a_users_logs_never_follows_a_planted_link_or_hangs(trap, shared, root_dir):
    started = as_user(USER_A, shared, """
from instancelib import Instance, Image
Instance.start(Image(IMAGE), "logged")
""")
    assert started.returncode == 0, started.stderr
    registry = InstanceRegistry(user=USER_A)
    instance = registry.get("logged")
    try:
        log_path = instance.stdout_path
        planted = as_user(USER_A, shared, f"""
import os
os.unlink({str(log_path)!r})
if {trap!r} == "symlink":
    os.symlink({str(root_dir / "root-only")!r}, {str(log_path)!r})
else:
    os.mkfifo({str(log_path)!r})
""")
        assert planted.returncode == 0, planted.stderr
        began = time.monotonic()
        with pytest.raises(RegistryError, match="log file"):
            list(instance.logs())
        assert time.monotonic() - began < 5
    finally:
        instance.stop()
        instance.stdout_path.unlink()   # the trap would also (rightly) refuse the next start


def test_roots_pid_file_is_never_written_through_a_users_directory_or_link(
        make_image, start, user_dir, root_dir):
    image = make_image(startscript=SLEEPER)
    before = _snapshot(root_dir)
    with pytest.raises(StartError, match="belongs to UID"):
        start(image, "pid1", pid_file=user_dir / "x.pid")
    link = Path(tempfile.mkdtemp(prefix="instancelib-sticky-")) / "run"
    link.parent.chmod(0o1777)
    try:
        link.symlink_to(root_dir)
        os.lchown(link, *_ids(USER_A))      # planted by the user in a sticky directory
        with pytest.raises(StartError, match="link run on the way belongs to UID"):
            start(image, "pid2", pid_file=link / "x.pid")
    finally:
        shutil.rmtree(link.parent)
    assert _snapshot(root_dir) == before
    assert not list(user_dir.iterdir())


def test_a_squatted_tmp_directory_does_not_stop_a_users_starts(shared):
    uid_a = _ids(USER_A)[0]
    squat = Path(f"/tmp/instancelib-{uid_a}")
    if squat.exists() or squat.is_symlink():
        # ilib-a's own, from earlier tests: only empty mount points, remade on the next start.
        assert squat.lstat().st_uid == uid_a and InstanceRegistry(user=USER_A).list() == []
        shutil.rmtree(squat)
    try:
        squatter = subprocess.run(["mkdir", "-m", "0755", str(squat)], user=_ids(USER_B)[0],
                                  group=_ids(USER_B)[1], extra_groups=[], check=False)
        assert squatter.returncode == 0 and squat.stat().st_uid == _ids(USER_B)[0]
        result = as_user(USER_A, shared, """
from instancelib import Instance, Image
instance = Instance.start(Image(IMAGE), "squatted")
print(instance.exec(["echo", "up"]).stdout.strip())
instance.stop()
""")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "up"
        assert list(squat.iterdir()) == []   # nothing of ilib-a's went into B's directory
    finally:
        shutil.rmtree(squat, ignore_errors=True)


# -- 8. the caller's environment ---------------------------------------------------------------


def test_a_users_root_inside_cannot_read_the_callers_environment(shared):
    result = as_user(USER_A, shared, """
import os
os.environ["SECRET_TOKEN"] = "hunter2-of-the-caller"
from instancelib import Instance, Image
instance = Instance.start(Image(IMAGE), "env", cleanenv=True, fakeroot=True)
print(instance.exec(["cat", "/proc/1/environ"]).stdout)
instance.stop()
""")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
