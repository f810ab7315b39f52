"""``python -m instancelib``: the command line."""

from instancelib.cli import main

raise SystemExit(main())
