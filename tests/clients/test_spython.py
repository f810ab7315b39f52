"""spython (Singularity's Python client) driving instancelib as its ``singularity``.

spython runs the ``singularity`` on PATH; here that is a recorder which runs the
launcher ``instancelib alias`` writes and notes each command line and our exit
status, so each client call is checked for what it sent and what it got, not
only for raising nothing.  spython reads the logs from the user's real
``~/.singularity/instances/logs/<host>/<user>/`` (from the passwd entry, not
``$HOME`` or ``$SINGULARITY_CONFIGDIR``), so that is where this test's
instances keep them; what the test made there is removed after it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from pathlib import Path

import pytest
import spython.main as spython_main  # the test extra: never skipped for want of it

from instancelib import InstanceRegistry, __version__
from tests.clients.recorder import Recorder

ENTRY = pwd.getpwuid(os.getuid())
LOGS = Path(ENTRY.pw_dir) / ".singularity" / "instances" / "logs" / socket.gethostname() \
    / ENTRY.pw_name


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.delenv("SINGULARITY_CONFIGDIR", raising=False)
    monkeypatch.delenv("SPYTHON_SINGULARITY_VERSION", raising=False)
    config = Path(ENTRY.pw_dir) / ".singularity"
    existed = config.exists()
    recorder = Recorder(tmp_path, "singularity")
    monkeypatch.setenv("PATH", f"{recorder.bindir}:{os.environ['PATH']}")
    yield spython_main.Client, recorder
    for instance in InstanceRegistry(layout="singularity").list():
        instance.stop(force=True)
    if not existed:
        shutil.rmtree(config, ignore_errors=True)
    else:
        for name in recorder.names:
            for suffix in (".out", ".err"):
                (LOGS / f"{name}{suffix}").unlink(missing_ok=True)


def _calls(recorder):
    """The calls since the last look, without spython's ``--version`` check before each
    and without the global ``--quiet`` it puts first when its client is quiet (accepted:
    it is checked with the rest of the global flags in test_main)."""
    return [(status, argv[1:] if argv[:1] == ["--quiet"] else argv)
            for status, argv in recorder.take() if (status, argv) != (0, ["--version"])]


def test_spython_version_and_instances(client, make_image):
    spython, recorder = client
    image = make_image(startscript="#!/bin/sh\necho service-says-hi\necho to-err >&2\n"
                                   "exec sleep 1000\n")
    recorder.names += ["spy-web", "spy-db"]

    assert spython.version() == f"singularity version 3.11.5+instancelib.{__version__}"
    assert recorder.take() == [(0, ["--version"])]

    web = spython.instance(image.path, name="spy-web", options=["--env", "COLOUR=blue"])
    calls = _calls(recorder)
    assert (0, ["instance", "start", "--env", "COLOUR=blue", image.path, "spy-web"]) in calls
    assert (0, ["instance", "list", "--json", "spy-web"]) in calls
    assert all(status == 0 for status, _argv in calls)
    assert web.pid == InstanceRegistry(layout="singularity").get("spy-web").pid

    listed = spython.instances()
    assert [i.name for i in listed] == ["spy-web"]
    assert listed[0].pid == web.pid and listed[0]._image == image.path
    assert (0, ["instance", "list", "--json"]) in _calls(recorder)

    # execute() on the instance; environ replaces the client's environment, and the
    # SINGULARITYENV_ variable in it is read at exec time.
    output = spython.execute(web, ["sh", "-c", "echo $COLOUR $SHAPE"],
                            environ={**os.environ, "SINGULARITYENV_SHAPE": "round"})
    assert output == "blue round\n"
    assert (0, ["exec", "instance://spy-web", "sh", "-c", "echo $COLOUR $SHAPE"]) in \
        _calls(recorder)

    # On an image: the foreground exec, and run.
    assert spython.execute(image.path, ["sh", "-c", "echo fg; exit 0"]) == "fg\n"
    assert _calls(recorder)[-1] == (0, ["exec", image.path, "sh", "-c", "echo fg; exit 0"])
    failed = spython.execute(image.path, ["sh", "-c", "exit 3"], return_result=True)
    assert failed["return_code"] == 3
    assert _calls(recorder)[-1] == (3, ["exec", image.path, "sh", "-c", "exit 3"])
    assert spython.run(image.path, args=["-c", "echo ran"], quiet=True) == "ran"
    assert _calls(recorder)[-1] == (0, ["run", image.path, "-c", "echo ran"])

    # Logs, where spython looks for them.
    assert "service-says-hi" in web.output_logs()
    assert "to-err" in web.error_logs()

    assert web.stop() == 0
    assert _calls(recorder)[-1] == (0, ["instance", "stop", "spy-web"])
    assert spython.instances() == []

    # instance_stopall: Singularity 3's spelling (it read "version 3"), and 0.
    spython.instance(image.path, name="spy-db")
    spython.instance(image.path, name="spy-web")
    _calls(recorder)
    assert spython.instance_stopall() == 0
    calls = _calls(recorder)
    assert calls[-1] == (0, ["instance", "stop", "--all"])
    assert InstanceRegistry(layout="singularity").list() == []
    # With nothing running: Singularity's status, 255.
    assert spython.instance_stopall() == 255
    assert _calls(recorder)[-1] == (255, ["instance", "stop", "--all"])
