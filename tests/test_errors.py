"""Error messages are composed from the error's facts."""

from __future__ import annotations

import errno

from instancelib import InstanceError, NotFound, StartError


def test_message_carries_name_step_path_and_errno():
    err = StartError("mount failed", name="web", step="bind /a to /b", path="/a",
                     errno=errno.ENOENT, detail="tail line")
    assert str(err) == ("instance 'web': bind /a to /b: mount failed: /a "
                        "(No such file or directory)\ntail line")
    assert "StartError('mount failed'" in repr(err)


def test_plain_message_and_public_module():
    assert str(NotFound("gone")) == "gone"
    assert NotFound.__module__ == "instancelib"
    assert isinstance(NotFound("x"), (InstanceError, LookupError))
