"""Limits, stats, pause and stop through real cgroups.

These tests run wherever the suite runs: on this machine's hybrid hierarchy
(cgroup v1 controllers) as root, as an ordinary user without a delegated
cgroup (no cgroup: limits are refused, stats come from the processes), and,
from ``.ci/run``, as root in a pure cgroup v2 VM (``../shared/v2vm``).  Each
test asserts what the host it runs on must do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from instancelib import CgroupInfo, Limits, Stats, Unsupported
from instancelib.cgroups import tree
from instancelib.cgroups.resources import blkio_to_io_weight
from instancelib.errors import ExecError, InvalidArgument
from instancelib.linux.userns import has_host_root
from tests.helpers import instance_processes, our_cgroup_tops, our_cgroups, wait_for

pytestmark = pytest.mark.cgroups

HAS_CGROUP = has_host_root() or tree._v2_base(tree.detect()) is not None
# Each behaviour that depends on having a cgroup has two variants; the suite's two passes
# (root, and an ordinary user without a delegated subtree) run one each.
NEEDS_CGROUP = pytest.mark.skipif(
    not HAS_CGROUP, reason="needs a cgroup of the instance's own: root, or an ordinary user with "
                           "a delegated cgroup v2 subtree (the root pass and the v2 VM run it)")
NEEDS_NO_CGROUP = pytest.mark.skipif(
    HAS_CGROUP, reason="for an ordinary user without a delegated cgroup v2 subtree (the "
                       "unprivileged pass runs it)")
IDLE = "#!/bin/sh\nexec sleep 100000\n"


def _counter(info: CgroupInfo, controller: str, filename: str, key: str) -> int:
    """A ``key value`` line of a cgroup file, from the directory serving ``controller``."""
    directory = info.directory(controller)
    assert directory is not None, f"no {controller} directory in {info}"
    for line in Path(directory, filename).read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    raise AssertionError(f"{key} not in {directory}/{filename}")


def _oom_kills(info: CgroupInfo) -> int:
    v2 = info.controllers["memory"] == "v2"
    return _counter(info, "memory", "memory.events" if v2 else "memory.oom_control", "oom_kill")


def _nothing_left(registry, name: str, processes_before: set[int]) -> None:
    assert registry.records() == [] and not registry.record_path(name).exists()
    assert instance_processes() - processes_before == set()


@NEEDS_NO_CGROUP
def test_without_a_cgroup_stats_come_from_the_processes(make_image, start):
    instance = start(make_image(startscript=IDLE), "inside")
    info = instance.cgroup
    assert info is None  # an ordinary user without a delegated cgroup v2 subtree
    assert instance.stats().source == "processes"


@NEEDS_CGROUP
def test_an_instance_runs_in_its_cgroup(make_image, start):
    instance = start(make_image(startscript=IDLE), "inside")
    info = instance.cgroup
    assert info is not None
    own = Path(f"/proc/{instance.pid}/cgroup").read_text()
    assert f":{info.name}\n" in own
    # Commands run by exec join it too (as does everything PID 1 starts).
    assert f":{info.name}\n" in instance.exec(["cat", "/proc/self/cgroup"]).stdout
    for controller, version in info.controllers.items():
        assert version in ("v1", "v2")
        assert info.directory(controller) is not None
    hierarchies = tree.detect()
    if hierarchies.v2_mount and not hierarchies.v1_mounts:
        assert info.version == "v2"
    elif hierarchies.v1_mounts and hierarchies.v2_mount:
        assert info.version in ("hybrid", "v2")
    directories = set(info.v1.values()) | ({info.v2} if info.v2 else set())
    instance.stop()
    assert not any(os.path.exists(d) for d in directories)


@NEEDS_NO_CGROUP
def test_without_a_cgroup_there_is_nothing_to_join(make_image, start):
    assert tree.plan("late", None) is None
    assert start(make_image(startscript=IDLE), "late").cgroup is None


@NEEDS_CGROUP
def test_pid1_joins_a_cgroup_named_after_it_left_the_host_mounts(make_image, start, monkeypatch):
    # The spare PID 1 is normally born in its cgroup; when it was not (our
    # tree's top vanished meanwhile), PID 1 joins the cgroup the caller names
    # after it has pivoted into the image, through descriptors of the host's
    # cgroup mounts opened before.  Force that path: adopt ignores the spare's.
    spare_dirs: list[str] = []
    real_adopt = tree.adopt

    def adopt_without_spare(cgroup_plan, spare_leaf):
        if spare_leaf:
            spare_dirs.extend(cgroup_plan.info(spare_leaf).v1.values())
            spare_dirs.extend([cgroup_plan.info(spare_leaf).v2 or ""])
        return real_adopt(cgroup_plan, None)

    monkeypatch.setattr(tree, "adopt", adopt_without_spare)
    try:
        instance = start(make_image(startscript=IDLE), "late", limits=Limits(pids_limit=64))
        info = instance.cgroup
        assert info is not None and f".{os.getpid()}." in info.name  # the caller's, not a spare's
        assert f":{info.name}\n" in Path(f"/proc/{instance.pid}/cgroup").read_text()
        service = instance.exec(["cat", "/proc/1/task/1/children"]).stdout.split()
        assert service, "the service runs"
        assert f":{info.name}\n" in instance.exec(["cat", f"/proc/{service[0]}/cgroup"]).stdout
        assert Path(info.directory("pids") or "", "pids.max").read_text().strip() == "64"
        instance.stop()
    finally:
        for directory in spare_dirs:  # the spare's own cgroup, left empty by the move
            if directory and os.path.isdir(directory):
                wait_for(lambda d=directory: _rmdir(d))


def _rmdir(directory: str) -> bool:
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


@NEEDS_NO_CGROUP
def test_without_a_cgroup_limits_are_refused_before_anything_starts(make_image, start, registry):
    limits = Limits(memory="64M", memory_reservation="32M", cpus=0.5, cpu_shares=512,
                    pids_limit=77, blkio_weight=300)
    # refused, before anything starts
    before = instance_processes()
    with pytest.raises(Unsupported, match="cgroup v2 subtree"):
        start(make_image(startscript=IDLE), "mapped", limits=limits)
    _nothing_left(registry, "mapped", before)


@NEEDS_CGROUP
def test_limits_land_in_the_files_apptainer_writes(make_image, start, registry):
    limits = Limits(memory="64M", memory_reservation="32M", cpus=0.5, cpu_shares=512,
                    pids_limit=77, blkio_weight=300)
    instance = start(make_image(startscript=IDLE), "mapped", limits=limits)
    info = instance.cgroup
    assert info is not None

    def read(controller: str, *names: str) -> str:
        directory = info.directory(controller)
        assert directory is not None
        for filename in names:
            path = Path(directory, filename)
            if path.exists():
                return path.read_text().strip()
        raise AssertionError(f"none of {names} in {directory}")

    if info.controllers["memory"] == "v2":
        assert read("memory", "memory.max") == str(64 << 20)
        assert read("memory", "memory.low") == str(32 << 20)
    else:
        assert read("memory", "memory.limit_in_bytes") == str(64 << 20)
        assert read("memory", "memory.soft_limit_in_bytes") == str(32 << 20)
    if info.controllers["cpu"] == "v2":
        assert read("cpu", "cpu.max") == "50000 100000"
        assert read("cpu", "cpu.weight") == str(1 + (512 - 2) * 9999 // 262142)  # 20
    else:
        assert read("cpu", "cpu.cfs_quota_us") == "50000"
        assert read("cpu", "cpu.cfs_period_us") == "100000"
        assert read("cpu", "cpu.shares") == "512"
    assert read("pids", "pids.max") == "77"
    weight = read("io", "io.bfq.weight", "io.weight", "blkio.weight", "blkio.bfq.weight")
    # io.weight is scaled 10..1000 -> 1..10000 (OCI's conversion); the others keep 300.
    assert weight.split()[-1] in ("300", str(blkio_to_io_weight(300))), weight
    instance.stop()


@NEEDS_NO_CGROUP
def test_without_a_cgroup_a_memory_limit_is_refused(make_image, start, registry):
    limits = Limits(memory="32M", memory_swap="32M")
    image = make_image(startscript=IDLE)
    before = instance_processes()
    with pytest.raises(Unsupported, match="memory"):
        start(image, "hog", limits=limits)
    _nothing_left(registry, "hog", before)


@NEEDS_CGROUP
def test_a_memory_limit_kills_the_hog_not_the_instance(make_image, start, registry):
    limits = Limits(memory="32M", memory_swap="32M")
    image = make_image(startscript=IDLE)
    instance = start(image, "hog", limits=limits)
    info = instance.cgroup
    assert info is not None
    # dd allocates its 96 MiB block and fills it: far over the limit.
    hog = instance.exec(["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"])
    assert hog.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), hog
    assert _oom_kills(info) >= 1
    # The instance is still there, and manageable.
    assert instance.is_running()
    assert instance.exec(["echo", "alive"]).stdout == "alive\n"
    stats = instance.stats()
    assert stats.memory_limit == 32 << 20
    instance.stop()


@NEEDS_NO_CGROUP
def test_without_a_cgroup_a_pids_limit_is_refused(make_image, start, registry):
    limits = Limits(pids_limit=6)
    image = make_image(startscript=IDLE)
    with pytest.raises(Unsupported, match="pids"):
        start(image, "forks", limits=limits)
    assert registry.records() == []


@NEEDS_CGROUP
def test_a_pids_limit_makes_fork_fail(make_image, start, registry):
    limits = Limits(pids_limit=6)
    image = make_image(startscript=IDLE)
    instance = start(image, "forks", limits=limits)
    info = instance.cgroup
    assert info is not None
    result = instance.exec(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 3 & done; "
                                        "kill $(jobs -p) 2>/dev/null; exit 0"])
    assert "fork" in result.stderr.lower() or "resource" in result.stderr.lower(), result
    assert _counter(info, "pids", "pids.events", "max") >= 1
    assert instance.stats().pids <= 6
    instance.stop()


@NEEDS_NO_CGROUP
def test_without_a_cgroup_a_cpu_quota_is_refused(make_image, start):
    limits = Limits(cpus=0.2)
    image = make_image(startscript=IDLE)
    with pytest.raises(Unsupported, match="cpu"):
        start(image, "busy", limits=limits)


@NEEDS_CGROUP
def test_a_cpu_quota_throttles(make_image, start):
    limits = Limits(cpus=0.2)
    image = make_image(startscript=IDLE)
    instance = start(image, "busy", limits=limits)
    info = instance.cgroup
    assert info is not None
    before = instance.stats().cpu_seconds
    began = time.monotonic()
    instance.exec(["timeout", "2", "sh", "-c", "while :; do :; done"])
    wall = time.monotonic() - began
    used = instance.stats().cpu_seconds - before
    # 0.2 CPU over ~2 s is 0.4 s; unthrottled it would be ~2 s.
    assert used < 0.2 * wall + 0.35, (used, wall)
    assert _counter(info, "cpu", "cpu.stat", "nr_throttled") > 0
    instance.stop()


def _ticking(make_image, start, tmp_path):  # type: ignore[no-untyped-def]
    """An instance whose service writes the time into ``tmp_path/tick`` 50 times a second."""
    ticker = "#!/bin/sh\nwhile :; do date +%s%N > /tmp/tick; sleep 0.02; done\n"
    instance = start(make_image(startscript=ticker), "ticker", binds=[f"{tmp_path}:/tmp"])
    tick = tmp_path / "tick"
    wait_for(tick.exists)
    return instance, tick


@NEEDS_NO_CGROUP
def test_without_a_cgroup_pause_is_unsupported(make_image, start, tmp_path):
    instance, _tick = _ticking(make_image, start, tmp_path)
    with pytest.raises(Unsupported, match="cgroup"):
        instance.pause()
    assert not instance.paused
    instance.stop()


@NEEDS_CGROUP
def test_pause_and_resume(make_image, start, tmp_path):
    instance, tick = _ticking(make_image, start, tmp_path)
    instance.pause()
    assert instance.paused
    frozen_at = tick.read_text()
    time.sleep(0.3)
    assert tick.read_text() == frozen_at  # nothing ran
    with pytest.raises(ExecError, match="paused"):  # it would hang in the frozen cgroup
        instance.exec(["true"])
    instance.resume()
    assert not instance.paused
    wait_for(lambda: tick.read_text() != frozen_at)
    # A paused instance still stops gracefully (it is thawed first).
    instance.pause()
    began = time.monotonic()
    instance.stop(timeout=5)
    assert time.monotonic() - began < 4


@NEEDS_NO_CGROUP
def test_without_a_cgroup_stop_still_works(make_image, start):
    instance = start(make_image(startscript=IDLE), "leaky")
    info = instance.cgroup
    assert info is None
    instance.stop()


@NEEDS_CGROUP
def test_stop_kills_a_process_that_escaped_the_namespace(make_image, start):
    instance = start(make_image(startscript=IDLE), "leaky")
    info = instance.cgroup
    assert info is not None
    _assert_stop_kills_an_escaped_process(instance, info.procs_files())


def _assert_stop_kills_an_escaped_process(instance, procs_files: list[str]) -> None:
    """A host process moved into the instance's cgroup: outside its PID namespace
    and process group, so only the cgroup can find it; stop must kill it."""
    escaped = subprocess.Popen(["sleep", "1000"])
    try:
        for procs in procs_files:
            Path(procs).write_text(str(escaped.pid))
        instance.stop(timeout=5)
        assert escaped.wait(timeout=5) == -signal.SIGKILL
    finally:
        if escaped.poll() is None:
            escaped.kill()
            escaped.wait()


def _service_sleeps(pid: int) -> bool:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return any(Path(f"/proc/{child}/comm").read_text().strip() == "sleep" for child in children)


def test_stats(make_image, start, tmp_path):
    disk = Path(os.environ.get("V2VM_DISK", str(tmp_path)))  # a directory on a block device
    # The service itself uses some CPU (stats without a cgroup count PID 1's process tree;
    # commands run by exec are children of instancelib's joiner, outside it).
    busy = "#!/bin/sh\ni=0\nwhile [ $i -lt 20000 ]; do i=$((i+1)); done\nexec sleep 100000\n"
    image = make_image(startscript=busy)
    instance = start(image, "stats", binds=[f"{disk}:/data"],
                     limits=Limits(memory="256M") if HAS_CGROUP else None)
    instance.exec(["dd", "if=/dev/zero", "of=/data/instancelib-stats", "bs=1M", "count=8",
                   "oflag=direct"])
    wait_for(lambda: _service_sleeps(instance.pid), timeout=60)  # the busy loop is over
    began = time.perf_counter()
    stats = instance.stats()
    assert time.perf_counter() - began < 0.5  # at once (benchmarks/ measures it)
    assert isinstance(stats, Stats) and stats.name == "stats"
    assert stats.memory_usage > 0 and stats.pids >= 1
    assert 0 <= stats.memory_percent <= 100
    assert stats.cpu_percent >= 0 and stats.cpu_seconds > 0
    assert json.loads(json.dumps(stats.to_dict()))["name"] == "stats"
    if HAS_CGROUP:
        assert stats.source.startswith("cgroup")
        assert stats.memory_limit == 256 << 20
        assert stats.block_write >= 8 << 20
    else:
        assert stats.source == "processes"
    # A second reading measures CPU over the time since the first.  The busy loop is
    # orphaned, so PID 1 adopts and reaps it: counted with or without a cgroup.
    instance.exec(["sh", "-c", "(timeout 0.5 sh -c 'while :; do :; done' &)"])
    time.sleep(0.8)
    assert instance.stats().cpu_percent > 0
    # A stream ends when the instance does.
    readings: list[Stats] = []
    stopper = threading.Timer(0.5, instance.stop)
    stopper.start()
    for reading in instance.stats(stream=True, interval=0.1):
        readings.append(reading)
        assert len(readings) < 200
    stopper.join()
    assert len(readings) >= 2
    (disk / "instancelib-stats").unlink(missing_ok=True)


def test_a_limit_no_hierarchy_enforces_leaves_nothing(make_image, start, registry):
    before_cgroups = our_cgroups(spares=False)
    before = instance_processes()
    with pytest.raises(Unsupported, match="nosuchcontroller"):
        start(make_image(), "nope", limits=Limits(unified={"nosuchcontroller.max": "1"}))
    _nothing_left(registry, "nope", before)
    assert our_cgroups(spares=False) == before_cgroups


def test_a_value_the_kernel_refuses_leaves_nothing(make_image, start, registry):
    before = instance_processes()
    before_cgroups = our_cgroups(spares=False)
    limits = Limits(cpuset_cpus="4000")  # no such CPU
    if not HAS_CGROUP:
        with pytest.raises(Unsupported):
            start(make_image(), "refused", limits=limits)
    else:
        with pytest.raises(InvalidArgument, match=r"cpuset\.cpus"):
            start(make_image(), "refused", limits=limits)
    _nothing_left(registry, "refused", before)
    wait_for(lambda: our_cgroups(spares=False) == before_cgroups)


def test_the_cgroup_of_an_instance_killed_from_outside_is_removed(make_image, start, registry):
    instance = start(make_image(startscript=IDLE), "victim")
    info = instance.cgroup
    os.kill(instance.pid, signal.SIGKILL)
    wait_for(lambda: registry.list() == [])  # pruned when read
    if info is not None:
        wait_for(lambda: not any(os.path.exists(d) for d in info.v1.values()) and
                 not (info.v2 and os.path.exists(info.v2)))


def _cli_start_with_limits(registry, image, tmp_path):  # type: ignore[no-untyped-def]
    """The CLI bound to ``registry``, and its ``instance start`` of ``image`` with limits."""
    env = dict(os.environ, INSTANCELIB_HOME=str(registry.root))
    toml = tmp_path / "limits.toml"
    toml.write_text("[pids]\nlimit = 50\n[memory]\nlimit = 134217728\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "instancelib", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    return cli, cli("instance", "start", "--apply-cgroups", str(toml), "--memory", "96M",
                    image.path, "limited")


@NEEDS_NO_CGROUP
def test_without_a_cgroup_the_cli_refuses_limits(make_image, registry, tmp_path):
    _cli, started = _cli_start_with_limits(registry, make_image(startscript=IDLE), tmp_path)
    assert started.returncode == 255 and "cannot enforce" in started.stderr
    assert registry.records() == []


@NEEDS_CGROUP
def test_cli_limits_and_stats(make_image, registry, tmp_path):
    image = make_image(startscript=IDLE)
    cli, started = _cli_start_with_limits(registry, image, tmp_path)
    assert started.returncode == 0, started.stderr
    try:
        instance = registry.get("limited")
        assert instance.limits == Limits(pids_limit=50, memory="96M")  # the flag wins
        table = cli("instance", "stats", "--no-stream", "limited")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()
        assert header.split("    ") == ["INSTANCE NAME", "CPU USAGE", "MEM USAGE / LIMIT",
                                        "MEM %", "BLOCK I/O", "PIDS"]
        assert row.startswith("limited ") and "/ 96MiB" in row
        as_json = json.loads(cli("instance", "stats", "--no-stream", "--json",
                                 "limited").stdout)
        assert as_json["memory_limit"] == 96 << 20
        bad = cli("instance", "start", "--cpus", "-1", image.path, "bad")
        assert bad.returncode == 255 and "cpus" in bad.stderr
    finally:
        cli("instance", "stop", "--all")


def test_cli_stats_streams_until_the_instance_ends_or_ctrl_c(make_image, start, registry):
    instance = start(make_image(startscript=IDLE), "streamed")
    env = dict(os.environ, INSTANCELIB_HOME=str(registry.root))
    argv = [sys.executable, "-m", "instancelib", "instance", "stats", "--interval", "0.1",
            "streamed"]
    # --json is one reading, as Apptainer's (the stream is the table's).
    once = subprocess.run([*argv[:-3], "--json", "streamed"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout)["name"] == "streamed"
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stdout is not None
            rows = []
            while len(rows) < 3:
                line = proc.stdout.readline()
                assert line, "the stream ended early"
                if line.startswith("streamed "):
                    rows.append(line)
            instance.stop()
            _, err = proc.communicate(timeout=60)  # the stream ends with the instance
            assert proc.returncode == 0, err
            assert err.startswith("INFO:    Stats for streamed instance of ")
        finally:
            if proc.poll() is None:
                proc.kill()
    second = start(make_image(startscript=IDLE), "interrupted")
    argv[-1] = "interrupted"
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stdout is not None
            while not proc.stdout.readline().startswith("interrupted "):
                pass
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 130 and "Traceback" not in err, err
        finally:
            if proc.poll() is None:
                proc.kill()
    assert second.is_running()  # Ctrl-C ends the watching, not the instance
    second.stop()


@NEEDS_CGROUP
def test_cgroups_left_by_a_dead_caller_are_swept(make_image, start, monkeypatch):
    # A caller (or its fork-server) killed between making a cgroup and recording the
    # instance leaves an empty cgroup named after its PID; the next plan removes it.
    instance = start(make_image(startscript=IDLE), "sweeper")
    info = instance.cgroup
    gone = _a_dead_pid()
    bases = {os.path.dirname(d) for d in [*info.v1.values(), info.v2] if d}
    stale = [os.path.join(base, f"i.{os.geteuid()}.{gone}.5ca1ed") for base in bases]
    alive = [os.path.join(base, f"i.{os.geteuid()}.{os.getpid()}.a11ve0") for base in bases]
    try:
        for directory in stale + alive:
            os.mkdir(directory)
        monkeypatch.setattr(tree, "_swept", [])  # as if a minute had passed
        tree.plan("next", None)
        assert not any(os.path.exists(d) for d in stale)
        assert all(os.path.isdir(d) for d in alive)  # its maker is alive: kept
    finally:
        for directory in stale + alive:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(directory)
    instance.stop()


def _a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    assert not os.path.exists(f"/proc/{child.pid}")
    return child.pid


def test_a_pure_v1_host_pauses_and_kills_through_the_freezer(make_image, start, monkeypatch,
                                                            tmp_path, registry):
    hierarchies = tree.detect()
    if not {"freezer", "memory", "pids"} <= set(hierarchies.v1_mounts):
        pytest.skip("the kernel has no cgroup v1 freezer, memory and pids hierarchies here")
    # As on a host without a cgroup2 mount: everything on v1, the freezer to pause and kill.
    monkeypatch.setattr(tree, "_v2_base", lambda _hierarchies: None)
    if not has_host_root():  # cgroup v1 is root's: an ordinary user's limits are refused
        before = instance_processes()
        with pytest.raises(Unsupported, match="cgroup v1 is root's"):
            start(make_image(), "v1only", limits=Limits(pids_limit=30))
        _nothing_left(registry, "v1only", before)
        return
    ticker = "#!/bin/sh\nwhile :; do date +%s%N > /tmp/tick; sleep 0.02; done\n"
    instance = start(make_image(startscript=ticker), "v1only", binds=[f"{tmp_path}:/tmp"],
                     limits=Limits(pids_limit=30, memory="64M"))
    info = instance.cgroup
    assert info is not None and info.v2 is None and info.version == "v1"
    assert "freezer" in info.v1 and set(info.controllers.values()) == {"v1"}
    assert instance.stats().source == "cgroup v1"
    tick = tmp_path / "tick"
    wait_for(tick.exists)
    instance.pause()
    assert Path(info.v1["freezer"], "freezer.state").read_text().strip() == "FROZEN"
    frozen_at = tick.read_text()
    time.sleep(0.3)
    assert tick.read_text() == frozen_at and instance.paused
    instance.resume()
    wait_for(lambda: tick.read_text() != frozen_at)
    _assert_stop_kills_an_escaped_process(instance, [f"{info.v1['freezer']}/cgroup.procs"])
    assert not any(os.path.exists(d) for d in info.v1.values())


def test_a_caller_that_changed_hierarchies_leaves_no_tree_top(make_image, registry):
    # A process whose starts used other hierarchies (here: a pure v1 layout, then the
    # host's) leaves no empty tree top behind once it and its fork-server are gone.
    image = make_image(startscript=IDLE)
    before = our_cgroup_tops()
    code = f"""
from instancelib import Image, Instance, InstanceRegistry
from instancelib.cgroups import tree
registry = InstanceRegistry({str(registry.root)!r})
real = tree._v2_base
tree._v2_base = lambda hierarchies: None
Instance.start(Image({image.path!r}), "first", registry=registry).stop()
tree._v2_base = real
Instance.start(Image({image.path!r}), "second", registry=registry).stop()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: our_cgroup_tops() <= before, timeout=10)
