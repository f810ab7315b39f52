"""The ``pid_file`` of ``Instance.start``: written so that nobody can redirect it.

Root writes pid files into places like ``/run`` and ``/var/run`` (a link to
``/run``), which systemd units name with ``PIDFile=``.  A pid file is a
caller's path, hostile until checked, so:

- its directory is resolved from ``/`` one component at a time, each opened
  with ``O_PATH | O_NOFOLLOW``; a link is followed only if it belongs to
  root or to the caller, and every directory on the way must belong to one of
  them and not be writable by others unless it is sticky (``/tmp``): nobody
  else can swap a component under us;
- the directory is held open from the start's beginning to its end, and the
  file is written as a new temporary file there and renamed over the name:
  an existing link, FIFO or file at the name is replaced, never opened (a
  FIFO cannot hang the start);
- a bad path fails the start before anything is started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from instancelib.errors import StartError
from instancelib.linux import pathwalk

__all__ = ["PidFile"]



class PidFile:
    """A pid file's directory, resolved and held; ``write`` puts the PID there."""

    def __init__(self, path: str | os.PathLike[str], name: str) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.name = name
        directory, self.base = os.path.split(self.path)
        if self.base in ("", ".", ".."):
            raise self._error("the pid file's path names a directory")
        self.dir_fd = self._resolve_directory(directory)

    def _error(self, message: str, err: int | None = None) -> StartError:
        return StartError(f"cannot write the pid file: {message}", name=self.name,
                          path=self.path, errno=err)

    def _resolve_directory(self, directory: str) -> int:
        trusted = {0, os.geteuid()}

        def check(part: str, info: os.stat_result) -> None:
            if stat.S_ISLNK(info.st_mode):
                if info.st_uid not in trusted:
                    raise self._error(f"the link {part} on the way belongs to UID "
                                      f"{info.st_uid}")
                return
            unsafe = self._unsafe_directory(info, trusted)
            if unsafe:
                raise self._error(f"the directory {part} {unsafe}")

        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            check("/", os.fstat(root))
            fd = pathwalk.open_directory(root, directory, flags=os.O_PATH, check=check)
        except OSError as err:
            raise self._error(f"{err.filename}: {err.strerror}" if err.filename else
                              err.strerror or str(err), err.errno) from err
        finally:
            os.close(root)
        if fd is None:
            raise self._error("its directory does not exist", errno.ENOENT)
        return fd

    @staticmethod
    def _unsafe_directory(info: os.stat_result, trusted: set[int]) -> str | None:
        if info.st_uid not in trusted:
            return f"belongs to UID {info.st_uid}"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return "is writable by others (and not sticky)"
        return None

    def write(self, pid: int) -> None:
        """Write ``PID\\n``: a new file renamed into place (0644)."""
        temporary = f".{self.base}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=self.dir_fd)
            try:
                os.write(fd, f"{pid}\n".encode())
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
            os.rename(temporary, self.base, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except BaseException as err:  # an interrupted write leaves no debris either
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=self.dir_fd)
            if not isinstance(err, OSError):
                raise
            raise self._error(err.strerror or str(err), err.errno) from err

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
