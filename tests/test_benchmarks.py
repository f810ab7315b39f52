"""The benchmark scripts run, print their tables, and leave nothing behind.

They are run on demand, not in timed tests; this runs each one briefly (one
round, tiny transfers) so that a script which no longer works, or which
leaves kernel objects behind (the peers it compares with included), fails CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from instancelib.linux.userns import has_host_root
from tests.helpers import cgroup_tops, host_mounts, network_links, routing_state

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.skipif(not has_host_root(), reason="needs root: the network benchmark makes "
                    "bridges and veths (in a network namespace of its own)")
def test_the_network_benchmark_runs_and_leaves_nothing_behind():
    cgroups, links, mounts = cgroup_tops(), network_links(), host_mounts()
    routing = routing_state()
    run_entries = set(Path("/run").iterdir())
    result = subprocess.run([sys.executable, str(BENCHMARKS / "network.py"), "-n", "1",
                             "--mb", "1"], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "| bridge" in result.stdout and "| pasta" in result.stdout
    assert "| podman --network bridge |" in result.stdout
    assert "MiB/s" in result.stdout
    assert cgroup_tops() - cgroups == set()   # podman's libpod_parent, say
    assert network_links() - links == set()
    assert host_mounts() == mounts             # podman's network mounts /run/netns
    assert routing_state() == routing
    assert set(Path("/run").iterdir()) == run_entries   # nor /run/netns, /run/containers


def test_the_async_benchmark_runs_and_prints_its_tables():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "aio.py"), "-n", "2",
                             "--count", "3", "--rounds", "1"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "| helper process: 3 starts at once |" in result.stdout
    assert "| threads, INSTANCELIB_AIO_HELPER=0: their 3 stops at once |" in result.stdout
    assert "| overhead of the async face (medians) |" in result.stdout


def test_the_cluster_benchmark_runs_and_prints_its_table():
    pytest.importorskip("distributed", reason="the test extra brings distributed")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "cluster.py"), "--count", "4",
                             "-n", "2"], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "| cluster-wide `instancelib.dask.list` of 4 (min / median / max) |" in result.stdout


def test_the_supervision_benchmark_runs_and_prints_its_table():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "supervision.py"), "-n", "2",
                             "--restarts", "2", "--count", "2"], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "| restart latency less the backoff, 2 restarts |" in result.stdout
    assert "| PID 1's PSS (KiB), 2 up, a command health check (every 0.1 s) |" in result.stdout
