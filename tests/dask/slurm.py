"""A throw-away single-node Slurm for the tests: munged, slurmctld and slurmd on this machine.

Everything lives in one directory (the key, the sockets, the state, the spool, the logs) and
the daemons listen on free ports of 127.0.0.1; they are started and stopped by their PIDs.
Only root can run them (slurmd starts jobs as their users).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
_UP_WAIT = 60.0


def missing() -> str | None:
    """Why Slurm cannot start here, or None."""
    if os.geteuid() != 0:
        return "slurmctld and slurmd run as root (the suite's root pass runs this)"
    absent = [d for d in (*DAEMONS, "sbatch", "squeue", "sinfo") if not shutil.which(d)
              and not os.path.exists(f"/usr/sbin/{d}")]
    if absent:
        return f"Debian's slurm-wlm and munge are not installed (no {', '.join(absent)})"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Slurm:
    """A running single-node cluster; ``env`` is what its commands need (``SLURM_CONF``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.conf = directory / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.processes: list[subprocess.Popen[bytes]] = []

    def run(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def jobs(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i %T").split("\n")[:-1]

    def log_tail(self) -> str:
        parts = []
        for log in sorted((self.directory / "logs").glob("*")):
            parts.append(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace")
                                                        .splitlines()[-15:]))
        return "\n".join(parts)


def _write_config(directory: Path, host: str) -> None:
    cpus = os.cpu_count() or 1
    (directory / "slurm.conf").write_text(f"""\
ClusterName=instancelibtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={directory}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/logs/slurmctld.log
SlurmdLogFile={directory}/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")


@contextmanager
def single_node_slurm(directory: Path) -> Iterator[Slurm]:
    """munged, slurmctld and slurmd, up until the block ends (then stopped, by PID)."""
    host = socket.gethostname().split(".")[0]
    for sub in ("munge", "state", "spool", "logs"):
        (directory / sub).mkdir(mode=0o700, parents=True)
    (directory / "munge").chmod(0o711)  # the socket must be reachable
    key = directory / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    _write_config(directory, host)
    slurm = Slurm(directory)
    munge = directory / "munge"
    commands = [
        [_binary("munged"), "-F", "--force", f"--socket={munge}/munge.socket",
         f"--key-file={key}", f"--pid-file={munge}/munged.pid",
         f"--log-file={directory}/logs/munged.log", f"--seed-file={munge}/munged.seed"],
        [_binary("slurmctld"), "-D", "-f", str(slurm.conf)],
        [_binary("slurmd"), "-D", "-f", str(slurm.conf), "-N", host],
    ]
    try:
        for argv in commands:
            slurm.processes.append(subprocess.Popen(
                argv, env=slurm.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True))
            if argv[0].endswith("munged"):
                _until((munge / "munge.socket").exists, slurm, "munged's socket")
        _until(lambda: "idle" in slurm.run("sinfo", "-h", "-o", "%T"), slurm,
               "the node to be idle")
        yield slurm
    finally:
        _stop(slurm)


def _until(condition: object, slurm: Slurm, what: str) -> None:
    deadline = time.monotonic() + _UP_WAIT
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except subprocess.CalledProcessError:
            pass
        for process in slurm.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited ({process.returncode}) "
                                   f"waiting for {what}\n{slurm.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}\n{slurm.log_tail()}")
        time.sleep(0.1)


def _stop(slurm: Slurm) -> None:
    """Cancel what runs, then stop the daemons (slurmd first), each by its PID."""
    if slurm.processes and all(p.poll() is None for p in slurm.processes):
        try:
            slurm.run("scancel", "--full", "--user=root")
            deadline = time.monotonic() + _UP_WAIT
            while slurm.jobs() and time.monotonic() < deadline:
                time.sleep(0.2)
        except subprocess.SubprocessError:
            pass
    for process in reversed(slurm.processes):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
