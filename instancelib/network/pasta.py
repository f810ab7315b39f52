"""User-mode networking through pasta (Debian's ``passt``): ordinary users' networks.

An ordinary user may not make bridges or veths on the host, so their
instances' networks are user-mode: pasta, started for the instance's
network (and user) namespace, gives it a tap interface ``eth0`` with the
host's address and routes (pasta's defaults), carries its traffic out
through ordinary sockets of the host, and forwards the port maps' host
ports (on the host's addresses and 127.0.0.1) to it.  Root may ask for it
too (``network="pasta"``, as podman's ``--network pasta``).

pasta runs under the instance's forwarder process (``forwarder``), which
starts it in the foreground, learns that it has configured the namespace
when pasta writes its PID (to a pipe given as its ``--pid`` file), and ends
it when the instance's PID 1 exits: pasta itself does not notice the end of
a namespace it was given by descriptor.  The namespaces reach pasta as
inherited descriptors (``/proc/self/fd/N``): root's pasta has dropped the
capabilities that opening another root process's ``/proc/PID/ns`` needs.

pasta needs ``/dev/net/tun``; a user namespace can open it only when its
mode lets everyone (0666, as udev makes it on most systems).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from collections.abc import Sequence

from instancelib.errors import Unsupported
from instancelib.network.args import PortMap

__all__ = ["TUN", "argv", "check_usable", "find_pasta", "tun_usable"]

TUN = "/dev/net/tun"
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin", "/bin"])


def find_pasta() -> str | None:
    """pasta's path, or None."""
    return shutil.which("pasta", path=_SEARCH)


def _path(network: str) -> str:
    path = find_pasta()
    if path is None:
        raise Unsupported(f"network {network!r}: an instance's user-mode network needs pasta, "
                          "not found (Debian: apt-get install passt)")
    return path


def check_usable(network: str) -> None:
    """Raise ``Unsupported`` (before anything starts) if pasta cannot serve here."""
    _path(network)
    if not tun_usable():
        try:
            info = os.stat(TUN)
        except OSError:
            raise Unsupported(f"network {network!r}: pasta needs {TUN}, which this machine "
                              "does not have (the tun module)") from None
        try:
            owner = pwd.getpwuid(info.st_uid).pw_name
        except KeyError:
            owner = str(info.st_uid)
        raise Unsupported(f"network {network!r}: pasta needs {TUN}, which is mode "
                          f"{stat.S_IMODE(info.st_mode):04o} owned by {owner} here, so "
                          "you cannot open it (most systems make it 0666: ask the "
                          "administrator)")


def tun_usable() -> bool:
    """Whether the caller can open the tun device (in its user namespace too: a device root
    alone may open cannot be opened there, and root's check says so as well)."""
    return os.access(TUN, os.R_OK | os.W_OK)


def _spec(port_map: PortMap) -> str:
    where = f"{port_map.host_ip}/" if port_map.host_ip else ""
    return f"{where}{port_map.host}:{port_map.container}"


def argv(network: str, port_maps: Sequence[PortMap], netns_fd: int,
         userns_fd: int | None) -> list[str]:
    """pasta's command line for the namespaces at ``netns_fd`` (and ``userns_fd``, when the
    instance has a user namespace of its own), without ``--pid`` (the forwarder adds it)."""
    command = [_path(network), "--config-net", "--quiet", "--foreground", "--ns-ifname", "eth0",
               "--netns", f"/proc/self/fd/{netns_fd}"]
    if userns_fd is not None:
        command += ["--userns", f"/proc/self/fd/{userns_fd}"]
    else:
        command += ["--netns-only"]
    if os.getuid() == 0:
        command += ["--runas", "0"]  # else pasta becomes nobody, who may not enter the netns
    for flag, protocol in (("-t", "tcp"), ("-u", "udp")):
        specs = [_spec(m) for m in port_maps if m.protocol == protocol]
        for spec in specs or ["none"]:
            command += [flag, spec]
    # Nothing from the instance to the host's own loopback ports (pasta's -T/-U auto).
    return [*command, "-T", "none", "-U", "none"]
