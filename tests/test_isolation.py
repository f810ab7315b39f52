"""Users are kept apart: user B cannot see or touch user A's instances; root only when asked.

These tests switch between the ordinary users ``ilib-a`` and ``ilib-b`` (made by
``scripts/setup``), so they need root; in the suite's unprivileged pass they are
skipped.  The users run code with ``/opt/instancelib-venv`` (the dependencies)
and a readable copy of this checkout's ``instancelib``.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from instancelib import InstanceRecord, InstanceRegistry, NotFound, PermissionDenied
from instancelib.linux import procfs
from instancelib.linux.userns import has_host_root
from tests.users import USER_A, USER_B, as_user, cli_as

pytestmark = pytest.mark.skipif(not has_host_root(),
                                reason="needs root: switches between the users ilib-a and ilib-b")

@pytest.fixture
def secret(shared: Path) -> Iterator[dict[str, int]]:
    """User A's running instance ``secret``: its PID and start time."""
    result = as_user(USER_A, shared, (
        "import json\nfrom instancelib import Instance, Image\n"
        "i = Instance.start(Image(IMAGE), 'secret')\n"
        "print(json.dumps({'pid': i.pid}))\n"
    ))
    assert result.returncode == 0, result.stderr
    pid = json.loads(result.stdout)["pid"]
    stat = procfs.read_stat(pid)
    assert stat is not None
    yield {"pid": pid, "starttime": stat.starttime}
    InstanceRegistry(user=USER_A).stop("secret", force=True)


def test_a_users_registry_and_logs_are_in_their_home_and_private(shared, secret):
    home = Path(pwd.getpwnam(USER_A).pw_dir)
    registry = InstanceRegistry(user=USER_A)
    assert registry.root == home / ".instancelib"
    uid = pwd.getpwnam(USER_A).pw_uid
    for path in (registry.root, registry.instances_dir, registry.logs_dir):
        info = path.stat()
        assert (info.st_uid, oct(info.st_mode & 0o777)) == (uid, "0o700"), path
    for path in (registry.record_path("secret"), registry.log_paths("secret")[0]):
        info = path.stat()
        assert (info.st_uid, oct(info.st_mode & 0o777)) == (uid, "0o600"), path
    assert procfs.read_stat(secret["pid"], owner=True).uid == uid  # type: ignore[union-attr]


def test_another_user_cannot_see_or_touch_an_instance(shared, secret):
    pid, starttime = secret["pid"], secret["starttime"]
    result = as_user(USER_B, shared, f"""
import json, os, signal
from instancelib import InstanceRegistry, InstanceRecord, NotFound, PermissionDenied
out = {{}}
reg = InstanceRegistry()
out["list"] = [i.name for i in reg.list()]
try:
    reg.get("secret"); out["get"] = "found"
except NotFound:
    out["get"] = "NotFound"
try:
    InstanceRegistry(user="{USER_A}"); out["user"] = "opened"
except PermissionDenied:
    out["user"] = "PermissionDenied"
# B knows A's PID: forge a record of it in B's own registry
reg.ensure_dirs()
forged = InstanceRecord(name="stolen", state="running", pid={pid}, starttime={starttime},
                        uid=os.geteuid())
reg._write(forged)
out["forged_list"] = [i.name for i in reg.list()]
out["forged_left"] = reg.record_path("stolen").exists()
try:
    reg.get("stolen"); out["forged_get"] = "found"
except NotFound:
    out["forged_get"] = "NotFound"
try:
    os.kill({pid}, signal.SIGKILL); out["kill"] = "killed"
except PermissionError:
    out["kill"] = "EPERM"
print(json.dumps(out))
""")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "list": [], "get": "NotFound", "user": "PermissionDenied", "forged_list": [],
        "forged_left": False, "forged_get": "NotFound", "kill": "EPERM",
    }
    assert procfs.is_alive(pid, starttime)


def test_another_user_cannot_act_through_a_copied_record(shared, secret):
    """B's copy of A's record (same PID, start time and A's UID) is not B's instance."""
    record = (InstanceRegistry(user=USER_A).record_path("secret")).read_text()
    result = as_user(USER_B, shared, f"""
from instancelib import InstanceRegistry
from instancelib.instance import Instance
from instancelib.registry import InstanceRecord
import json
reg = InstanceRegistry()
reg.ensure_dirs()
reg.record_path("secret").write_text({record!r})
print(json.dumps([i.name for i in reg.list()]))
# Even handed an Instance built from A's record, B cannot signal or enter it.
instance = Instance._from_record(InstanceRecord.from_json(json.loads({record!r})), reg)
outcome = []
for action in (lambda: instance.kill(9), lambda: instance.exec(["true"]), instance.stop):
    try:
        action(); outcome.append("done")
    except Exception as err:
        outcome.append(type(err).__name__)
print(json.dumps(outcome))
""")
    assert result.returncode == 0, result.stderr
    listed, outcome = result.stdout.splitlines()
    assert json.loads(listed) == []
    assert json.loads(outcome) == ["PermissionDenied", "PermissionDenied", "PermissionDenied"]
    assert procfs.is_alive(secret["pid"], secret["starttime"])


def test_another_user_is_refused_by_the_cli(shared, secret):
    assert cli_as(USER_B, shared, "instance", "list").stdout.count("\n") == 1  # header only
    for args in (("exec", "instance://secret", "true"), ("run", "instance://secret"),
                 ("instance", "stop", "secret"), ("instance", "list", "-u", USER_A),
                 ("instance", "stop", "-u", USER_A, "--all"),
                 ("instance", "stats", "--no-stream", "secret"),
                 ("instance", "stats", "--no-stream", "-u", USER_A, "secret")):
        result = cli_as(USER_B, shared, *args)
        assert result.returncode == 255, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("FATAL:"), args
    assert "only root" in cli_as(USER_B, shared, "instance", "list", "-u", USER_A).stderr
    assert procfs.is_alive(secret["pid"], secret["starttime"])


def test_root_acts_on_a_users_instances_only_when_asked(shared, secret, tmp_path):
    own = InstanceRegistry(tmp_path / "root-registry")
    assert own.list() == []
    with pytest.raises(NotFound):
        InstanceRegistry().get("secret")
    theirs = InstanceRegistry(user=USER_A)
    assert [i.name for i in theirs.list()] == ["secret"]
    env = {k: v for k, v in os.environ.items() if k != "INSTANCELIB_HOME"}
    listed = subprocess.run(["python3", "-m", "instancelib", "instance", "list", "-u", USER_A],
                            capture_output=True, text=True, env=env, check=False, timeout=60)
    assert "secret" in listed.stdout and str(secret["pid"]) in listed.stdout
    stats = subprocess.run(["python3", "-m", "instancelib", "instance", "stats", "--no-stream",
                            "--json", "-u", USER_A, "secret"], capture_output=True, text=True,
                           env=env, check=False, timeout=60)
    assert stats.returncode == 0, stats.stderr
    reading = json.loads(stats.stdout)
    # Without a delegated subtree (as here) the user's instance has no cgroup: the figures
    # come from its processes; with one, from its cgroup v2.
    assert reading["name"] == "secret" and reading["pids"] >= 2
    assert reading["source"] in ("processes", "cgroup v2")
    stopped = subprocess.run(["python3", "-m", "instancelib", "instance", "stop", "-u", USER_A,
                              "secret"], capture_output=True, text=True, env=env, check=False,
                             timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert not procfs.is_alive(secret["pid"], secret["starttime"])


def test_root_refuses_a_users_registry_used_as_its_own(shared, secret, monkeypatch):
    monkeypatch.setenv("INSTANCELIB_HOME", str(Path(pwd.getpwnam(USER_A).pw_dir) / ".instancelib"))
    with pytest.raises(PermissionDenied):
        InstanceRegistry().list()


def test_root_never_trusts_a_record_naming_a_users_process(shared, secret, tmp_path):
    registry = InstanceRegistry(tmp_path / "root-registry")
    registry.ensure_dirs()
    registry._write(InstanceRecord(name="hijack", state="running", pid=secret["pid"],
                                   starttime=secret["starttime"], uid=0))
    assert registry.list() == []
    assert not registry.record_path("hijack").exists()
    assert procfs.is_alive(secret["pid"], secret["starttime"])


def test_users_get_their_own_ids_and_fakeroot_maps_their_range(shared):
    result = as_user(USER_A, shared, """
from instancelib import Instance, Image
plain = Instance.start(Image(IMAGE), "ids")
print(plain.exec(["id", "-u"]).stdout.strip())
plain.stop()
root = Instance.start(Image(IMAGE), "fake", fakeroot=True, writable_tmpfs=True)
print(root.exec(["sh", "-c", "id -u; touch /f && chown 1000:1000 /f && stat -c %u /f"]).stdout)
root.stop()
""")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines == [str(pwd.getpwnam(USER_A).pw_uid), "0", "1000"]


def test_user_cannot_open_another_users_registry_via_instancelib_home(shared, secret):
    home_a = Path(pwd.getpwnam(USER_A).pw_dir) / ".instancelib"
    result = as_user(USER_B, shared, f"""
import os
os.environ["INSTANCELIB_HOME"] = {str(home_a)!r}
from instancelib import InstanceRegistry, PermissionDenied, RegistryError
try:
    InstanceRegistry().list(); print("listed")
except (PermissionDenied, RegistryError) as err:
    print(type(err).__name__)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("PermissionDenied", "RegistryError")


def test_fakeroot_without_a_range_maps_root_alone_and_says_so(shared):
    result = as_user(USER_A, shared, """
from instancelib import Instance, Image
from instancelib.linux import userns
userns._subordinate_range = lambda *args: None  # as for a user without /etc/subuid lines
instance = Instance.start(Image(IMAGE), "single", fakeroot=True, writable_tmpfs=True)
print(instance.exec(["cat", "/proc/self/uid_map"]).stdout.split())
print(instance.exec(["sh", "-c", "touch /f; chown 1000 /f"]).returncode)
print("\\n".join(instance.logs(stderr=True)))
instance.stop()
""")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(["0", str(pwd.getpwnam(USER_A).pw_uid), "1"])
    assert lines[1] != "0"  # chown to an unmapped ID fails
    assert "fakeroot without a range" in result.stdout
    assert "fakeroot without a range" in result.stderr  # the caller's warning
