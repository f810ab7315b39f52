"""What no caller, record or path may make instancelib do (run as root and as a user)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from instancelib import (
    Instance,
    InstanceError,
    InstanceRecord,
    InstanceRegistry,
    NotFound,
    PermissionDenied,
    RegistryError,
    StartError,
    Unsupported,
)
from instancelib.linux import procfs
from instancelib.linux.userns import has_host_root
from instancelib.verbosity import VERBOSE

SLEEPER = "#!/bin/sh\nexec sleep 1000\n"


# -- the registry's directories ---------------------------------------------------------------


def test_registry_and_logs_are_private(make_image, start, registry):
    instance = start(make_image(startscript=SLEEPER), "private")
    for directory in (registry.root, registry.root / "instances", registry.instances_dir,
                      registry.root / "logs", registry.logs_dir):
        assert oct(directory.stat().st_mode & 0o777) == "0o700", directory
    for path in (registry.record_path("private"), registry.lock_path("private"),
                 instance.stdout_path, instance.stderr_path):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


def test_symlinked_registry_is_refused(make_image, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    registry = InstanceRegistry(tmp_path / "link")
    with pytest.raises(RegistryError, match="symlink"):
        Instance.start(make_image(), "x", registry=registry)
    with pytest.raises(RegistryError, match="symlink"):
        registry.list()
    assert list(real.iterdir()) == []


def test_registry_subdirectory_symlink_is_refused(make_image, tmp_path):
    root = tmp_path / "reg"
    (root / "instances").mkdir(parents=True, mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    registry = InstanceRegistry(root)
    (root / "instances" / registry.host).symlink_to(elsewhere)
    with pytest.raises(RegistryError, match="symlink"):
        Instance.start(make_image(), "x", registry=registry)
    assert list(elsewhere.iterdir()) == []


def test_registry_owned_by_someone_else_is_refused(make_image, tmp_path):
    if has_host_root():
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
    else:
        foreign = tmp_path.parents[len(tmp_path.parents) - 1]  # "/": root's
    registry = InstanceRegistry(foreign)
    with pytest.raises(PermissionDenied, match="belongs to UID"):
        registry.list()
    with pytest.raises(PermissionDenied):
        Instance.start(make_image(), "x", registry=registry)


def test_registry_writable_by_others_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RegistryError, match="writable by others"):
        InstanceRegistry(shared).list()


def test_another_users_registry_needs_root():
    other = "nobody"
    if has_host_root():
        assert InstanceRegistry(user=other).owner_uid == 65534
    else:
        with pytest.raises(PermissionDenied, match="only root"):
            InstanceRegistry(user=other)


# -- log and pid files --------------------------------------------------------------------------


def test_log_file_symlink_is_not_followed(make_image, start, registry, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    registry.ensure_dirs()
    registry.log_paths("logged")[1].symlink_to(victim)
    with pytest.raises(StartError, match="log file"):
        start(make_image(startscript="#!/bin/sh\necho written >&2\nexec sleep 1000\n"),
              "logged")
    assert victim.read_text() == "keep"
    assert registry.list() == []


def test_log_paths_come_from_the_registry_not_the_record(make_image, start, registry,
                                                         tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("not for the logs\n")
    instance = start(make_image(startscript="#!/bin/sh\necho real-log\nexec sleep 1000\n"),
                     "paths")
    record = registry._read("paths")
    assert record is not None
    registry._write(attrs.evolve(record, log_out=str(secret), log_err=str(secret)))
    forged = registry.get("paths")
    assert forged.stdout_path == registry.logs_dir / "paths.out"
    time.sleep(0.2)
    assert "not for the logs" not in "\n".join(forged.logs())
    assert instance.is_running()


def test_a_fifo_at_the_pid_files_name_is_replaced_not_opened(make_image, start, tmp_path):
    fifo = tmp_path / "web.pid"
    os.mkfifo(fifo)
    began = time.monotonic()
    instance = start(make_image(startscript=SLEEPER), "fifo", pid_file=fifo, timeout=5)
    assert time.monotonic() - began < 5
    assert fifo.read_text() == f"{instance.pid}\n"


def test_a_pid_file_in_a_directory_others_may_write_is_refused(make_image, start, registry,
                                                              tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)   # anybody could swap the name: no
    with pytest.raises(StartError, match="writable by others"):
        start(make_image(), "open", pid_file=open_dir / "x.pid")
    assert registry.list() == [] and list(open_dir.iterdir()) == []
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)    # like /tmp: nobody can replace what is ours
    instance = start(make_image(), "sticky", pid_file=sticky / "x.pid")
    assert (sticky / "x.pid").read_text() == f"{instance.pid}\n"


def test_a_pid_file_through_a_link_of_our_own_is_written(make_image, start, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "var-run").symlink_to("run")   # as /var/run -> /run
    instance = start(make_image(), "linked", pid_file=tmp_path / "var-run" / "x.pid")
    assert (tmp_path / "run" / "x.pid").read_text() == f"{instance.pid}\n"


def test_a_pid_file_in_a_missing_directory_fails_before_anything_starts(make_image, start,
                                                                        registry, tmp_path):
    with pytest.raises(StartError, match="its directory does not exist"):
        start(make_image(), "nodir", pid_file=tmp_path / "missing" / "x.pid")
    assert registry.list() == []


def test_pid_1_does_not_carry_the_callers_environment(make_image, tmp_path):
    """A service running as root inside can read /proc/1/environ: nothing of ours is there."""
    image = make_image()
    code = (
        "import sys\nfrom instancelib import Image, Instance, InstanceRegistry\n"
        "registry = InstanceRegistry(sys.argv[2])\n"
        "for mode in ('plain', 'fakeroot'):\n"
        "    i = Instance.start(Image(sys.argv[1]), mode, registry=registry, cleanenv=True,\n"
        "                       fakeroot=mode == 'fakeroot')\n"
        "    print(i.exec(['cat', '/proc/1/environ']).stdout)\n"
        "    i.stop()\n"
    )
    result = subprocess.run([sys.executable, "-c", code, image.path, str(tmp_path / "reg")],
                            capture_output=True, text=True, timeout=60, check=False,
                            env=dict(os.environ, SECRET_TOKEN="hunter2-of-the-caller"),
                            cwd=str(Path(__file__).resolve().parents[1]))
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "LC_CTYPE=C.UTF-8" in result.stdout


# -- hostile records never make us signal or enter the wrong process -------------------------


@pytest.fixture
def bystander(tmp_path):  # type: ignore[no-untyped-def]
    """A process of ours that is no instance, but is named like one's PID 1 is not enough."""
    process = subprocess.Popen(["sleep", "1000"])
    try:
        stat = procfs.read_stat(process.pid)
        assert stat is not None
        yield process, stat.starttime
    finally:
        process.kill()
        process.wait()


def forge(registry, name: str, **fields: object) -> None:  # type: ignore[no-untyped-def]
    me = procfs.read_stat(os.getpid())
    assert me is not None
    record = InstanceRecord(name=name, state="running", pid=me.pid, starttime=me.starttime,
                            uid=os.geteuid())
    registry.ensure_dirs()
    registry._write(attrs.evolve(record, **fields))


def test_record_naming_pid_1_is_pruned(registry):
    stat = procfs.read_stat(1)
    assert stat is not None
    forge(registry, "init", pid=1, starttime=stat.starttime)
    assert registry.list() == []
    with pytest.raises(NotFound):
        registry.get("init")
    assert not registry.record_path("init").exists()


def test_record_naming_a_process_that_is_no_instance_is_pruned(registry, bystander):
    process, starttime = bystander
    forge(registry, "bystander", pid=process.pid, starttime=starttime)
    assert registry.list() == []
    with pytest.raises(NotFound):
        registry.get("bystander")
    assert process.poll() is None


def test_a_record_is_rechecked_before_signals_and_setns(make_image, start, registry,
                                                        bystander):
    """Even an Instance obtained earlier re-checks identity before acting."""
    process, starttime = bystander
    instance = start(make_image(startscript=SLEEPER), "real")
    record = registry._read("real")
    assert record is not None
    twisted = Instance._from_record(attrs.evolve(record, pid=process.pid, starttime=starttime),
                                    registry)
    with pytest.raises(NotFound):
        twisted.kill(signal.SIGKILL)
    with pytest.raises(NotFound):
        twisted.exec(["true"])
    twisted.stop()  # nothing to stop: it is not an instance
    assert process.poll() is None
    assert instance.is_running()


def test_record_of_another_user_is_pruned(registry):
    stat = procfs.read_stat(os.getppid(), owner=True)
    assert stat is not None
    forge(registry, "foreign-uid", uid=os.geteuid() + 1)
    assert registry.list() == []


# -- what an instance inherits --------------------------------------------------------------


def test_exec_and_service_get_only_stdio_descriptors(make_image, start):
    instance = start(make_image(startscript=SLEEPER))
    listing = instance.exec(["ls", "/proc/self/fd"]).stdout.split()
    assert sorted(listing) == ["0", "1", "2", "3"]  # 3: the directory ls is reading
    (service,) = procfs.children_of(instance.pid)
    assert sorted(os.listdir(f"/proc/{service}/fd")) == ["0", "1", "2"]
    assert sorted(os.listdir(f"/proc/{instance.pid}/fd")) != []  # PID 1's own are its own


def test_internal_variables_do_not_reach_the_instance(make_image, start, monkeypatch):
    monkeypatch.setenv("INSTANCELIB_DEBUG", "")
    monkeypatch.setenv("INSTANCELIB_SECRET", "x")
    instance = start(make_image())
    names = [line.split("=", 1)[0] for line in instance.exec(["env"]).stdout.splitlines()]
    assert not [n for n in names if n.startswith("INSTANCELIB")]


# -- user namespaces forbidden --------------------------------------------------------------


def test_forbidden_user_namespaces_are_unsupported_with_the_sysctl_named(make_image, tmp_path):
    """Inside ``unshare -Ur`` a nested user namespace can be forbidden (per-namespace sysctl)."""
    image = make_image()
    code = (
        "import sys\n"
        "with open('/proc/sys/user/max_user_namespaces', 'w') as f: f.write('0')\n"
        "from instancelib import Instance, InstanceRegistry, Unsupported\n"
        f"reg = InstanceRegistry({str(tmp_path / 'reg')!r})\n"
        "try:\n"
        f"    Instance.start({image.path!r}, 'x', registry=reg)\n"
        "except Unsupported as err:\n"
        "    print('UNSUPPORTED', err); sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    result = subprocess.run([shutil.which("unshare") or "unshare", "-Ur", sys.executable, "-c",
                             code], capture_output=True, text=True, timeout=60, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "UNSUPPORTED" in result.stdout
    assert "user.max_user_namespaces" in result.stdout


def test_unsupported_is_an_instance_error():
    assert issubclass(Unsupported, InstanceError)
    assert json.dumps(str(Unsupported("x")))


def test_fakeroot_is_root_inside_for_everyone(make_image, start):
    """For an ordinary user fakeroot maps them to root; for root it changes nothing."""
    instance = start(make_image(), fakeroot=True, writable_tmpfs=True)
    assert instance.exec(["id", "-u"]).stdout == "0\n"
    assert instance.exec(["sh", "-c", "touch /owned && chown 0:0 /owned"]).ok


def test_fallbacks_are_noted_in_the_log(make_image, start, caplog):
    caplog.set_level(VERBOSE, logger="instancelib")  # routine notes: VERBOSE (-v)
    instance = start(make_image())
    noted = [r.getMessage() for r in caplog.records if "bound instead" in r.getMessage()]
    if has_host_root():
        assert noted == []  # a fresh sysfs and procfs: nothing to note
    else:
        assert any("the host's /sys is bound instead" in note for note in noted)
    assert list(instance.logs(stderr=True)) == []  # the service's log stays the service's
