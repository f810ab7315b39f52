"""``network="none"``: a network namespace of the instance's own, only ``lo``, up.

Real namespaces and real traffic, only to 127.0.0.1 inside the instance and
on the host.  Runs in both passes: an ordinary user gets ``none`` too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from instancelib import InvalidArgument, Unsupported
from tests.helpers import free_port, instance_processes, wait_for

# A service listening on PORT, inside the instance's own 127.0.0.1 (its files in the
# writable root: /tmp is the host's).
HTTPD = "#!/bin/sh\nmkdir -p /www && echo hello-from-$1 > /www/index.html\n" \
        "exec httpd -f -p 127.0.0.1:$2 -h /www\n"


def test_none_has_only_lo_and_it_is_up(image, start):
    instance = start(image, network="none", writable_tmpfs=True)
    assert instance.exec(["ls", "/sys/class/net"]).stdout.split() == ["lo"]
    flags = int(instance.exec(["cat", "/sys/class/net/lo/flags"]).stdout, 16)
    assert flags & 0x1, "lo is up"
    # exec'd commands are in the namespace too, as PID 1 and the service are.
    own = os.readlink(f"/proc/{instance.pid}/ns/net")
    assert own != os.readlink("/proc/self/ns/net")
    assert instance.exec(["readlink", "/proc/self/ns/net"]).stdout.strip() == own
    assert instance.record.namespaces & 0x40000000   # CLONE_NEWNET: joined by exec


def test_two_instances_listen_on_one_port_each_in_its_own_network(make_image, start):
    port = free_port()
    image = make_image(startscript=HTTPD)
    first = start(image, "one", network="none", writable_tmpfs=True, args=["one", str(port)])
    second = start(image, "two", network="none", writable_tmpfs=True, args=["two", str(port)])
    for instance, name in ((first, "one"), (second, "two")):
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda i=instance, u=url: i.exec(["wget", "-q", "-O-", u]).returncode == 0)
        assert instance.exec(["wget", "-q", "-O-", url]).stdout == f"hello-from-{name}\n"
    with socket.socket() as client, pytest.raises(ConnectionRefusedError):
        client.connect(("127.0.0.1", port))          # the host's 127.0.0.1 is another one
    assert first.ip == "" and second.ip == ""


def test_dns_servers_are_the_only_ones_in_resolv_conf(image, start):
    instance = start(image, dns="192.0.2.53, 2001:db8::53")
    assert instance.exec(["cat", "/etc/resolv.conf"]).stdout == (
        "nameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    assert instance.exec(["sh", "-c", "echo x > /etc/resolv.conf"]).returncode != 0  # read-only


def test_an_instance_with_its_own_network_has_its_name_in_etc_hosts(image, start):
    named = start(image, "named", network="none")
    assert "127.0.1.1\tnamed\n" in named.exec(["cat", "/etc/hosts"]).stdout
    host = start(image, "hostname", network="none", hostname="svc.local")
    assert "127.0.1.1\tsvc.local\n" in host.exec(["cat", "/etc/hosts"]).stdout
    assert host.exec(["hostname"]).stdout.strip() == "svc.local"


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"network": "none", "network_args": "portmap=80/tcp"}, InvalidArgument, "need a network"),
    ({"network_args": ["portmap=80/tcp"]}, InvalidArgument, "host's network"),
    ({"network": ["none", "bridge"]}, InvalidArgument, "cannot be combined"),
    ({"network": "no such!"}, InvalidArgument, "network must be"),
    ({"network": "nosuch"}, InvalidArgument, "no network named 'nosuch'"),
    ({"network": "bridge", "network_args": "bogus=1"}, InvalidArgument, "unsupported"),
    ({"network": "bridge", "network_args": "portmap=80:8080/sctp"}, InvalidArgument,
     "tcp and udp"),
    ({"dns": "dns.example"}, InvalidArgument, "not an IP address"),
])
def test_bad_network_options_fail_before_anything_starts(  # noqa: PLR0917
        image, start, registry, options, error, match):
    before = instance_processes()
    with pytest.raises(error, match=match):
        start(image, "bad", **options)
    assert registry.records() == [] and instance_processes() == before


def test_an_unsupported_network_definition_is_refused_by_name(image, start, tmp_path,
                                                              monkeypatch):
    (tmp_path / "odd.conflist").write_text(
        '{"cniVersion": "1.0.0", "name": "odd", "plugins": [{"type": "macvlan"}]}')
    monkeypatch.setenv("INSTANCELIB_NETWORK_DIR", str(tmp_path))
    with pytest.raises(Unsupported, match="'macvlan' plugin"):
        start(image, network="odd")


def _cli(registry, *args):  # type: ignore[no-untyped-def]
    env = dict(os.environ, INSTANCELIB_HOME=str(registry.root))
    return subprocess.run([sys.executable, "-m", "instancelib", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_cli_flags(image, registry):
    started = _cli(registry, "instance", "start", "--network", "none", "--dns", "192.0.2.1",
                   image.path, "cli-none")
    assert started.returncode == 0, started.stderr
    instance = registry.get("cli-none")
    assert instance.exec(["ls", "/sys/class/net"]).stdout.split() == ["lo"]
    assert instance.options["network"] == ["none"] and instance.options["dns"] == ["192.0.2.1"]
    # singularity-compose's form: literal quotes around the value, removed as CSV; with
    # "none" the map has no network to apply to: a clear error, nothing left.
    refused = _cli(registry, "instance", "start", "--network", "none", "--network-args",
                   '"portmap=8080:80/tcp"', image.path, "cli-refused")
    assert refused.returncode == 255 and "need a network" in refused.stderr
    assert refused.stderr.startswith("FATAL:") and "Traceback" not in refused.stderr
    bad = _cli(registry, "instance", "start", "--net", "--network-args", '"portmap=x/tcp"',
               image.path, "cli-bad")
    assert bad.returncode == 255 and "portmap=x/tcp" in bad.stderr
    assert [i.name for i in registry.list()] == ["cli-none"]


def test_an_instance_with_its_own_network_may_bind_low_ports_as_any_user(image, start):
    """The namespace's ports are the instance's: port 80 without root, for users too."""
    box = start(image, network="none")
    assert box.exec(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]).stdout == "0\n"
    # nc gives up after a second by itself, and holds none of exec's pipes.
    listen = "timeout 1 nc -l -p 80 </dev/null >/dev/null 2>&1 & sleep 0.3; netstat -ltn"
    script = f"if [ \"$(id -u)\" = 0 ]; then exec su -s /bin/sh nobody -c '{listen}'; " \
             f"else {listen}; fi"                       # never as root inside
    bound = box.exec(["sh", "-c", script], timeout=20)
    assert ":80 " in bound.stdout, bound.stderr
