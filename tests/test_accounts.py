"""An ordinary user has a name inside: their passwd and group entries in copies of the image's."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from instancelib.linux import accounts
from tests.users import USER_A, as_user, make_shared, remove_shared


def test_merge_drops_lines_claiming_the_name_or_id_and_appends_the_entry():
    image = ("root:x:0:0:root:/root:/bin/sh\nubuntu:x:1000:1000::/home/ubuntu:/bin/sh\n"
             "# a comment: keeps\nalice:x:1500:1500::/old:/bin/sh\n")
    merged = accounts.merge_entry(image, "alice:x:1000:1000:Alice:/home/alice:/bin/bash")
    assert merged == ("root:x:0:0:root:/root:/bin/sh\n# a comment: keeps\n"
                      "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n")
    assert accounts.merge_entry("", "g:x:5:") == "g:x:5:\n"


def test_the_images_file_is_read_inside_the_root_only(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "host-passwd"
    outside.write_text("secret:x:0:0::/:/bin/sh\n")
    # An absolute link restarts at the root (no such file there), never the host's file.
    (root / "etc" / "passwd").symlink_to(outside)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert accounts.read_in_root(str(root), fd, "/etc/passwd") == ""
        (root / "etc" / "passwd").unlink()
        os.mkfifo(root / "etc" / "passwd")  # would hang a reader: not a regular file
        assert accounts.read_in_root(str(root), fd, "/etc/passwd") == ""
        (root / "etc" / "passwd").unlink()
        (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        assert accounts.read_in_root(str(root), fd, "/etc/passwd").startswith("root:x:0:0")
    finally:
        os.close(fd)


_CHECK = """
from instancelib import Image, Instance, InstanceRegistry
import os, tempfile
registry = InstanceRegistry(tempfile.mkdtemp())
instance = Instance.start(Image(IMAGE), "named", registry=registry)
try:
    print(instance.exec(["whoami"]).stdout.strip())
    print(instance.exec(["id", "-gn"]).stdout.strip())
    print(instance.exec(["sh", "-c", "grep -c '^root:' /etc/passwd"]).stdout.strip())
finally:
    instance.stop()
with open(os.path.join(IMAGE, "etc", "passwd")) as f:
    print("image-changed" if f":{os.getuid()}:" in f.read() else "image-untouched")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to ilib-a (root only; the "
                    "unprivileged pass runs test_whoami_in_my_own_instance as that user)")
def test_whoami_names_an_ordinary_user_inside():
    shared = make_shared()
    try:
        result = as_user(USER_A, shared, _CHECK)
    finally:
        remove_shared(shared)
    entry = pwd.getpwnam(USER_A)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name, "1",
                                     "image-untouched"]


def test_whoami_in_my_own_instance(make_image, start):
    if os.geteuid() == 0:
        instance = start(make_image(), "root-named")
        assert instance.exec(["whoami"]).stdout == "root\n"  # root's entry is the image's
        return
    entry = pwd.getpwuid(os.getuid())
    instance = start(make_image(), "named")
    assert instance.exec(["whoami"]).stdout == f"{entry.pw_name}\n"
    assert instance.exec(["id", "-gn"]).stdout == f"{grp.getgrgid(entry.pw_gid).gr_name}\n"
