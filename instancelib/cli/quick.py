"""The command's entry point, and the two calls clients make most, answered without the rest.

spython runs ``singularity --version`` before nearly every call, and clients
list instances all the time, each in a new process.  So the entry point
answers ``--version``/``version`` and a plain ``instance list [--json]
[NAME]`` itself, importing no more than the standard library it needs (no
``typing``, ``logging``, ``argparse`` or ``attrs``: each costs more here than
the answer), and hands every other command line, and any listing the quick
reader declines (``records.quick``), to ``cli.main``.
"""

from __future__ import annotations

import os
import sys

from instancelib.cli.personality import GLOBAL_FLAGS, Personality, personality_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["entry", "quick_answer"]


def quick_answer(argv: Sequence[str], personality: Personality) -> bool:
    """Answer ``--version``, ``version`` and a plain listing; False: the full command line."""
    rest = [arg for arg in argv if arg not in GLOBAL_FLAGS]
    if rest == ["--version"]:
        sys.stdout.write(personality.version_line + "\n")
        return True
    if rest == ["version"]:
        sys.stdout.write(personality.version + "\n")
        return True
    if rest[:2] == ["instance", "list"]:
        return _quick_list(rest[2:], personality)
    return False


def _quick_list(options: list[str], personality: Personality) -> bool:
    as_json = any(option in ("-j", "--json") for option in options)
    others = [option for option in options if option not in ("-j", "--json")]
    if len(others) > 1 or any(option.startswith("-") for option in others):
        return False
    from instancelib.records import layout, quick  # noqa: PLC0415 (see the module doc)

    uid = os.geteuid()
    root = layout.root_dir(personality.layout)
    name = layout.user_name(uid) if personality.layout != "instancelib" else ""
    parts = layout.subdirs(personality.layout, os.uname().nodename, name)
    found = quick.running_records(root, parts, uid, others[0] if others else "*")
    if found is None:
        return False
    logs = os.path.join(root, *parts["logs"])
    from instancelib.cli.output import format_instances  # noqa: PLC0415

    sys.stdout.write(format_instances(
        [(r["instance"], r["pid"], r["img"], r["ip"],
          os.path.join(logs, f"{r['instance']}.out"), os.path.join(logs, f"{r['instance']}.err"))
         for r in found], as_json=as_json))
    return True


def entry(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line (``prog``: the name it runs under); return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if quick_answer(arguments, personality_of(prog)):
        return 0
    from instancelib.cli.main import main  # noqa: PLC0415 (see the module doc)

    return main(arguments, prog=prog)
