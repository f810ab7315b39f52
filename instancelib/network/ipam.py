"""Addresses of a network: allocated under a lock, held by a live process, reused after.

Like CNI's host-local: one file per address taken, in the network's state
directory, named by the address.  It holds the holder's identity, ``PID
STARTTIME NAME`` (the instance's PID 1, or the caller while a start is
under way); an address whose holder has ended is free again, so an
instance killed from outside never keeps one.  Root's networks keep their
state in ``/run/instancelib/networks/<name>``, where every registry of
root's sees it; an ordinary user's under their runtime directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

from instancelib.errors import InvalidArgument, NameConflict, RegistryError
from instancelib.linux import procfs
from instancelib.linux.userns import has_host_root
from instancelib.network.config import Network

__all__ = ["Allocator", "Holder", "state_root"]

Holder = tuple[int, int, str]
"""Who holds an address: (PID, start time in clock ticks, instance name)."""


def state_root() -> Path:
    """Where networks keep their allocations: /run for root, the runtime directory else.

    ``$INSTANCELIB_NETWORK_STATE`` overrides it (tests running in a network
    namespace of their own keep their allocations apart this way).
    """
    configured = os.environ.get("INSTANCELIB_NETWORK_STATE")
    if configured:
        return Path(configured)
    if has_host_root():
        return Path("/run/instancelib/networks")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == os.geteuid():
        return Path(runtime) / "instancelib" / "networks"
    return Path(f"/tmp/instancelib-{os.geteuid()}") / "networks"


class Allocator:
    """The addresses of ``network`` (the gateway excluded), in ``root / network.name``."""

    def __init__(self, network: Network, root: Path | None = None) -> None:
        self.network = network
        self.directory = (root or state_root()) / network.name

    @classmethod
    def named(cls, name: str, root: Path | None = None) -> Allocator:
        """An allocator for releasing only (a record names its network, not its range)."""
        allocator = cls.__new__(cls)
        allocator.directory = (root or state_root()) / name
        return allocator

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(self.directory)
            if info.st_uid != os.geteuid() or info.st_mode & 0o022 or \
                    not os.path.isdir(self.directory) or os.path.islink(self.directory):
                raise RegistryError("the network state directory is not the caller's own",
                                    path=str(self.directory))
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise RegistryError("cannot use the network state directory",
                                path=str(self.directory), errno=err.errno) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _holder(self, address: ipaddress.IPv4Address) -> Holder | None:
        try:
            with open(self.directory / str(address), "rb") as f:
                fields = f.read(256).decode(errors="replace").split()
        except FileNotFoundError:
            return None
        if len(fields) == 3 and fields[0].isdigit() and fields[1].isdigit():
            return int(fields[0]), int(fields[1]), fields[2]
        return None

    def _held(self, address: ipaddress.IPv4Address) -> bool:
        holder = self._holder(address)
        return holder is not None and procfs.is_alive(holder[0], holder[1])

    def _write(self, address: ipaddress.IPv4Address, holder: Holder) -> None:
        path = self.directory / str(address)
        temporary = self.directory / f".{address}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w") as f:
                f.write(f"{holder[0]} {holder[1]} {holder[2]}\n")
            os.rename(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def allocate(self, holder: Holder,
                 requested: ipaddress.IPv4Address | None = None) -> ipaddress.IPv4Address:
        """Take ``requested``, or the lowest free address, for ``holder``.

        Raises:
            InvalidArgument: ``requested`` is outside the subnet, or the gateway.
            NameConflict: ``requested`` is held by a running instance, or no
                address is free.
        """
        subnet, gateway = self.network.subnet, self.network.gateway
        if requested is not None and (requested not in subnet or requested == gateway
                                      or requested in (subnet.network_address,
                                                       subnet.broadcast_address)):
            raise InvalidArgument(f"IP={requested} is not an address of network "
                                  f"{self.network.name!r} ({subnet}, gateway {gateway})")
        with self._locked():
            if requested is not None:
                holder_now = self._holder(requested)
                if holder_now is not None and self._held(requested):
                    raise NameConflict(f"IP={requested} of network {self.network.name!r} is "
                                       f"taken by instance {holder_now[2]!r}")
                self._write(requested, holder)
                return requested
            taken = {name for name in os.listdir(self.directory) if not name.startswith(".")}
            for address in subnet.hosts():
                if address == gateway:
                    continue
                if str(address) in taken and self._held(address):
                    continue
                self._write(address, holder)
                return address
        raise NameConflict(f"network {self.network.name!r} has no free address ({subnet})")

    def hand_over(self, address: ipaddress.IPv4Address, holder: Holder) -> None:
        """Make ``holder`` (the instance's PID 1) the holder of ``address``.

        No lock: the file is replaced by a rename, and a reader sees the caller
        or PID 1 as its holder, both alive now, so the address stays taken.
        """
        self._write(address, holder)

    def release(self, address: ipaddress.IPv4Address, holder: Holder | None = None) -> None:
        """Free ``address`` (only if ``holder`` still holds it, when given)."""
        with self._locked():
            if holder is not None:
                current = self._holder(address)
                if current is not None and current[:2] != holder[:2]:
                    return  # reused meanwhile by another instance
            try:
                os.unlink(self.directory / str(address))
            except FileNotFoundError:
                pass
            except OSError as err:
                if err.errno != errno.ENOENT:
                    raise

    def holders(self) -> dict[ipaddress.IPv4Address, Holder]:
        """The addresses held by live processes now."""
        found: dict[ipaddress.IPv4Address, Holder] = {}
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return found
        for name in names:
            if name.startswith("."):
                continue
            try:
                address = ipaddress.IPv4Address(name)
            except ValueError:
                continue
            holder = self._holder(address)
            if holder is not None and procfs.is_alive(holder[0], holder[1]):
                found[address] = holder
        return found
