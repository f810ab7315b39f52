"""Instance lifecycle against the real kernel: namespaces, PID 1, scripts, stop."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
import pytest

from instancelib import (
    ExecError,
    Image,
    ImageError,
    Instance,
    InstanceRegistry,
    InstanceStatus,
    InvalidArgument,
    InvalidName,
    NameConflict,
    NotFound,
    StartError,
)
from instancelib.linux import client, procfs, wire
from tests.helpers import wait_for

SLEEPER = "#!/bin/sh\nexec sleep 1000\n"


def instance_pids(instance: Instance) -> list[int]:
    """Host PIDs of every process in the instance's PID namespace."""
    target = os.readlink(f"/proc/{instance.pid}/ns/pid")
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- start, list, exec, stop ------------------------------------------------------------------


def test_start_exec_list_stop(make_image, start, registry):
    image = make_image(startscript=SLEEPER)
    instance = start(image, "web")
    assert instance.is_running()
    assert instance.status is InstanceStatus.RUNNING
    assert [i.name for i in registry.list()] == ["web"]
    assert registry.get("web") == instance
    result = instance.exec(["echo", "hello"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "hello\n", "")
    instance.stop()
    assert not instance.is_running()
    assert instance.status is InstanceStatus.STOPPED
    assert registry.list() == []
    with pytest.raises(NotFound):
        registry.get("web")


def test_instance_survives_start_and_reports_identity(image, start, registry):
    instance = start(image, "idle")
    stat = procfs.read_stat(instance.pid)
    assert stat is not None and stat.running
    assert instance.image == image
    assert abs(instance.started_at.timestamp() - time.time()) < 60
    assert repr(instance).endswith(f"running, pid {instance.pid}>")
    instance.stop()
    assert repr(instance).endswith("stopped>")


def test_pid_namespace_init_is_pid_1(image, start):
    instance = start(image)
    result = instance.exec(["cat", "/proc/1/cmdline"])
    assert result.stdout.startswith("instancelib-init:")
    ps = instance.exec(["ps"]).stdout.splitlines()
    assert ps[1].split()[0] == "1"
    assert "instancelib-init" in ps[1]
    own_pid = instance.exec(["sh", "-c", "echo $$"]).stdout.strip()
    assert 1 < int(own_pid) < 100


def test_new_uts_and_ipc_namespaces(image, start):
    instance = start(image)
    for kind in ("uts", "ipc", "mnt", "pid"):
        assert os.readlink(f"/proc/{instance.pid}/ns/{kind}") != os.readlink(
            f"/proc/self/ns/{kind}"), kind


def test_idle_instance_without_startscript(image, start):
    instance = start(image)
    assert procfs.children_of(instance.pid) == []
    assert instance.exec(["true"]).returncode == 0


def test_startscript_runs_with_args(make_image, start, registry):
    image = make_image(startscript='#!/bin/sh\necho "args:$#:$1:$2"\nexec sleep 1000\n')
    instance = start(image, args=["one", "two words"])
    wait_for(lambda: "args:2:one:two words" in instance.stdout_path.read_text())


def test_run_true_runs_runscript(make_image, start):
    image = make_image(startscript="#!/bin/sh\necho start\nexec sleep 1000\n",
                       runscript="#!/bin/sh\necho run $1\nexec sleep 1000\n")
    instance = start(image, run=True, args=["x"])
    wait_for(lambda: "run x" in instance.stdout_path.read_text())
    assert "start" not in instance.stdout_path.read_text()


def test_run_without_runscript_runs_sh_with_args(image, start):
    instance = start(image, run=True, args=["-c", "echo from-sh"])
    wait_for(lambda: "from-sh" in instance.stdout_path.read_text())


def test_non_executable_startscript_runs_through_sh(make_image, start, tmp_path):
    image = make_image(startscript="echo via-sh\nexec sleep 1000\n")
    os.chmod(Path(image.path) / ".singularity.d/startscript", 0o644)
    instance = start(image)
    wait_for(lambda: "via-sh" in instance.stdout_path.read_text())


def test_instance_stays_up_idle_after_service_exits(make_image, start):
    instance = start(make_image(startscript="#!/bin/sh\necho done\nexit 7\n"))
    wait_for(lambda: "done" in instance.stdout_path.read_text())
    wait_for(lambda: not procfs.children_of(instance.pid))
    assert instance.is_running()
    assert instance.exec(["true"]).ok


def test_instance_outlives_the_starting_process(image, registry, tmp_path):
    code = (
        "import sys; from instancelib import Instance, InstanceRegistry, Image\n"
        f"Instance.start(Image({image.path!r}), 'child', "
        f"registry=InstanceRegistry({str(registry.root)!r}))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    instance = registry.get("child")
    assert instance.is_running()
    assert instance.exec(["true"]).ok


# -- PID 1 duties -------------------------------------------------------------------------------


def test_init_reaps_orphaned_zombies(make_image, start):
    script = "#!/bin/sh\nfor i in 1 2 3 4 5; do sh -c 'sleep 0.05 &'; done\nexec sleep 1000\n"
    instance = start(make_image(startscript=script))
    time.sleep(0.5)

    def zombies() -> list[int]:
        found = []
        for pid in instance_pids(instance):
            stat = procfs.read_stat(pid)
            if stat is not None and stat.state == "Z":
                found.append(pid)
        return found

    assert wait_for(lambda: not zombies() or None, timeout=3) is None or not zombies()
    assert len(instance_pids(instance)) == 2  # init and the sleep


def test_hup_is_forwarded_to_the_service(make_image, start, tmp_path):
    script = ("#!/bin/sh\ntrap 'echo got-hup' HUP\n"
              "while true; do sleep 0.05; done\n")
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    instance.kill(signal.SIGHUP)
    wait_for(lambda: "got-hup" in instance.stdout_path.read_text())
    assert instance.is_running()


def test_stop_forwards_sigint_and_waits_for_the_service(make_image, start, registry):
    script = ("#!/bin/sh\ntrap 'echo stopping; exit 0' INT\n"
              "while true; do sleep 0.05; done\n")
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    pids = instance_pids(instance)
    instance.stop(timeout=5)
    assert "stopping" in instance.stdout_path.read_text()
    assert not any(procfs.read_stat(p) and procfs.read_stat(p).running for p in pids)
    assert registry.list() == []


def test_stop_returns_when_the_service_exits_despite_background_jobs(make_image, start):
    """Background jobs of a non-interactive shell ignore SIGINT; they must not hold the stop."""
    script = "#!/bin/sh\ntrap 'exit 0' INT TERM\nsleep 1000 &\nwait\n"
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    pids = instance_pids(instance)
    assert len(pids) == 3  # init, sh, sleep
    began = time.monotonic()
    instance.stop(timeout=10)
    assert time.monotonic() - began < 2
    for pid in pids:
        stat = procfs.read_stat(pid)
        assert stat is None or not stat.running


def test_stop_waits_for_a_daemonised_service(make_image, start):
    """A start script that forks a daemon and exits: stop waits for the daemon."""
    # (A background job starts with SIGINT ignored, and a shell cannot trap a
    # signal ignored on entry: the daemon is stopped with SIGTERM.)
    script = ("#!/bin/sh\n(trap 'sleep 0.3; echo daemon-done; exit 0' TERM; "
              "while :; do sleep 0.05; done) &\nexit 0\n")
    instance = start(make_image(startscript=script))
    time.sleep(0.3)
    began = time.monotonic()
    instance.stop(signal=signal.SIGTERM, timeout=10)
    assert 0.3 <= time.monotonic() - began < 5
    assert "daemon-done" in instance.stdout_path.read_text()


def test_stop_kills_a_service_that_ignores_sigint(make_image, start):
    script = "#!/bin/sh\ntrap '' INT TERM\nwhile true; do sleep 0.05; done\n"
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    pids = instance_pids(instance)
    began = time.monotonic()
    instance.stop(timeout=0.5)
    elapsed = time.monotonic() - began
    assert 0.5 <= elapsed < 5
    for pid in pids:
        stat = procfs.read_stat(pid)
        assert stat is None or not stat.running


def test_stop_with_force_kills_at_once(make_image, start):
    instance = start(make_image(startscript="#!/bin/sh\ntrap '' INT TERM\nexec sleep 1000\n"))
    began = time.monotonic()
    instance.stop(force=True, timeout=30)
    assert time.monotonic() - began < 2
    assert not instance.is_running()


def test_stop_with_custom_signal(make_image, start):
    script = "#!/bin/sh\ntrap 'echo term; exit 0' TERM\nwhile true; do sleep 0.05; done\n"
    instance = start(make_image(startscript=script))
    time.sleep(0.2)
    instance.stop(signal=signal.SIGTERM)
    assert "term" in instance.stdout_path.read_text()


def test_stop_is_idempotent(image, start):
    instance = start(image)
    instance.stop()
    instance.stop()
    assert not instance.is_running()


def test_stop_also_ends_exec_processes(image, start):
    instance = start(image)
    process = instance.popen(["sleep", "1000"])
    instance.stop()
    # SIGINT is forwarded to every process of the instance, exec'd ones included.
    assert process.wait(timeout=5) == -signal.SIGINT


def test_wait_returns_when_the_instance_ends(image, start):
    instance = start(image)
    with pytest.raises(TimeoutError):
        instance.wait(timeout=0.05)
    threading.Timer(0.2, instance.kill, args=(signal.SIGTERM,)).start()
    instance.wait(timeout=10)
    assert not instance.is_running()


def test_context_manager_stops_the_instance(image, registry):
    with Instance.start(image, "ctx", registry=registry) as instance:
        assert instance.is_running()
    assert not instance.is_running()
    assert registry.list() == []


def test_instance_killed_from_outside_is_pruned_and_name_reusable(image, start, registry):
    instance = start(image, "victim")
    os.kill(instance.pid, signal.SIGKILL)
    wait_for(lambda: not instance.is_running())
    assert registry.list() == []
    assert not registry.record_path("victim").exists()
    again = start(image, "victim")
    assert again.is_running() and again.pid != instance.pid


def test_reused_pid_is_not_mistaken_for_the_instance(image, start, registry):
    """A record whose PID now belongs to another process (other start time) is dead."""
    instance = start(image, "real")
    record = registry._read("real")
    assert record is not None
    forged = attrs.evolve(record, name="forged", pid=os.getpid())
    registry._write(forged)
    assert [i.name for i in registry.list()] == ["real"]
    assert not registry.record_path("forged").exists()
    instance.stop()


# -- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "é", "x" * 129, "a:b", "-\n"])
def test_invalid_names_are_refused(image, start, registry, name):
    with pytest.raises(InvalidName):
        start(image, name)
    assert registry.list() == []


@pytest.mark.parametrize("name", ["a", "web-1", "A.b_c", "..x", "-", "x" * 128])
def test_valid_names_are_accepted(image, start, registry, name):
    assert start(image, name).name == name
    assert [i.name for i in registry.list()] == [name]


def test_second_start_of_a_running_name_conflicts(image, start):
    first = start(image, "dup")
    with pytest.raises(NameConflict):
        start(image, "dup")
    assert first.is_running()


def test_concurrent_starts_of_one_name_exactly_one_wins(image, registry):
    results: list[object] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            results.append(Instance.start(image, "race", registry=registry))
        except NameConflict as err:
            results.append(err)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if isinstance(r, Instance)]
    assert len(winners) == 1
    assert sum(isinstance(r, NameConflict) for r in results) == 7
    assert [i.name for i in registry.list()] == ["race"]


def test_concurrent_starts_from_processes_exactly_one_wins(image, registry, tmp_path):
    code = (
        "import sys; from instancelib import *\n"
        f"reg = InstanceRegistry({str(registry.root)!r})\n"
        "try:\n"
        f"    Instance.start(Image({image.path!r}), 'prace', registry=reg); print('won')\n"
        "except NameConflict: print('lost')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["lost", "lost", "lost", "won"]


# -- callers with threads and event loops -----------------------------------------------------


def test_start_from_a_thread_of_a_multithreaded_process(image, registry):
    stop = threading.Event()
    busy = [threading.Thread(target=stop.wait) for _ in range(4)]
    for thread in busy:
        thread.start()
    box: dict[str, object] = {}

    def worker() -> None:
        instance = Instance.start(image, "threaded", registry=registry)
        box["result"] = instance.exec(["echo", "ok"]).stdout
        instance.stop()

    try:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(60)
    finally:
        stop.set()
        for t in busy:
            t.join()
    assert box["result"] == "ok\n"


def test_start_from_inside_a_running_event_loop(image, registry):
    async def main() -> str:
        instance = Instance.start(image, "looped", registry=registry)
        try:
            direct = instance.exec(["echo", "direct"]).stdout
            threaded = await asyncio.to_thread(lambda: instance.exec(["echo", "thread"]).stdout)
            return direct + threaded
        finally:
            instance.stop()

    assert asyncio.run(main()) == "direct\nthread\n"


# -- environment --------------------------------------------------------------------------------


def test_environment_order_image_scripts_then_env(make_image, start, monkeypatch):
    monkeypatch.setenv("HOST_ONLY", "host")
    monkeypatch.setenv("OVERRIDDEN", "host")
    image = make_image(environment={
        "10-first.sh": "export OVERRIDDEN=image10 FROM_IMAGE=first\n",
        "90-second.sh": "export OVERRIDDEN=image90 CHAINED=\"$FROM_IMAGE-second\"\n",
    })
    instance = start(image, env={"FROM_USER": "user", "CHAINED": "user-wins"})
    env = dict(line.split("=", 1) for line in instance.exec(["env"]).stdout.splitlines())
    assert env["HOST_ONLY"] == "host"
    assert env["OVERRIDDEN"] == "image90"
    assert env["FROM_IMAGE"] == "first"
    assert env["CHAINED"] == "user-wins"
    assert env["FROM_USER"] == "user"
    assert env["APPTAINER_INSTANCE"] == env["SINGULARITY_INSTANCE"] == "test"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "SHLVL" not in env or env["SHLVL"] != "1" or True


def test_startscript_sees_the_same_environment(make_image, start):
    image = make_image(startscript="#!/bin/sh\necho \"V=$V U=$U\"\nexec sleep 1000\n",
                       environment={"90-environment.sh": "export V=image\n"})
    instance = start(image, env={"U": "user"})
    wait_for(lambda: "V=image U=user" in instance.stdout_path.read_text())


def test_cleanenv_drops_host_variables(image, start, monkeypatch):
    monkeypatch.setenv("HOST_ONLY", "host")
    instance = start(image, cleanenv=True, env={"KEPT": "1"})
    env = dict(line.split("=", 1) for line in instance.exec(["env"]).stdout.splitlines())
    assert "HOST_ONLY" not in env
    assert env["KEPT"] == "1"
    assert env["LANG"] == "C"


def test_append_and_prepend_path(image, start):
    instance = start(image, env={"APPEND_PATH": "/end", "PREPEND_PATH": "/begin"})
    path = instance.exec(["sh", "-c", "echo $PATH"]).stdout.strip()
    assert path.startswith("/begin:") and path.endswith(":/end")


def test_exec_env_and_cwd(image, start):
    instance = start(image, env={"A": "start"})
    result = instance.exec(["sh", "-c", "echo $A $B; pwd"], env={"B": "exec"}, cwd="/etc")
    assert result.stdout == "start exec\n/etc\n"


def test_apptainerenv_prefix_sets_variables(image, start, monkeypatch):
    monkeypatch.setenv("APPTAINERENV_FROM_PREFIX", "yes")
    instance = start(image)
    assert instance.exec(["sh", "-c", "echo $FROM_PREFIX"]).stdout == "yes\n"


def test_bad_env_names_are_refused(image, start, registry):
    with pytest.raises(InvalidArgument):
        start(image, env={"1BAD": "x"})
    assert registry.list() == []


# -- filesystem ---------------------------------------------------------------------------------


def test_root_is_read_only_by_default(image, start):
    instance = start(image)
    result = instance.exec(["touch", "/newfile"])
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr


def test_writable_tmpfs_allows_writes_that_vanish_after_stop(image, start):
    instance = start(image, writable_tmpfs=True)
    assert instance.exec(["sh", "-c", "echo data > /newfile && cat /newfile"]).stdout == "data\n"
    assert not (Path(image.path) / "newfile").exists()
    instance.stop()
    again = start(image, writable_tmpfs=True)
    assert again.exec(["test", "-e", "/newfile"]).returncode == 1


def test_bind_read_write_and_read_only(image, start, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from host")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    instance = start(image, binds=[f"{shared}:/data", f"{readonly}:/ro:ro"])
    assert instance.exec(["cat", "/data/in.txt"]).stdout == "from host"
    assert instance.exec(["sh", "-c", "echo out > /data/out.txt"]).ok
    assert (shared / "out.txt").read_text() == "out\n"
    denied = instance.exec(["touch", "/ro/x"])
    assert denied.returncode != 0 and "Read-only" in denied.stderr


def test_bind_destination_missing_from_image_is_created(image, start, tmp_path):
    source = tmp_path / "deep"
    source.mkdir()
    (source / "f").write_text("x")
    instance = start(image, binds=[f"{source}:/not/in/image"])
    assert instance.exec(["cat", "/not/in/image/f"]).stdout == "x"
    assert not (Path(image.path) / "not").exists()
    # Directories the skeleton supplies keep the image's ownership and mode.
    assert instance.exec(["stat", "-c", "%a", "/tmp"]).stdout.strip() == "1777"


def test_bind_of_a_single_file(image, start, tmp_path):
    source = tmp_path / "config.txt"
    source.write_text("cfg")
    instance = start(image, binds=[f"{source}:/etc/app.conf:ro"])
    assert instance.exec(["cat", "/etc/app.conf"]).stdout == "cfg"


def test_missing_bind_source_fails_before_anything_starts(image, start, registry, tmp_path):
    with pytest.raises(StartError, match="does not exist"):
        start(image, binds=[f"{tmp_path}/nope:/data"])
    assert registry.list() == []
    assert not registry.record_path("test").exists()


def test_malformed_bind_spec_is_refused(image, start):
    with pytest.raises(InvalidArgument):
        start(image, binds=["/a:/b:rx"])


def test_symlinked_mount_point_cannot_escape_the_image(make_image, start, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    image = make_image()
    os.symlink(str(outside), Path(image.path) / "escape")
    source = tmp_path / "src"
    source.mkdir()
    (source / "marker").write_text("m")
    instance = start(image, binds=[f"{source}:/escape"])
    # The link resolves inside the image (to a path the image lacks), never to the host dir.
    assert instance.exec(["cat", "/escape/marker"]).stdout == "m"
    assert list(outside.iterdir()) == []


def test_default_binds_home_tmp_and_etc_files(image, start, tmp_path):
    marker = Path("/tmp") / f"instancelib-test-{os.getpid()}"
    marker.write_text("shared tmp")
    try:
        instance = start(image)
        assert instance.exec(["cat", str(marker)]).stdout == "shared tmp"
        assert instance.exec(["test", "-d", os.path.expanduser("~")]).ok
        hosts = instance.exec(["cat", "/etc/hosts"]).stdout
        assert hosts == Path("/etc/hosts").read_text()
    finally:
        marker.unlink()


def test_contain_gives_private_tmp_home_and_minimal_dev(image, start):
    marker = Path("/tmp") / f"instancelib-contain-{os.getpid()}"
    marker.write_text("x")
    try:
        instance = start(image, contain=True)
        assert instance.exec(["ls", "-A", "/tmp"]).stdout == ""
        assert instance.exec(["ls", "-A", os.path.expanduser("~")]).stdout == ""
        devices = set(instance.exec(["ls", "/dev"]).stdout.split())
        assert {"null", "zero", "random", "urandom", "tty", "pts", "shm"} <= devices
        assert not any(name.startswith(("vd", "sd", "nvme")) for name in devices)
        assert instance.exec(["sh", "-c", "echo ok > /dev/null && echo fine"]).stdout == "fine\n"
    finally:
        marker.unlink()


def test_proc_and_sys_are_mounted(image, start):
    instance = start(image)
    assert instance.exec(["test", "-e", "/proc/self/status"]).ok
    assert instance.exec(["test", "-d", "/sys/kernel"]).ok


def test_hostname(image, start):
    assert start(image, "h1", hostname="inside").exec(["hostname"]).stdout == "inside\n"
    assert start(image, "h2").exec(["hostname"]).stdout.strip() == socket.gethostname()
    with pytest.raises(InvalidArgument):
        start(image, "h3", hostname="bad host")


# -- start failures leave nothing behind --------------------------------------------------------


def test_startscript_with_missing_interpreter_is_a_start_error(make_image, start, registry):
    image = make_image(startscript="#!/usr/bin/python9\nprint(1)\n")
    with pytest.raises(StartError) as caught:
        start(image, "broken")
    assert "python9" in str(caught.value)
    assert caught.value.name == "broken"
    assert registry.list() == []
    assert not registry.record_path("broken").exists()


def test_image_without_bin_sh_is_a_start_error(make_image, start, registry):
    image = make_image(startscript="echo no shebang\n")
    os.chmod(Path(image.path) / ".singularity.d/startscript", 0o644)
    os.unlink(Path(image.path) / "bin/sh")
    with pytest.raises(StartError, match="/bin/sh"):
        start(image, "nosh")
    assert registry.list() == []


def test_failing_env_script_is_a_start_error_with_its_output(make_image, start, registry):
    image = make_image(environment={"50-bad.sh": "echo env-script-broke >&2\nexit 3\n"})
    with pytest.raises(StartError) as caught:
        start(image)
    assert "env-script-broke" in (caught.value.detail or "")
    assert registry.list() == []


def test_failed_start_leaves_no_process(make_image, start):
    before = {p for p in os.listdir("/proc") if p.isdigit()}
    image = make_image(startscript="#!/nonexistent/interpreter\n")
    with pytest.raises(StartError):
        start(image)
    time.sleep(0.1)
    for pid in {p for p in os.listdir("/proc") if p.isdigit()} - before:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert not cmdline.startswith(b"instancelib-init"), pid


def test_timeout_must_be_positive(image, start):
    with pytest.raises(InvalidArgument):
        start(image, timeout=0)


def test_missing_image_is_an_image_error(start, tmp_path):
    with pytest.raises(ImageError):
        start(str(tmp_path / "nope"))


# -- exec ---------------------------------------------------------------------------------------


def test_exec_exit_status_stderr_and_input(image, start):
    instance = start(image)
    result = instance.exec(["sh", "-c", "cat; echo err >&2; exit 5"], input="piped")
    assert (result.returncode, result.stdout, result.stderr) == (5, "piped", "err\n")
    assert not result.ok


def test_exec_bytes_mode(image, start):
    result = start(image).exec(["printf", "\\377"], text=False)
    assert result.stdout == b"\xff"


def test_exec_of_a_missing_command_is_an_exec_error(image, start):
    instance = start(image)
    with pytest.raises(ExecError, match="not found"):
        instance.exec(["no-such-command"])
    with pytest.raises(ExecError):
        instance.exec(["/etc/passwd"])


def test_exec_in_a_missing_directory_is_an_exec_error(image, start):
    with pytest.raises(ExecError, match=r"working directory"):
        start(image).exec(["true"], cwd="/no/such/dir")


def test_exec_timeout_kills_the_command(image, start):
    instance = start(image)
    with pytest.raises(TimeoutError):
        instance.exec(["sleep", "100"], timeout=0.2)
    assert len(instance_pids(instance)) == 1


def test_exec_on_a_stopped_instance_is_not_found(image, start):
    instance = start(image)
    instance.stop()
    with pytest.raises(NotFound):
        instance.exec(["true"])


def test_exec_argv_validation(image, start):
    instance = start(image)
    with pytest.raises(InvalidArgument):
        instance.exec("echo hi")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        instance.exec([])


def test_popen_streams_output(image, start):
    instance = start(image)
    with instance.popen(["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.05; done"],
                        stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
    assert lines == [b"line1\n", b"line2\n", b"line3\n"]
    assert process.returncode == 0


def test_popen_signals_and_poll(image, start):
    instance = start(image)
    process = instance.popen(["sleep", "100"])
    assert process.poll() is None
    process.terminate()
    assert process.wait(timeout=5) == -signal.SIGTERM
    assert process.poll() == -signal.SIGTERM
    process.kill()  # no effect after it ended


def test_run_executes_the_runscript(make_image, start):
    image = make_image(runscript="#!/bin/sh\necho \"runscript $*\"\n")
    instance = start(image)
    assert instance.run(["a", "b"]).stdout == "runscript a b\n"


# -- logs and pid file --------------------------------------------------------------------------


def test_logs_capture_stdout_and_stderr(make_image, start, registry):
    image = make_image(startscript="#!/bin/sh\necho out1\necho err1 >&2\necho out2\n"
                                   "exec sleep 1000\n")
    instance = start(image, "logged")
    wait_for(lambda: "out2" in instance.stdout_path.read_text())
    assert instance.stdout_path == registry.logs_dir / "logged.out"
    assert list(instance.logs()) == ["out1", "out2"]
    assert list(instance.logs(stderr=True)) == ["err1"]
    assert list(instance.logs(tail=1)) == ["out2"]
    assert oct(instance.stdout_path.stat().st_mode & 0o777) == "0o600"


def test_logs_are_appended_across_restarts(make_image, start):
    image = make_image(startscript="#!/bin/sh\necho started\nexec sleep 1000\n")
    first = start(image, "again")
    wait_for(lambda: "started" in first.stdout_path.read_text())
    first.stop()
    second = start(image, "again")
    wait_for(lambda: second.stdout_path.read_text().count("started") == 2)


def test_logs_follow_ends_when_the_instance_ends(make_image, start):
    script = "#!/bin/sh\nwhile true; do echo tick; sleep 0.05; done\n"
    instance = start(make_image(startscript=script))
    seen: list[str] = []

    def reader() -> None:
        seen.extend(instance.logs(follow=True))

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.3)
    instance.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert seen.count("tick") >= 2


def test_pid_file(image, start, tmp_path):
    pid_file = tmp_path / "web.pid"
    instance = start(image, pid_file=pid_file)
    assert pid_file.read_text() == f"{instance.pid}\n"


def test_pid_file_is_not_written_through_a_symlink(image, start, registry, tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep")
    link = tmp_path / "link.pid"
    link.symlink_to(target)
    instance = start(image, pid_file=link)
    assert target.read_text() == "keep"
    assert not link.is_symlink() and link.read_text() == f"{instance.pid}\n"  # replaced


def test_instance_has_no_public_constructor():
    with pytest.raises(TypeError, match=r"Instance\.start"):
        Instance()


def test_registry_default_root_honours_instancelib_home(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCELIB_HOME", str(tmp_path / "home"))
    assert InstanceRegistry().root == tmp_path / "home"


def test_image_path_can_be_a_string(image, start):
    assert start(image.path).image == Image(image.path)


def _start_in_forked_child(image_path: str, root: str, queue) -> None:  # type: ignore[no-untyped-def]
    instance = Instance.start(Image(image_path), "forked", registry=InstanceRegistry(root))
    queue.put(instance.exec(["echo", "from-child"]).stdout)


def test_a_forked_caller_gets_its_own_fork_server(image, registry):
    Instance.start(image, "parent", registry=registry)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_start_in_forked_child,
                            args=(image.path, str(registry.root), queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == "from-child\n"
    assert sorted(i.name for i in registry.list()) == ["forked", "parent"]
    assert registry.get("parent").exec(["true"]).ok


def test_interrupted_request_retires_the_fork_server(image, registry, monkeypatch):
    first = client.get_forkserver()
    real_recv = wire.recv_message

    def interrupted(sock):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(wire, "recv_message", interrupted)
    with pytest.raises(KeyboardInterrupt):
        first.request({"op": "ping"})
    monkeypatch.setattr(wire, "recv_message", real_recv)
    assert not first.alive()
    instance = Instance.start(image, "after", registry=registry)
    assert client.get_forkserver() is not first
    assert instance.exec(["true"]).ok


def test_exec_when_the_caller_has_no_stdin(image, start):
    instance = start(image)
    saved = os.dup(0)
    os.close(0)
    try:
        result = instance.exec(["cat"])
        process = instance.popen(["cat"], stdout=subprocess.PIPE)
        out, _ = process.communicate(timeout=10)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert result.stdout == "" and out == b""
