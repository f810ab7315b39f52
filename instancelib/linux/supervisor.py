"""PID 1's service: restarted by its policy, its state written where anyone can read it.

Only PID 1 uses this (the fork-server's interpreter: standard library only).  With
``restart="no"`` and no state file nothing here runs, so an instance that asks for
none of it costs what it did.

- ``on-failure`` restarts the service after a non-zero exit or a death by signal
  (at most ``most`` times when given), ``always`` after any exit.  A stop never
  restarts it.  The delay is docker's: 100 ms, doubling up to 1 min, back to 100 ms
  once the service has run 10 s.
- Every exit, restart and give-up is one ``instancelib:`` line in the instance's
  ``.err`` log, so that following the log tells the story.
- The state (``running``, ``restarting`` with its time, ``exited`` with its code,
  the restart count) is written as one JSON line into the state file the caller
  opened in the registry (``<name>.state``); readers take it as data about the
  service, and the instance's identity from the kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BACKOFF_FIRST", "BACKOFF_MOST", "BACKOFF_RESET", "RESTART_SIGNAL", "STATE_MAX",
           "Service", "parse_policy"]

BACKOFF_FIRST = 0.1   # seconds before the first restart
BACKOFF_MOST = 60.0   # the longest wait between restarts
BACKOFF_RESET = 10.0  # a service that ran this long starts the backoff again from the first
STATE_MAX = 64 << 10  # bytes a state file may hold (a reader refuses more)
# ``instance restart``: PID 1 ends the service and starts it again (``Service.restart_now``).
RESTART_SIGNAL = signal.SIGRTMIN + 4


def parse_policy(value: str) -> tuple[str, int | None]:
    """``"no"``, ``"always"``, ``"on-failure"`` or ``"on-failure:N"`` as (policy, most).

    Raises ``ValueError`` naming the forms (the caller turns it into its own error).
    """
    policy, _, count = value.partition(":")
    if policy in ("no", "always") and not count:
        return policy, None
    if policy == "on-failure":
        if not count:
            return policy, None
        if count.isdigit() and int(count) >= 1:
            return policy, int(count)
    raise ValueError(f"restart must be no, on-failure, on-failure:N (N ≥ 1) or always "
                     f"(got {value!r})")


class Service:
    """The start/run script PID 1 runs, and what happens when it exits."""

    def __init__(self, spawn: Callable[[], int | None], pid: int, *, policy: str = "no",
                 most: int | None = None, log_fd: int | None = None,
                 state_fd: int | None = None) -> None:
        self._spawn = spawn
        self.pid: int | None = pid
        self.policy, self.most = policy, most
        self.log_fd, self.state_fd = log_fd, state_fd
        self.restarts = 0
        self.exit_code: int | None = None
        self.restart_at: float | None = None  # monotonic time of a pending restart
        self._streak = 0        # restarts since the service last ran BACKOFF_RESET
        self._began = time.monotonic()
        self._stopped = False
        self.health: Any = None  # a linux.health.Health, when the plan has a check
        self._on_request = False  # a restart was asked for: start again once it exits
        self._kill_at: float | None = None  # when to SIGKILL a service asked to restart
        self.write_state()

    # -- what PID 1's loop tells us ------------------------------------------------------------

    def exited(self, status: int) -> None:
        """The service ended with ``status`` (negative: killed by that signal)."""
        now = time.monotonic()
        self.pid, self.exit_code = None, status
        self._kill_at = None
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        if self._on_request and not self._stopped:
            self._on_request = False
            self._note(f"the service {how} (a restart was asked for)")
            self._respawn("restarted on request")
            return
        if self._stopped or not self._restarts_after(status):
            if not self._stopped and self.policy != "no":  # (a stop, or Singularity's way:
                self._note(f"the service {how}" + self._why_not(status))  # the log as is)
            self.write_state()
            return
        if now - self._began >= BACKOFF_RESET:
            self._streak = 0
        delay = min(BACKOFF_FIRST * 2 ** self._streak, BACKOFF_MOST)
        self._streak += 1
        self.restart_at = now + delay
        self._note(f"the service {how}; restart {self.restarts + 1} in {delay:g} s "
                   f"(restart={self._policy_text()})")
        self.write_state()

    def stop(self) -> None:
        """A stop was asked for: nothing is restarted from now on."""
        self._stopped = True
        self._on_request = False
        self._kill_at = None
        if self.restart_at is not None:
            self.restart_at = None
            self.write_state()

    def wait(self) -> float | None:
        """Seconds until something is due: a pending restart, or the SIGKILL of a service
        asked to restart (None: nothing)."""
        due = [t for t in (self.restart_at, self._kill_at) if t is not None]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def restart_if_due(self) -> None:
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill_at = None
            if self.pid is not None:
                with contextlib.suppress(OSError):
                    os.killpg(self.pid, signal.SIGKILL)
        if self.restart_at is not None and time.monotonic() >= self.restart_at:
            self.restart_at = None
            self.restarts += 1
            self._respawn(f"restart {self.restarts}")

    def restart_now(self, grace: float = 10.0) -> None:
        """``instance restart``: end the running service (SIGTERM, SIGKILL after ``grace``
        seconds) and start it again as soon as it has exited; one that is not running
        starts at once.  Not counted as a restart."""
        if self._stopped:
            return
        self.restart_at = None
        self._streak = 0
        if self.pid is None:
            self._respawn("restarted on request")
            return
        self._on_request = True
        self._kill_at = time.monotonic() + grace
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGTERM)

    # -- the rest -------------------------------------------------------------------------------

    def _restarts_after(self, status: int) -> bool:
        if self.policy == "always":
            return self.most is None or self.restarts < self.most
        if self.policy == "on-failure":
            return status != 0 and (self.most is None or self.restarts < self.most)
        return False

    def _why_not(self, status: int) -> str:
        if self._stopped or self.policy == "no":
            return ""
        if self.policy == "on-failure" and status == 0:
            return f" (restart={self._policy_text()}: not a failure)"
        return f"; not restarted (restart={self._policy_text()}: {self.restarts} done)"

    def _policy_text(self) -> str:
        return self.policy if self.most is None else f"{self.policy}:{self.most}"

    def _respawn(self, what: str) -> None:
        try:
            self.pid = self._spawn()
        except Exception as err:  # an exec failure (the image changed under it): said
            self.pid = None
            self._note(f"the service could not be started again ({what}): {err}")
        else:
            self._began = time.monotonic()
            if self.health is not None:
                self.health.service_started()
            self._note(f"the service started again ({what}, PID {self.pid} in the instance)"
                       if self.pid is not None else
                       f"the service could not be started again ({what}): no script")
        self.write_state()

    def note(self, text: str) -> None:
        """One ``instancelib:`` line in the instance's ``.err`` log."""
        self._note(text)

    def _note(self, text: str) -> None:
        if self.log_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.log_fd, f"instancelib: {text}\n".encode())

    def state(self) -> dict[str, object]:
        if self.pid is not None:
            state = "running"
        elif self.restart_at is not None:
            state = "restarting"
        else:
            state = "exited"
        now_wall, now = time.time(), time.monotonic()
        return {"service": state, "exit_code": self.exit_code, "restarts": self.restarts,
                "restart": self._policy_text(),
                "restart_at": None if self.restart_at is None
                else round(now_wall + (self.restart_at - now), 3),
                "updated": round(now_wall, 3),
                "health": self.health.state() if self.health is not None else None}

    def write_state(self) -> None:
        if self.state_fd is None:
            return
        data = (json.dumps(self.state(), separators=(",", ":")) + "\n").encode()
        with contextlib.suppress(OSError):
            os.pwrite(self.state_fd, data, 0)
            os.ftruncate(self.state_fd, len(data))
