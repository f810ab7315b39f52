"""Run a host command as root of a fakeroot user namespace (builds by ordinary users).

A build by an ordinary user runs ``%post`` as root of a user namespace whose
subordinate IDs (``/etc/subuid``) own some of the files it makes.  Outside
that namespace the user may not read or remove those files; inside a
namespace with the same maps, as its root, they may.  ``mksquashfs`` and the
removal of a build's scratch tree run that way::

    python -m instancelib.linux.fakerootexec '<maps as JSON>' ARGV...

The maps are those of ``userns.user_namespace_plan(fakeroot=True)``.
The process enters the namespace (single-threaded: a fresh interpreter) and
executes ARGV; its exit status is the command's (127 when it cannot run,
126 when the namespace cannot be made, with the reason on stderr).

Only the standard library is imported.
"""

from __future__ import annotations

import json
import os
import sys

from instancelib.linux import userns

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Enter the user namespace described by ``argv[0]`` and execute ``argv[1:]``."""
    if len(argv) < 2:
        sys.stderr.write("usage: python -m instancelib.linux.fakerootexec MAPS ARGV...\n")
        return 2
    plan = json.loads(argv[0])
    try:
        userns.enter_user_namespace(plan["uid_map"], plan["gid_map"],
                                    helpers=bool(plan.get("helpers")))
    except OSError as err:
        sys.stderr.write(f"cannot enter the fakeroot user namespace: {err.strerror}\n")
        return 126
    try:
        os.execvp(argv[1], argv[1:])
    except OSError as err:
        sys.stderr.write(f"cannot run {argv[1]}: {err.strerror}\n")
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
