"""The caller's passwd and group entries in an instance's ``/etc/passwd`` and ``/etc/group``.

As Singularity does for a user who is not root inside: a copy of the image's
file (never the image's file itself), without lines that claim the user's
name or ID, and the host's entry for the user appended, so ``whoami``, ``id``
and ``ls -l`` name them.  PID 1 reads the image's file after the image is
mounted, inside the root (no link leads it out), bounded in size.

Only the standard library is imported: instance PID 1 uses this module.
"""

from __future__ import annotations

import os
import stat

from instancelib.linux import pathwalk

__all__ = ["MAX_SIZE", "merge_entry", "read_in_root"]

MAX_SIZE = 4 << 20  # an image's passwd or group file larger than this is not read


def merge_entry(image_text: str, entry: str) -> str:
    """``image_text`` without lines whose name or ID (fields 1 and 3) are ``entry``'s,
    then ``entry`` (one ``name:x:id:...`` line)."""
    fields = entry.rstrip("\n").split(":")
    name, number = fields[0], fields[2] if len(fields) > 2 else None
    kept = []
    for line in image_text.splitlines():
        parts = line.split(":")
        if not line.startswith("#") and len(parts) > 2 and (
                parts[0] == name or parts[2] == number):
            continue
        kept.append(line)
    return "".join(f"{line}\n" for line in kept) + entry.rstrip("\n") + "\n"


def read_in_root(root: str, root_fd: int, path: str) -> str:
    """The text of the regular file ``path`` inside ``root`` ("" if it is missing, not a
    regular file, or too large)."""
    try:
        canonical, exists = pathwalk.resolve_in_root(root, path)
        if not exists:
            return ""
        handle = pathwalk.open_in_root(root_fd, canonical)
    except OSError:
        return ""
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SIZE:
            return ""
        fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return ""
    finally:
        os.close(handle)
    try:
        data = os.read(fd, MAX_SIZE + 1)
    finally:
        os.close(fd)
    return data[:MAX_SIZE].decode("utf-8", errors="replace")
