"""Linux system calls that Python's ``os`` module lacks, through ctypes.

This is the only module that talks to libc directly.  libc is loaded once;
each wrapper is a thin call that raises ``OSError(errno, message, path)`` on
failure, so the layer above can add context ("mounting /proc for instance
'web': ...").  Architecture quirks (syscall numbers) are kept here and nowhere
else.  Only the standard library is imported: this module is loaded by the
fork-server and by every instance's PID 1.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = [
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "MS_SLAVE",
    "MS_UNBINDABLE",
    "die_with_parent",
    "mount",
    "mount_setattr_readonly",
    "pidfd_send_signal",
    "pivot_root",
    "prctl_set_name",
    "set_process_title",
    "sethostname",
    "setns",
    "umount2",
    "unshare",
]

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_UNBINDABLE = 1 << 17
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MNT_DETACH = 2

_MOUNT_ATTR_RDONLY = 0x1
_AT_RECURSIVE = 0x8000
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15

# Numbers of the syscalls glibc may not wrap (pivot_root never; the others
# only since glibc 2.36).  x86_64 has its own table; arm64 and riscv64 use the
# generic one.
_GENERIC = {"pivot_root": 41, "pidfd_send_signal": 424, "mount_setattr": 442}
_SYSCALL_NUMBERS = {
    "x86_64": {"pivot_root": 155, "pidfd_send_signal": 424, "mount_setattr": 442},
    "aarch64": _GENERIC,
    "riscv64": _GENERIC,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong
]
# prctl with a number where PR_SET_NAME has a string (a function object of its own).
_prctl_number = ctypes.CDLL(None, use_errno=True).prctl
_prctl_number.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                          ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _syscall_number(name: str) -> int:
    numbers = _SYSCALL_NUMBERS.get(platform.machine())
    if numbers is None:
        raise OSError(
            38, f"{name}: syscall number unknown on {platform.machine()}"
        )  # ENOSYS
    return numbers[name]


def _fail(what: str, path: str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", path)


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """unshare(2): move the calling process into new namespaces."""
    if _libc.unshare(flags) != 0:
        raise _fail("unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2) on a namespace fd or (Linux >= 5.8) a pidfd with CLONE_NEW* flags."""
    if _libc.setns(fd, nstype) != 0:
        raise _fail("setns")


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2).  ``target`` may be a ``/proc/self/fd/N`` magic link."""
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        raise _fail(f"mount {fstype or 'bind'}", target)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    if _libc.umount2(_b(target), flags) != 0:
        raise _fail("umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2); glibc has no wrapper for it."""
    number = _syscall_number("pivot_root")
    if _libc.syscall(number, _b(new_root), _b(put_old)) != 0:
        raise _fail("pivot_root", new_root)


def mount_setattr_readonly(path: str, *, recursive: bool) -> None:
    """Make the mount at ``path`` (and, if ``recursive``, every mount below it) read-only.

    mount_setattr(2) (Linux >= 5.12) is the only way to make a recursive bind
    read-only as a whole: MS_REMOUNT|MS_RDONLY affects one mount only.
    """
    number = _syscall_number("mount_setattr")
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    flags = _AT_RECURSIVE if recursive else 0
    at_fdcwd = -100
    ret = _libc.syscall(
        number,
        ctypes.c_int(at_fdcwd),
        _b(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if ret != 0:
        raise _fail("mount_setattr", path)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """pidfd_send_signal(2) (Linux >= 5.1): signal exactly the process the pidfd refers to."""
    number = _syscall_number("pidfd_send_signal")
    if _libc.syscall(number, ctypes.c_int(pidfd), ctypes.c_int(sig), None, ctypes.c_uint(0)) != 0:
        raise _fail("pidfd_send_signal")


def sethostname(name: str) -> None:
    """sethostname(2) in the caller's UTS namespace."""
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) != 0:
        raise _fail("sethostname")


def set_process_title(title: str) -> None:
    """Replace this process's command line (as ``ps`` shows it) with ``title``.

    Overwrites the argument area in place through ``/proc/self/mem``; the
    title is cut to the original length, the rest filled with NULs.
    """
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # Fields 48 and 49 (arg_start, arg_end); the split starts at field 3.
    start, end = int(fields[45]), int(fields[46])
    raw = title.encode()[: end - start - 1]
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(start)
        mem.write(raw + b"\0" * (end - start - len(raw)))


def die_with_parent(signal_number: int) -> None:
    """Have the kernel send ``signal_number`` to this process when its parent exits."""
    if _prctl_number(_PR_SET_PDEATHSIG, int(signal_number), 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_PDEATHSIG)")


def prctl_set_name(name: str) -> None:
    """Set the calling thread's name (``comm``, 15 bytes), as ``ps`` shows it."""
    if _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_NAME)")
