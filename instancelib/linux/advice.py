"""What to check when the kernel refuses a set-up step: one table, keyed by step and errno.

Some errnos mislead (``EPERM`` from ``unshare`` can mean a sysctl, an
AppArmor policy or a seccomp filter; ``EINVAL`` from an overlay mount in a
user namespace means an old kernel).  As bubblewrap does, the message names
the setting to look at.  Only the standard library is imported: PID 1 and
the launcher use this module.
"""

from __future__ import annotations

import errno

__all__ = ["ADVICE", "advice_for", "explain"]

ADVICE: dict[tuple[str, int], str] = {
    ("unshare", errno.EPERM): "creating namespaces needs root (CAP_SYS_ADMIN)",
    ("unshare", errno.EINVAL): "the kernel refused the namespace flags",
    ("unshare", errno.ENOSPC): "a namespace limit is reached; check "
                               "/proc/sys/user/max_*_namespaces",
    ("user namespace", errno.EPERM): (
        "unprivileged user namespaces are not allowed here: check the sysctl "
        "kernel.unprivileged_userns_clone (must be 1), an AppArmor restriction "
        "(kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu), or the seccomp policy "
        "of the container this runs in"),
    ("user namespace", errno.ENOSPC): ("the user namespace limit is reached: check the sysctl "
                                       "user.max_user_namespaces (0 disables user namespaces)"),
    ("user namespace", errno.EINVAL): "this kernel has no user namespaces (CONFIG_USER_NS)",
    ("overlay in a user namespace", errno.EPERM): "overlay mounts in a user namespace need "
                                                  "Linux 5.11 or later",
    ("overlay in a user namespace", errno.EINVAL): "overlay mounts in a user namespace need "
                                                   "Linux 5.11 or later",
}


def advice_for(step: str, err: OSError) -> str | None:
    """The advice for ``err`` in ``step`` (a key of ``ADVICE``), if there is one."""
    return ADVICE.get((step, err.errno or 0))


def explain(step: str, err: OSError) -> str:
    """``err``'s message with the advice for ``step`` appended in parentheses."""
    message = err.strerror or str(err)
    advice = advice_for(step, err)
    return f"{message} ({advice})" if advice else message
