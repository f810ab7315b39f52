"""Where a registry's records and logs are: its root and the directories below it.

Plain strings and the standard library only: the CLI's quick paths
(``records.quick``) use this without the rest of the registry.
"""

from __future__ import annotations

import os
import pwd

from instancelib.errors import InvalidArgument

__all__ = ["LAYOUTS", "SCHEMA", "check_layout", "root_dir", "subdirs", "user_name"]

SCHEMA = 1  # the version of the record files' format (record.py writes it, quick.py reads it)

# Registry layouts: instancelib's own, and Singularity's and Apptainer's (their
# per-user configuration directory and the variable that moves it).  Clients of
# those tools (spython, singularity-compose) read the logs at
# <configdir>/instances/logs/<host>/<user>/<name>.out|.err; the records go beside
# them in a directory of instancelib's own, where neither tool looks.
LAYOUTS: dict[str, tuple[str, str]] = {
    "instancelib": ("INSTANCELIB_HOME", ".instancelib"),
    "singularity": ("SINGULARITY_CONFIGDIR", ".singularity"),
    "apptainer": ("APPTAINER_CONFIGDIR", ".apptainer"),
}


def check_layout(layout: str) -> tuple[str, str]:
    """``(variable, directory)`` of ``layout``; ``InvalidArgument`` for an unknown one."""
    try:
        return LAYOUTS[layout]
    except (KeyError, TypeError):
        raise InvalidArgument(f"unknown registry layout {layout!r} (expected one of "
                              f"{', '.join(LAYOUTS)})") from None


def root_dir(layout: str = "instancelib", home: str | None = None) -> str:
    """The caller's root: the layout's variable when set, else ``~/.<tool>`` (``home``:
    another user's home, whose root never comes from this environment)."""
    variable, directory = check_layout(layout)
    if home is not None:
        return os.path.join(home, directory)
    configured = os.environ.get(variable)
    if configured:
        return os.path.abspath(configured)
    return os.path.join(os.path.expanduser("~"), directory)


def user_name(uid: int) -> str:
    """The passwd name of ``uid`` (Singularity's layout has it); the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def subdirs(layout: str, host: str, user: str) -> dict[str, tuple[str, ...]]:
    """The directories below the root of the records (``instances``) and the logs."""
    if layout == "instancelib":
        return {"instances": ("instances", host), "logs": ("logs", host)}
    return {"instances": ("instances", "instancelib", host, user),
            "logs": ("instances", "logs", host, user)}
