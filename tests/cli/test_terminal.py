"""A shell attached to this terminal (``cli/terminal.py``): the pty relay."""

from __future__ import annotations

import os
import pty
import select
import sys
import time


def test_shell_on_a_pseudo_terminal(registry, make_image, start):
    start(make_image(), "sh1")
    env = dict(os.environ, INSTANCELIB_HOME=str(registry.root), TERM="dumb")
    pid, master = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "instancelib", "shell",
                                   "instance://sh1"], env)
    output = b""
    typed = False
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if b"\x1b[6n" in chunk:  # line editing asks where the cursor is: answer
                os.write(master, b"\x1b[1;1R")
            if not typed and b"> " in output:
                os.write(master, b"echo result=$((6*7)); tty; exit 4\r")
                typed = True
    finally:
        if not typed:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert b"result=42" in output
    assert b"/dev/pts/" in output  # the shell has a terminal of its own
    assert os.waitstatus_to_exitcode(status) == 4
