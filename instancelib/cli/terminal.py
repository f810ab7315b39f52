"""Running a command attached to this terminal: signals forwarded, or a pty relayed."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import termios
import tty

from instancelib.instance import Instance
from instancelib.process import InstanceProcess

__all__ = ["exit_code", "run_attached", "shell_on_pty"]

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2)


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_attached(instance: Instance, command: list[str], env: dict[str, str],
                  cwd: str | None) -> int:
    """Run with this terminal's stdio; Ctrl-C and friends go to the command.

    The handlers are in place before the command starts: a signal that comes
    while it is being started is held, and sent once it runs.
    """
    held: list[int] = []
    running: list[InstanceProcess] = []

    def forward(signum: int, _frame: object) -> None:
        if running:
            running[0].send_signal(signum)
        else:
            held.append(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        running.append(instance.popen(command, env=env, cwd=cwd))
        for signum in held:
            running[0].send_signal(signum)
        return exit_code(running[0].wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _copy_window_size(source: int, target: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)


def shell_on_pty(instance: Instance, command: list[str], env: dict[str, str],
                 cwd: str | None = None) -> int:
    """Relay this terminal to a new pseudo-terminal whose other end the shell owns."""
    master, slave = pty.openpty()
    _copy_window_size(0, slave)
    try:
        process = instance.popen(command, stdin=slave, stdout=slave, stderr=slave, env=env,
                                 cwd=cwd, tty=True)
    finally:
        os.close(slave)
    saved = termios.tcgetattr(0)
    previous = signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(0, master))
    tty.setraw(0)
    try:
        while True:
            try:
                readable, _, _ = select.select([0, master], [], [])
            except InterruptedError:
                continue
            if master in readable:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the shell closed the terminal
                    break
                if not data:
                    break
                os.write(1, data)
            if 0 in readable:
                data = os.read(0, 65536)
                if not data:
                    break
                os.write(master, data)
    finally:
        termios.tcsetattr(0, termios.TCSAFLUSH, saved)
        signal.signal(signal.SIGWINCH, previous)
        os.close(master)
    return exit_code(process.wait())
