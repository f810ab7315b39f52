"""``instancelib alias singularity|apptainer [DIR]``: a launcher under that tool's name.

Clients of Singularity (spython, singularity-compose, scripts) run the
``singularity`` executable on every call, ``--version`` first.  A plain link to
the ``instancelib`` console script works (the name it runs under is what
counts), but pays for Python's ``site`` start-up each time (every ``.pth``
file of the environment: 50-70 ms on this machine).  The launcher written here
starts Python with ``-S`` and the search path of the interpreter that wrote it,
so ``singularity --version`` costs the interpreter's bare start-up.

It is never written over a file instancelib did not write (``--force`` to do
so): a real Singularity stays where it is.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from instancelib.errors import InvalidArgument, NameConflict

if TYPE_CHECKING:
    from instancelib.cli.main import Session

__all__ = ["MARK", "alias_command", "launcher_text", "write_launcher"]

log = logging.getLogger("instancelib")

MARK = "# instancelib launcher (written by `instancelib alias`)"


def launcher_text(name: str) -> str:
    """The launcher's source: this interpreter, without ``site``, on this search path."""
    package_parent = str(Path(__file__).resolve().parents[2])
    search = [package_parent] + [p for p in sys.path if p and p != package_parent]
    return (f"#!{sys.executable} -S\n{MARK}\n"
            "import sys\n"
            f"sys.path[:] = {search!r}\n"
            "from instancelib.cli.quick import entry\n"
            f"raise SystemExit(entry(prog={name!r}))\n")


def write_launcher(name: str, directory: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write the launcher ``directory/name`` (mode 0755); return its path.

    Raises:
        NameConflict: a file instancelib did not write is there (and not ``force``).
        InvalidArgument: the directory does not exist or cannot be written.
    """
    target = Path(directory).expanduser() / name
    if not force and (target.exists() or target.is_symlink()):
        try:
            ours = MARK in target.read_text(errors="replace")[:4096]
        except OSError:
            ours = False
        if not ours:
            raise NameConflict(f"{target} exists and is not an instancelib launcher "
                               "(--force replaces it)")
    temporary = target.with_name(f".{name}.instancelib-{os.getpid()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
        with os.fdopen(fd, "w") as f:
            f.write(launcher_text(name))
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise InvalidArgument(f"cannot write {target}: {err.strerror}") from err
    return target


def alias_command(args: argparse.Namespace, session: Session) -> int:
    directory = args.directory
    if not directory:  # the usual place for a user's commands, made as pip makes it
        directory = os.path.join(os.path.expanduser("~"), ".local", "bin")
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as err:
            raise InvalidArgument(f"cannot make {directory}: {err.strerror} (give a "
                                  "directory: instancelib alias NAME DIR)") from err
    path = write_launcher(args.name, directory, force=args.force)
    log.info("wrote %s: instancelib as %s", path, args.name)
    on_path = [p for p in os.environ.get("PATH", "").split(":") if p]
    if str(path.parent) not in on_path:
        log.warning("%s is not on PATH", path.parent)
    return 0
