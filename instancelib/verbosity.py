"""``VERBOSE``: the logging level of routine notes (between INFO and DEBUG).

Singularity shows its VERBOSE messages only with ``-v`` (and ``-d``): how an
image was mounted (a loop device, FUSE), the fallbacks a start took (the host's
``/proc`` or ``/sys`` bound), cache hits.  instancelib logs those at this level
on the ``instancelib`` logger; the CLI shows them with ``-v``/``-d``.
"""

import logging

__all__ = ["VERBOSE"]

VERBOSE = 15
logging.addLevelName(VERBOSE, "VERBOSE")
