"""instancelib.dask on a real Dask LocalCluster (worker processes with nannies)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="the test extra brings distributed")

import instancelib.dask as cluster  # noqa: E402 (after the import check)
from instancelib import (  # noqa: E402
    ImageError,
    InstanceRegistry,
    InvalidArgument,
    NameConflict,
    NotFound,
    StartError,
    Unsupported,
)
from instancelib.build.busybox import make_busybox_rootfs  # noqa: E402
from tests.helpers import instance_processes  # noqa: E402

DEADLINE = 60  # seconds any wait on the cluster may take


def local_cluster(**options):
    return distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                    host="127.0.0.1", dashboard_address="127.0.0.1:0", **options)


def wait_for(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pid):
    """Whether ``pid`` runs (a zombie waiting for the host's reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


@pytest.fixture
def dask_home(tmp_path):
    return tmp_path / "dask"


@pytest.fixture
def left_nothing(dask_home):
    """No instance process of the test's is left, and no worker registry with one in it."""
    before = instance_processes()
    yield
    left = instance_processes() - before
    for pid in left:  # ours, started by this test's workers: ended so the run goes on
        os.kill(pid, signal.SIGKILL)
    assert not left, f"instances left running: {sorted(left)}"


@pytest.fixture(scope="module")
def shared_cluster():
    with local_cluster(resources={"GPU": 1}) as lc, distributed.Client(lc) as client:
        yield client


@pytest.fixture
def client(shared_cluster, dask_home, left_nothing):
    cluster.register(shared_cluster, root=dask_home)  # the module's cluster: once
    yield shared_cluster
    cluster.stop(shared_cluster, "*", force=True)


@pytest.fixture(scope="module")
def module_image(tmp_path_factory):
    return str(make_busybox_rootfs(tmp_path_factory.mktemp("dask-image") / "image"))


def test_replicas_spread_listed_exec_and_stopped_by_pattern(client, module_image):
    workers = sorted(client.scheduler_info()["workers"])
    started = cluster.start(client, module_image, "web", replicas=4)
    assert [r.name for r in started] == ["web-0", "web-1", "web-2", "web-3"]
    assert sorted(r.worker for r in started) == sorted(workers * 2)  # two on each
    listed = cluster.list(client, "web-*")
    assert [r.name for r in listed] == ["web-0", "web-1", "web-2", "web-3"]
    assert listed.unreachable == {}
    assert {(r.name, r.worker, r.pid) for r in listed} == \
        {(r.name, r.worker, r.pid) for r in started}
    assert all(r.status == "running" and r.worker_alive and r.image == module_image
               and r.host for r in listed)
    result = cluster.exec(client, "web-2", ["sh", "-c", "echo in; exit 3"])
    assert (result.returncode, result.stdout) == (3, "in\n")
    readings = cluster.stats(client, "web-*")
    assert [s.instance.name for s in readings] == ["web-0", "web-1", "web-2", "web-3"]
    assert all(s.stats.memory_usage >= 0 for s in readings)
    stopped = cluster.stop(client, "web-*")
    assert [r.name for r in stopped] == ["web-0", "web-1", "web-2", "web-3"]
    assert not any(alive(r.pid) for r in started)
    assert cluster.list(client) == []


def test_placement_on_given_workers_by_name_or_address(client, module_image):
    info = client.scheduler_info()["workers"]
    address = sorted(info)[0]
    by_name = cluster.start(client, module_image, "pinned", workers=[info[address]["name"]],
                            replicas=2)
    assert {r.worker for r in by_name} == {address}
    with pytest.raises(InvalidArgument, match="no such worker"):
        cluster.start(client, module_image, "nowhere", workers=["tcp://127.0.0.1:1"])


def test_errors_come_back_typed_with_the_worker_named(client, module_image, tmp_path):
    missing = str(tmp_path / "not-here.sif")
    with pytest.raises(ImageError, match="on worker tcp://") as caught:
        cluster.start(client, missing, "lost")
    assert caught.value.path == missing and caught.value.worker in \
        client.scheduler_info()["workers"]
    address = sorted(client.scheduler_info()["workers"])[0]
    cluster.start(client, module_image, "twice", workers=[address])
    with pytest.raises(NameConflict) as conflict:
        cluster.start(client, module_image, "twice", workers=[address])
    assert conflict.value.worker == address and address in str(conflict.value)
    with pytest.raises(NotFound):
        cluster.exec(client, "nobody", ["true"])
    with pytest.raises(InvalidArgument, match="registry"):
        cluster.start(client, module_image, "r", registry=InstanceRegistry(tmp_path))


def test_a_failed_replica_undoes_the_others(client, module_image):
    address = sorted(client.scheduler_info()["workers"])[0]
    cluster.start(client, module_image, "clash-1", workers=[address])
    with pytest.raises(NameConflict):
        cluster.start(client, module_image, "clash", replicas=2, workers=[address])
    assert [r.name for r in cluster.list(client, "clash*")] == ["clash-1"]  # clash-0 undone


def test_worker_resources_are_respected_while_instances_run(client, module_image):
    gpu = cluster.start(client, module_image, "gpu", replicas=2, resources={"GPU": 1})
    assert len({r.worker for r in gpu}) == 2 and all(r.resources == {"GPU": 1.0} for r in gpu)
    with pytest.raises(StartError, match="no worker can take another instance asking GPU=1"):
        cluster.start(client, module_image, "gpu-more", resources={"GPU": 1})
    assert [r.name for r in cluster.list(client, "gpu*")] == ["gpu-0", "gpu-1"]
    cluster.stop(client, "gpu-0")
    again = cluster.start(client, module_image, "gpu-again", resources={"GPU": 1})
    assert again[0].worker == next(r.worker for r in gpu if r.name == "gpu-0")


def test_results_are_plain_values_that_pickle(client, module_image):
    cluster.start(client, module_image, "pickled")
    listed = cluster.list(client)
    listed.unreachable["tcp://10.0.0.1:1"] = "gone"
    copy = pickle.loads(pickle.dumps(listed))
    assert copy == listed and copy.unreachable == listed.unreachable
    assert "pickled" in repr(copy[0]) and "<table" in copy._repr_html_()


def test_a_worker_without_the_plugin_says_so(module_image, left_nothing):
    with local_cluster() as lc, distributed.Client(lc) as client:
        with pytest.raises(Unsupported, match="plugin is not registered"):
            cluster.start(client, module_image, "unplugged")
        listed = cluster.list(client)
        assert listed == [] and len(listed.unreachable) == 2


def test_a_gracefully_closed_worker_stops_its_instances(module_image, dask_home, left_nothing):
    with local_cluster() as lc, distributed.Client(lc) as client:
        cluster.register(client, root=dask_home)
        first, second = sorted(client.scheduler_info()["workers"])
        started = cluster.start(client, module_image, "svc", replicas=2)
        mine = [r for r in started if r.worker == first]
        client.retire_workers([first], close_workers=True)
        wait_for(lambda: not any(alive(r.pid) for r in mine), "the retired worker's instances")
        assert not Path(mine[0].registry).exists()  # its registry went with it
        assert [r.name for r in cluster.list(client)] == \
            [r.name for r in started if r.worker == second]
        cluster.stop(client)


def test_kept_instances_outlive_their_worker_and_a_new_worker_sees_them(
        module_image, dask_home, left_nothing):
    with local_cluster() as lc, distributed.Client(lc) as client:
        cluster.register(client, root=dask_home, keep=True)
        before = set(client.scheduler_info()["workers"])
        started = cluster.start(client, module_image, "kept", replicas=2)
        lc.scale(1)  # the cluster closes one worker, gracefully
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, "the scale-down")
        (gone,) = before - set(client.scheduler_info()["workers"])
        kept = next(r for r in started if r.worker == gone)
        assert alive(kept.pid)
        lc.scale(2)  # a new worker on the same host
        client.wait_for_workers(2, timeout=DEADLINE)
        listed = cluster.list(client)
        assert sorted((r.name, r.pid, r.worker, r.worker_alive) for r in listed) == sorted(
            (r.name, r.pid, r.worker, r.worker != gone) for r in started)
        orphan = next(r for r in listed if not r.worker_alive)
        assert orphan.via in client.scheduler_info()["workers"] and orphan.via != gone
        assert cluster.exec(client, orphan, ["echo", "still"]).stdout == "still\n"
        assert [r.name for r in cluster.stop(client, "kept-*")] == ["kept-0", "kept-1"]
        assert not any(alive(r.pid) for r in started)
        wait_for(lambda: not Path(kept.registry).exists(), "the ended worker's registry")


def test_a_killed_worker_is_reported_and_its_instances_stay_manageable(
        module_image, dask_home, left_nothing):
    with local_cluster() as lc, distributed.Client(lc) as client:
        cluster.register(client, root=dask_home)
        started = cluster.start(client, module_image, "job", replicas=2)
        victim = started[0].worker
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)  # the worker process this test's cluster started
        wait_for(lambda: victim not in client.scheduler_info()["workers"], "the worker's death")
        listed = cluster.list(client)
        assert victim in listed.unreachable and "has left the cluster" in \
            listed.unreachable[victim]
        orphan = next(r for r in listed if r.name == started[0].name)
        assert not orphan.worker_alive and orphan.pid == started[0].pid
        # It never depended on its worker: the registry on its host still manages it.
        local = InstanceRegistry(started[0].registry).get(started[0].name)
        assert local.exec(["echo", "here"]).stdout == "here\n"
        local.stop()
        assert not alive(started[0].pid)
        cluster.stop(client)


# -- the command line ---------------------------------------------------------------------------


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "instancelib", *args], capture_output=True,
                          text=True, timeout=120, env=env, check=False)


def test_cluster_list_and_stop_on_the_command_line(client, module_image):
    address = client.scheduler.address
    started = cluster.start(client, module_image, "cli", replicas=2)
    listed = cli("cluster", "list", "--scheduler", address)
    assert listed.returncode == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert header.split() == ["INSTANCE", "NAME", "PID", "IP", "WORKER", "HOST", "IMAGE"]
    assert sorted(line.split()[0] for line in lines) == ["cli-0", "cli-1"]
    for row in started:
        line = next(line for line in lines if line.startswith(row.name + " "))
        assert line.split()[1:] == [str(row.pid), row.worker, row.host, module_image]
    as_json = cli("cluster", "list", "--json", "--scheduler", address, "cli-1")
    document = json.loads(as_json.stdout)
    assert [i["instance"] for i in document["instances"]] == ["cli-1"]
    assert document["instances"][0]["worker"] == started[1].worker
    assert document["unreachable"] == {}
    stopped = cli("cluster", "stop", "--scheduler", address, "cli-*")
    assert stopped.returncode == 0, stopped.stderr
    assert "Stopped cli-0 instance" in stopped.stderr and "Stopped cli-1 instance" in \
        stopped.stderr
    assert cluster.list(client) == []
    again = cli("cluster", "stop", "--scheduler", address, "cli-*")
    assert (again.returncode, again.stderr.strip()) == (
        255, "FATAL:   no instance found with name cli-*")


def test_the_command_line_says_what_is_wrong_in_one_line():
    unreachable = cli("cluster", "list", "--scheduler", "tcp://127.0.0.1:9",
                      "--answer-timeout", "2")
    assert unreachable.returncode == 255
    assert unreachable.stderr.startswith("FATAL:   cannot reach the Dask scheduler at "
                                         "tcp://127.0.0.1:9")
    assert "Traceback" not in unreachable.stderr
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    nameless = cli("cluster", "list", env=env)
    assert (nameless.returncode, nameless.stderr.splitlines()) == (
        255, ["FATAL:   name the Dask scheduler: --scheduler ADDR (or set "
              "DASK_SCHEDULER_ADDRESS)"])
