"""The fork-server: a warm, single-threaded process that forks for the caller.

A caller may be a notebook kernel with a dozen threads and a running event
loop.  There ``unshare(CLONE_NEWNS)`` moves only one thread, ``setns`` into a
mount namespace fails with EINVAL and ``fork()`` can deadlock.  So the caller
never forks for us: it talks to this server, started once per caller process
as a fresh interpreter with only the standard library and these modules
loaded, and this server forks.

Requests arrive on a ``SOCK_SEQPACKET`` socket (see ``wire``):

- ``{"op": "start", "plan": ...}`` with fds [channel, stdout log, stderr log]:
  hand the plan and fds to the *spare* PID 1 (see ``launch``; made now if
  none is ready) and reply ``{"ok": true, "init_pid": PID}``.  The new PID 1
  talks to the caller directly over the channel.  A new spare is then made
  in the background, ready for the next start.
- ``{"op": "exec", ...}`` with fds [status socket, stdin, stdout, stderr]:
  fork a joiner (``join.run_join``) and reply ``{"ok": true}``; the joiner
  reports over the status socket and is reaped here when it exits.

The server exits when the caller closes its end (the caller exited); its
spare sees the server's end close and exits too.
Only the standard library is imported.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from instancelib.linux import syscalls, wire
from instancelib.linux.cgroupdirs import remove_empty
from instancelib.linux.join import run_join
from instancelib.linux.launch import run_launcher

__all__ = ["main"]

_SPARE_EXIT_WAIT = 1.0  # seconds an unused spare may take to exit (then its cgroup goes)
_ABANDONED_WAIT = 2.0  # seconds to learn the fate of starts a dead caller left in flight
_KEEP_DIED = 64


class _Spare:
    """A spare PID 1 (or one being made): its host PID and our end of its socket.

    ``flavour`` is the plan's ``userns`` part it was made for: a spare in the
    wrong user namespace (or none) cannot serve a plan that asks for another.
    """

    def __init__(self, sock: socket.socket, flavour: dict[str, Any] | None,
                 cgroup_bases: list[str]) -> None:
        self.sock = sock
        self.flavour = flavour
        self.cgroup_bases = cgroup_bases
        self.cgroup_leaf: str | None = None
        self.pid = 0
        self.pidfd = -1
        self.error: dict[str, Any] | None = None

    def receive_report(self) -> None:
        """Read the launcher's report: the spare's PID, or why none could be made."""
        try:
            message, fds = wire.recv_message(self.sock)
        except OSError as err:
            fds = []
            message = {"event": "error", "step": "make a PID 1", "message": str(err),
                       "errno": err.errno}
        if message is None:
            message = {"event": "error", "step": "make a PID 1",
                       "message": "the launcher exited without reporting", "errno": None}
        if message.get("event") == "spare" and len(fds) == 1:
            self.pid = int(message["pid"])
            self.pidfd = fds[0]
            leaf = message.get("cgroup_leaf")
            self.cgroup_leaf = str(leaf) if leaf else None
        else:
            self.error = message
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        self.sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def discard(self, *, keep_tops: Sequence[str] = ()) -> None:
        """End an unused spare (it sees EOF and exits) and remove its cgroup after it.

        Our tree's top directories go too when empty, except ``keep_tops``:
        the bases of the start being served, which its caller has just made.
        """
        if not self.pid and self.error is None:
            self.receive_report()  # still being made: learn its PID and cgroup first
        self.sock.close()
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                select.select([self.pidfd], [], [], _SPARE_EXIT_WAIT)
            os.close(self.pidfd)
            self.pidfd = -1
        if self.cgroup_leaf:
            remove_empty([os.path.join(base, self.cgroup_leaf) for base in self.cgroup_bases],
                         wait=_SPARE_EXIT_WAIT)
            for base in self.cgroup_bases:
                if base in keep_tops:
                    continue
                with contextlib.suppress(OSError):
                    os.rmdir(base)  # the tree's top, if nothing else is in it


class _Handed:
    """A PID 1 handed to a start, watched until it says "committed" (or dies first).

    ``cgroups`` are the directories its start may have made: its spare's,
    and the ones the caller makes when the spare had none.  If the caller
    dies during the start, nobody else knows them.
    """

    def __init__(self, sock: socket.socket, cgroups: list[str]) -> None:
        self.sock = sock
        self.cgroups = cgroups
        self.died = False

    def resolve(self) -> None:
        """Read its word: "committed", or EOF (it died before the caller recorded it)."""
        try:
            message, fds = wire.recv_message(self.sock)
        except OSError:
            message, fds = None, []
        for fd in fds:
            os.close(fd)
        self.died = message is None or message.get("event") != "committed"
        self.sock.close()


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, _noop)
        # A batch system or a service manager ending the caller's process tree (Slurm's
        # scancel, systemctl stop) signals the server too: it cleans up (its spare and
        # the spare's cgroups) and exits, as when its caller closes the socket.
        for ending in _ENDING:
            signal.signal(ending, _noop)
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)
        self.spare: _Spare | None = None
        self.poller = select.poll()
        self.handed: dict[int, _Handed] = {}   # by socket fd, until resolved
        self.died: list[_Handed] = []          # resolved as died: cleaned if the caller dies

    def serve(self) -> None:
        try:
            self._serve()
        finally:
            if self.spare is not None:
                self.spare.discard()
                self.spare = None
            self._clean_abandoned()

    def _clean_abandoned(self) -> None:
        """The caller is gone: remove the cgroups of the starts it left half-done.

        A PID 1 whose caller died before recording it kills itself at once
        (it sees its channel close); one already committed says so.  So a
        short wait tells every start's fate.
        """
        deadline = time.monotonic() + _ABANDONED_WAIT
        while self.handed and time.monotonic() < deadline:
            ready = select.select(list(self.handed), [], [],
                                  max(0.0, deadline - time.monotonic()))[0]
            for fd in ready:
                handed = self.handed.pop(fd)
                handed.resolve()
                if handed.died:
                    self.died.append(handed)
        remove_empty([d for handed in self.died for d in handed.cgroups], wait=_SPARE_EXIT_WAIT)
        for top in {os.path.dirname(d) for handed in self.died for d in handed.cgroups}:
            with contextlib.suppress(OSError):
                os.rmdir(top)  # our tree's top, if nothing else is in it

    def _serve(self) -> None:
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.poller.register(self.wake_read, select.POLLIN)
        while True:
            for fd, _events in self.poller.poll():
                if fd == self.wake_read:
                    woken = b""
                    with contextlib.suppress(BlockingIOError):
                        woken = os.read(self.wake_read, 4096)
                    _reap_children()
                    if any(number in _ENDING for number in woken):
                        return
                elif self.spare is not None and fd == self.spare.sock.fileno():
                    self.poller.unregister(fd)
                    self.spare.receive_report()
                elif fd in self.handed:
                    self.poller.unregister(fd)
                    handed = self.handed.pop(fd)
                    handed.resolve()
                    if handed.died:  # the caller cleans up; we do if it dies too
                        self.died = [*self.died[-_KEEP_DIED:], handed]
                elif fd == self.sock.fileno() and not self.serve_one():
                    return

    def serve_one(self) -> bool:
        message, fds = wire.recv_message(self.sock)
        if message is None:
            return False
        passed: list[int] = []
        try:
            reply, passed = self.handle(message, fds)
        except Exception as err:  # reply with the failure; keep serving
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}",
                     "errno": getattr(err, "errno", None)}
        finally:
            for received in fds:
                with contextlib.suppress(OSError):
                    os.close(received)
        try:
            wire.send_message(self.sock, reply, passed)
        finally:
            for fd in passed:
                os.close(fd)
        if message.get("op") == "start" and self.spare is None:
            # For the next start (likely alike), while the caller waits on this one.
            plan = message["plan"]
            self.make_spare(plan.get("userns"), list(plan.get("cgroup_bases") or ()))
        return True

    def handle(self, message: dict[str, Any],
               fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        """Carry out one request; return the reply and the fds to send with it."""
        op = message.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}, []
        if op == "start":
            return self.start(message["plan"], fds)
        if op == "spare":  # a caller expecting to start soon: have a PID 1 ready
            if self.spare is None:
                plan = message["plan"]
                self.make_spare(plan.get("userns"), list(plan.get("cgroup_bases") or ()))
            return {"ok": True}, []
        if op == "exec":
            status_fd, *stdio = fds
            pid = self.fork_child()
            if pid == 0:
                try:
                    run_join(message, status_fd, stdio)
                finally:
                    os._exit(1)  # never fall back into the server loop in a child
            return {"ok": True, "joiner": pid}, []
        raise ValueError(f"unknown request {op!r}")

    def start(self, plan: dict[str, Any],
              fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        """Hand the plan to a spare PID 1 (making one first if none is ready).

        The reply carries the PID 1's pidfd, so the caller never has to trust a bare PID.
        """
        flavour = plan.get("userns")
        bases = list(plan.get("cgroup_bases") or ())
        for _attempt in range(2):
            spare = self.take_spare(flavour, bases)
            if spare.error is not None:
                spare.close()
                return {"ok": False, **spare.error}, []
            try:
                wire.send_message(spare.sock, {"plan": plan}, fds)
            except OSError:
                spare.discard(keep_tops=bases)
                continue  # the spare died (killed from outside): make another
            pidfd, spare.pidfd = spare.pidfd, -1
            leaves = [leaf for leaf in (spare.cgroup_leaf, plan.get("cgroup_leaf")) if leaf]
            handed = _Handed(spare.sock, [os.path.join(b, leaf) for leaf in leaves for b in bases])
            self.handed[spare.sock.fileno()] = handed
            self.poller.register(spare.sock.fileno(), select.POLLIN)
            return {"ok": True, "init_pid": spare.pid, "cgroup_leaf": spare.cgroup_leaf}, [pidfd]
        return {"ok": False, "step": "make a PID 1", "errno": None,
                "message": "spare PID 1 processes keep dying"}, []

    def take_spare(self, flavour: dict[str, Any] | None, cgroup_bases: list[str]) -> _Spare:
        spare = self.spare
        if spare is not None and (spare.flavour, spare.cgroup_bases) != (flavour, cgroup_bases):
            with contextlib.suppress(KeyError):
                self.poller.unregister(spare.sock.fileno())
            spare.discard(keep_tops=cgroup_bases)
            spare = None
        if spare is None:
            spare = self.make_spare(flavour, cgroup_bases)
        if not spare.pid and spare.error is None:  # still being made: wait for it
            with contextlib.suppress(KeyError):
                self.poller.unregister(spare.sock.fileno())
            spare.receive_report()
        self.spare = None
        return spare

    def make_spare(self, flavour: dict[str, Any] | None, cgroup_bases: list[str]) -> _Spare:
        """Fork a launcher that makes a spare PID 1; its report is read later."""
        ours, theirs = wire.socketpair()
        pid = self.fork_child()
        if pid == 0:
            ours.close()
            try:
                run_launcher(theirs, flavour, cgroup_bases)
            finally:
                os._exit(1)
        theirs.close()
        self.spare = _Spare(ours, flavour, cgroup_bases)
        self.poller.register(ours.fileno(), select.POLLIN)
        return self.spare

    def fork_child(self) -> int:
        pid = os.fork()
        if pid == 0:
            # Nothing of the server survives in the child but the received fds.
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGCHLD, *_ENDING):
                signal.signal(number, signal.SIG_DFL)
            os.close(self.wake_read)
            os.close(self.wake_write)
            self.sock.close()
            if self.spare is not None:
                self.spare.close()
            for handed in self.handed.values():
                handed.sock.close()
        return pid


_ENDING = (signal.SIGTERM, signal.SIGHUP)


def _noop(_signum: int, _frame: object) -> None:
    return None


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(fd: int) -> None:
    """Serve requests on the inherited socket ``fd`` until the caller goes away."""
    server = _Server(socket.socket(fileno=fd))
    # As any daemon: never pin the caller's directory (its filesystem could not unmount).
    os.chdir("/")
    with contextlib.suppress(OSError):
        syscalls.set_process_title(f"instancelib-forkserver (for pid {os.getppid()})")
    # Objects alive now are shared with every forked child; keeping the
    # collector off them keeps those pages shared (lower PSS per instance).
    gc.freeze()
    server.serve()
