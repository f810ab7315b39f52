"""``Instance.start(..., exist_ok=True)``: a retrying engine gets the running instance back."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from instancelib import Instance, Limits, NameConflict


def test_the_same_start_again_returns_the_running_instance(image, start, registry, tmp_path):
    first = start(image, "task", env={"TOKEN": "s3cret"}, binds=[f"{tmp_path}:/data"])
    again = start(image, "task", env={"TOKEN": "s3cret"}, binds=[f"{tmp_path}:/data"],
                  exist_ok=True, pid_file=tmp_path / "task.pid")
    assert (again.pid, again.name) == (first.pid, first.name)
    assert [i.name for i in registry.list()] == ["task"]
    assert (tmp_path / "task.pid").read_text() == f"{first.pid}\n"
    # The returned object is a full one: its environment is the start's.
    assert again.exec(["sh", "-c", "echo $TOKEN"]).stdout == "s3cret\n"
    # The record keeps a digest of env, never the values.
    assert "s3cret" not in registry.record_path("task").read_text()


@pytest.mark.parametrize(("changed", "words"), [
    ({"env": {"TOKEN": "other"}}, "env_digest:"),
    ({"writable_tmpfs": True}, "writable_tmpfs: False running, True asked"),
    ({"args": ["x"]}, "args: [] running, ['x'] asked"),
    ({"limits": Limits(pids_limit=7)}, "limits: {} running, {'pids_limit': 7} asked"),
])
def test_other_settings_are_a_conflict_saying_what_differs(image, start, registry, changed,
                                                           words):
    first = start(image, "task", env={"TOKEN": "s3cret"})
    with pytest.raises(NameConflict) as raised:
        start(image, "task", exist_ok=True, **{"env": {"TOKEN": "s3cret"}, **changed})
    message = str(raised.value)
    assert message.startswith("instance task already exists with other settings (")
    assert words in message and "s3cret" not in message
    assert [(i.name, i.pid) for i in registry.list()] == [("task", first.pid)]


def test_another_image_is_a_conflict(make_image, start):
    start(make_image(), "task")
    other = make_image()
    with pytest.raises(NameConflict, match=r"image: .* running, .* asked"):
        start(other, "task", exist_ok=True)


def test_without_exist_ok_a_running_name_is_still_a_conflict(image, start):
    start(image, "task")
    with pytest.raises(NameConflict, match="instance task already exists"):
        start(image, "task")


def test_nothing_running_starts_one(image, start):
    instance = start(image, "fresh", exist_ok=True)
    assert instance.is_running()


def test_concurrent_retries_end_with_one_instance(image, registry):
    results: list[object] = []

    def task() -> None:
        try:
            results.append(Instance.start(image, "once", registry=registry, exist_ok=True).pid)
        except Exception as err:  # the test reports it
            results.append(err)

    threads = [threading.Thread(target=task) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4 and len(set(results)) == 1, results
    assert [i.name for i in registry.list()] == ["once"]


def test_a_retry_from_another_process_gets_the_same_instance(image, registry):
    first = Instance.start(image, "shared", registry=registry)
    code = ("from instancelib import Instance, Image, InstanceRegistry\n"
            f"r = InstanceRegistry({str(registry.root)!r})\n"
            f"print(Instance.start(Image({image.path!r}), 'shared', registry=r, "
            "exist_ok=True).pid)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == first.pid
