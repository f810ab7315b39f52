"""Instances through dask-jobqueue's SLURMCluster on a real single-node Slurm (slurm-wlm)."""

from __future__ import annotations

import sys
import time

import pytest

from tests.dask import slurm as harness
from tests.helpers import instance_processes

pytest.importorskip("dask_jobqueue", reason="the test extra brings dask-jobqueue")
if harness.missing():
    pytest.skip(harness.missing(), allow_module_level=True)

import distributed
from dask_jobqueue import SLURMCluster

import instancelib.dask as cluster
from instancelib.build.busybox import make_busybox_rootfs


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    with harness.single_node_slurm(tmp_path / "slurm") as running:
        monkeypatch.setenv("SLURM_CONF", str(running.conf))  # sbatch, squeue, scancel
        yield running
    assert not running.processes or all(p.poll() is not None for p in running.processes)


def test_slurm_jobs_run_instances_through_dask_jobqueue(slurm, tmp_path):
    before = instance_processes()
    image = str(make_busybox_rootfs(tmp_path / "image"))
    jobs = SLURMCluster(
        queue="test", cores=1, processes=1, memory="400MB", walltime="00:10:00",
        python=sys.executable, log_directory=str(tmp_path / "job-logs"),
        local_directory=str(tmp_path / "worker-space"),
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        worker_extra_args=["--host", "127.0.0.1"], job_extra_directives=[f"--chdir={tmp_path}"])
    try:
        with distributed.Client(jobs) as client:
            jobs.scale(jobs=2)
            client.wait_for_workers(2, timeout=120)
            assert len(slurm.jobs()) == 2 and all(j.endswith("RUNNING") for j in slurm.jobs())
            cluster.register(client, root=tmp_path / "registries")
            started = cluster.start(client, image, "batch", replicas=2)
            assert len({r.worker for r in started}) == 2  # one in each job
            assert [r.name for r in cluster.list(client)] == ["batch-0", "batch-1"]
            job_ids = {cluster.exec(client, r, ["sh", "-c", "echo $SLURM_JOB_ID"]).stdout.strip()
                       for r in started}
            assert job_ids == {j.split()[0] for j in slurm.jobs()}  # each inside its own job
            assert [r.name for r in cluster.stop(client, "batch-*")] == ["batch-0", "batch-1"]
            assert cluster.list(client) == []
            jobs.scale(jobs=0)
            deadline = time.monotonic() + 60
            while slurm.jobs() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert slurm.jobs() == [], "the workers' jobs were not cancelled"
    finally:
        jobs.close()
    assert instance_processes() - before == set()
