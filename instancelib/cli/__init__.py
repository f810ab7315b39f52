"""The ``instancelib`` command (see ``main`` for its verbs).

``quick`` is the entry point (it answers ``--version`` and plain listings
itself), ``parser`` the grammar, ``instance_commands``, ``listing`` and
``image_commands`` the verbs, ``terminal`` the attached stdio and pty relay,
``output`` and ``siftool`` what it prints, ``alias`` the launcher it writes.
Importing this package imports none of them but ``quick``.
"""

from instancelib.cli.quick import entry as main

__all__ = ["ERROR_EXIT", "main"]

ERROR_EXIT = 255
