"""The ``instancelib`` command (see ``main`` for its verbs).

``parser`` is the grammar, ``instance_commands`` and ``image_commands`` the
verbs, ``terminal`` the attached stdio and pty relay, ``output`` and
``siftool`` what it prints.
"""

from instancelib.cli.main import ERROR_EXIT, main

__all__ = ["ERROR_EXIT", "main"]
