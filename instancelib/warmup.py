"""Getting the first start ready ahead: the fork-server and a spare PID 1, in the background.

A new process's first ``Instance.start`` would otherwise start the fork-server (a Python
interpreter and its imports, ~45 ms) and wait for it to make a PID 1.  ``begin`` is
called as the start path is first looked up (``instancelib.Image``, ``Instance``, ...)
and by the command's verbs that start instances, before their ~100 ms of imports: it
starts the server, imports ``cgroups.tree`` (which the start path needs first) while the
server starts, and leaves a daemon thread to plan a default start's cgroup and ask the
server for a spare PID 1 of that kind, which the server then makes on another CPU while
the caller is still importing the rest.
``INSTANCELIB_PRESTART=0`` turns it off.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from instancelib.linux import client

__all__ = ["begin"]

log = logging.getLogger("instancelib")

_begun: list[bool] = []


def begin() -> None:
    """Start the fork-server and ask for the first spare PID 1 (once per process)."""
    if _begun or not client.prestart_enabled():
        return
    _begun.append(True)
    client.prestart()
    # What the thread needs is imported here, in the caller's thread, while the server
    # starts: the start path imports it anyway, and the thread then imports nothing (two
    # threads importing at once once broke an import on CPython 3.13.0:
    # "NameError: name 'sys' is not defined" in importlib's _find_and_load).
    from instancelib.cgroups import tree  # noqa: PLC0415
    from instancelib.linux.userns import user_namespace_plan  # noqa: PLC0415

    threading.Thread(target=_ask_for_a_spare, args=(tree, user_namespace_plan),
                     name="instancelib-warm-up", daemon=True).start()


def _ask_for_a_spare(tree: Any, user_namespace_plan: Any) -> None:
    """What the first start with default options will ask for: its spare, made now."""
    try:
        userns, _note = user_namespace_plan(fakeroot=False)
        cgroup_plan = tree.plan("warm-up", None)
        client.get_forkserver().request({"op": "spare", "plan": {
            "userns": userns, "cgroup_bases": cgroup_plan.bases() if cgroup_plan else []}})
    except Exception as err:  # the first start will say what is wrong, if anything
        log.debug("no spare PID 1 made ahead: %s", err)
