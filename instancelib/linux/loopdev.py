"""Loop devices for SIF and squashfs images (root only).

A SIF's root filesystem is a squashfs partition at some offset in the file.
``attach`` gives a read-only loop device for that region, configured in one
``LOOP_CONFIGURE`` call (Linux 5.8; ``LOOP_SET_FD`` + ``LOOP_SET_STATUS64``
before) with ``LO_FLAGS_AUTOCLEAR``: the kernel detaches it when its last
user (the squashfs mount in the instance's mount namespace) goes away, so a
stopped instance can never leave a loop device behind.  A device already
serving the same file region is reused, so instances of one image share it.

Only the standard library is imported (PID 1 calls this).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct

__all__ = ["attach", "device_serves"]

_LOOP_SET_FD = 0x4C00
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_AUTOCLEAR = 4
# struct loop_info64 (232 bytes) and struct loop_config (fd, block_size, info, reserved[8]).
_INFO = struct.Struct("=QQQQQIIII64s64s32s16s")
_CONFIG = struct.Struct(f"=II{_INFO.size}s64s")
_ATTEMPTS = 8


def _info(offset: int, size: int, name: str) -> bytes:
    return _INFO.pack(0, 0, 0, offset, size, 0, 0, 0,
                      _LO_FLAGS_READ_ONLY | _LO_FLAGS_AUTOCLEAR,
                      os.fsencode(name)[-63:], b"", b"", b"")


def device_serves(device: str, file_stat: os.stat_result, offset: int, size: int) -> bool:
    """Whether loop ``device`` is attached, read-only, to that region of that file."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        raw = fcntl.ioctl(fd, _LOOP_GET_STATUS64, bytes(_INFO.size))
    except OSError:  # ENXIO: not attached
        return False
    finally:
        os.close(fd)
    (lo_device, lo_inode, _rdev, lo_offset, lo_size, _number, _enc, _keysize, flags,
     *_rest) = _INFO.unpack(raw)
    return (lo_device == file_stat.st_dev and lo_inode == file_stat.st_ino
            and lo_offset == offset and lo_size == size and bool(flags & _LO_FLAGS_READ_ONLY))


def _shared(file_stat: os.stat_result, offset: int, size: int) -> str | None:
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return None
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/offset") as f:
                if int(f.read()) != offset:
                    continue
        except (OSError, ValueError):
            continue  # not attached
        device = f"/dev/{name}"
        if device_serves(device, file_stat, offset, size):
            return device
    return None


def attach(path: str, offset: int, size: int) -> tuple[str, int, bool]:
    """A read-only loop device for ``size`` bytes of ``path`` at ``offset``.

    Returns ``(device, fd, shared)``: the caller mounts ``device`` and then
    closes ``fd``; autoclear detaches the device once nothing uses it.
    ``shared`` tells whether an existing device was reused.
    """
    image_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        file_stat = os.fstat(image_fd)
        existing = _shared(file_stat, offset, size)
        if existing is not None:
            with contextlib.suppress(OSError):
                fd = os.open(existing, os.O_RDONLY | os.O_CLOEXEC)
                if device_serves(existing, file_stat, offset, size):  # not torn down meanwhile
                    return existing, fd, True
                os.close(fd)
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _attempt in range(_ATTEMPTS):
                number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _configure(fd, image_fd, offset, size, path)
                except OSError as err:
                    os.close(fd)
                    if err.errno == errno.EBUSY:  # another process took it first
                        continue
                    raise
                return device, fd, False
        finally:
            os.close(control)
        raise OSError(errno.EBUSY, "no free loop device could be configured")
    finally:
        os.close(image_fd)


def _configure(fd: int, image_fd: int, offset: int, size: int, path: str) -> None:
    info = _info(offset, size, path)
    try:
        fcntl.ioctl(fd, _LOOP_CONFIGURE, _CONFIG.pack(image_fd, 0, info, b""))
        return
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTTY):  # LOOP_CONFIGURE is Linux >= 5.8
            raise
    fcntl.ioctl(fd, _LOOP_SET_FD, image_fd)
    try:
        fcntl.ioctl(fd, _LOOP_SET_STATUS64, info)
    except OSError:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, 0x4C01)  # LOOP_CLR_FD
        raise
