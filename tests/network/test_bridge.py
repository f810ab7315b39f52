"""Bridge networks: veths on a bridge, addresses, reachability, clean-up.

Every test runs its instances from a process in a network namespace the test
makes (``unshare --net``), which stands for the host: the bridge, the veths
and all traffic live and die in it, and nothing is added to the machine's own
network.  The allocations go to a temporary state directory.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from instancelib import Unsupported
from instancelib.linux.userns import has_host_root
from tests.network.hostns import END_WORLD, HTTPD, JOIN_WORLD, in_own_network

ROOT_ONLY = pytest.mark.skipif(not has_host_root(), reason="needs root: bridges and veths are "
                               "root's (an ordinary user's case is tested below)")
@ROOT_ONLY
def test_bridge_instances_reach_each_other_and_the_host_reaches_them(make_image, tmp_path):
    out = in_own_network(tmp_path, make_image(startscript=HTTPD).path, """
a, b = start("a"), start("b")
out["ips"] = [a.ip, b.ip]
out["a_to_b"] = a.exec(["wget", "-q", "-O-", f"http://{b.ip}/"]).stdout
out["host_to_a"] = None
for attempt in range(100):
    try:
        out["host_to_a"] = fetch(a.ip); break
    except OSError:
        time.sleep(0.05)
out["inside"] = a.exec(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
out["route"] = a.exec(["ip", "route"]).stdout
out["listed"] = [[r.name, r.ip] for r in registry.records()]
host_ends = [i["host_ifname"] for x in (a, b) for i in x.record.interfaces]
out["links_up"] = [l for l in host_ends if l in links()]
a.stop(); b.stop()
out["links_after"] = [l for l in host_ends if l in links()]
out["bridge_kept"] = "sbr0" in links()
""")
    assert out["ips"] == ["10.22.0.2", "10.22.0.3"]
    assert out["a_to_b"] == "hi-b\n" and out["host_to_a"] == "hi-a\n"
    assert "10.22.0.2/16" in out["inside"] and "default via 10.22.0.1 dev eth0" in out["route"]
    assert out["listed"] == [["a", "10.22.0.2"], ["b", "10.22.0.3"]]   # instance list's IP
    assert len(out["links_up"]) == 2 and out["links_after"] == []       # stop removed them
    assert out["bridge_kept"]                                           # shared: it stays


@ROOT_ONLY
def test_addresses_are_distinct_reused_and_can_be_requested(make_image, tmp_path):
    out = in_own_network(tmp_path, make_image().path, """
first = start("first")
asked = start("asked", network_args=["IP=10.22.7.7"])
out["asked"] = asked.ip
try:
    start("clash", network_args="IP=10.22.7.7")
except NameConflict as err:
    out["clash"] = str(err)
out["clash_left"] = [r.name for r in registry.records()]
for_reuse = first.ip
first.stop()
out["reused"] = start("again").ip == for_reuse
many = [start(f"m{n}") for n in range(10)]
out["distinct"] = len({m.ip for m in many} | {asked.ip}) == 11
""")
    assert out["asked"] == "10.22.7.7"
    assert "IP=10.22.7.7" in out["clash"] and "taken by instance 'asked'" in out["clash"]
    assert out["clash_left"] == ["asked", "first"]     # nothing of the clash is left
    assert out["reused"] and out["distinct"]


@ROOT_ONLY
def test_30_concurrent_starts_get_30_distinct_addresses(make_image, tmp_path):
    out = in_own_network(tmp_path, make_image().path, """
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(max_workers=10) as pool:
    started = list(pool.map(lambda n: start(f"c{n}"), range(30)))
out["ips"] = [i.ip for i in started]
out["inside"] = [i.exec(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout for i in started]
out["held"] = len([f for f in os.listdir(work / "state" / "bridge") if f != ".lock"])
registry.stop()
out["held_after"] = sorted(os.listdir(work / "state" / "bridge"))
""")
    assert len(set(out["ips"])) == 30
    assert all(f"{ip}/16" in inside for ip, inside in
               zip(out["ips"], out["inside"], strict=True))
    assert out["held"] == 30 and out["held_after"] == [".lock"]


@ROOT_ONLY
def test_an_instance_killed_from_outside_frees_its_address_and_links(make_image, tmp_path):
    out = in_own_network(tmp_path, make_image().path, """
victim = start("victim")
address, host_end = victim.ip, victim.record.interfaces[0]["host_ifname"]
os.kill(victim.pid, signal.SIGKILL)
deadline = time.monotonic() + 10
while registry.list() and time.monotonic() < deadline:
    time.sleep(0.02)
out["pruned"] = registry.list() == []
while host_end in links() and time.monotonic() < deadline:
    time.sleep(0.02)
out["link_gone"] = host_end not in links()
out["held"] = sorted(os.listdir(work / "state" / "bridge"))
out["reused"] = start("next").ip == address
""")
    assert out["pruned"] and out["link_gone"]
    assert out["held"] == [".lock"]           # released when it was pruned
    assert out["reused"]


def test_an_ordinary_users_named_network_is_planned_as_pasta(monkeypatch):
    from instancelib.network import pasta  # noqa: PLC0415
    from instancelib.network.plan import plan_network  # noqa: PLC0415

    monkeypatch.setattr("instancelib.network.plan.has_host_root", lambda: False)
    monkeypatch.setattr(pasta, "tun_usable", lambda: True)
    plan = plan_network(["bridge"], ["portmap=8080:80/tcp"])
    assert plan.namespace and plan.networks == () and plan.user_mode is not None
    assert plan.user_mode.name == "bridge" and [str(m) for m in plan.user_mode.port_maps] == [
        "8080:80/tcp"]
    with pytest.raises(Unsupported, match="the instance's only one"):
        plan_network(["bridge", "ptp"], [])
    monkeypatch.setattr(pasta, "tun_usable", lambda: False)
    with pytest.raises(Unsupported, match="pasta needs /dev/net/tun, which is mode"):
        plan_network(["bridge"], [])


@ROOT_ONLY
def test_ptp_instances_are_routed_to_and_from_the_host(make_image, tmp_path):
    out = in_own_network(tmp_path, make_image(startscript=HTTPD).path, """
import threading, http.server
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"from-host\\n")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("0.0.0.0", 0), Hello)
threading.Thread(target=server.serve_forever, daemon=True).start()
p = start("p", network="ptp")
out["ip"] = p.ip
out["inside"] = p.exec(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
out["route"] = p.exec(["ip", "route"]).stdout
for attempt in range(100):
    try:
        out["host_to_p"] = fetch(p.ip); break
    except OSError:
        time.sleep(0.05)
port = server.server_address[1]
out["p_to_host"] = p.exec(["wget", "-q", "-O-", f"http://10.23.0.1:{port}/"]).stdout
host_end = p.record.interfaces[0]["host_ifname"]
p.stop()
out["link_after"] = host_end in links()
server.shutdown()
""")
    assert out["ip"] == "10.23.0.2" and "10.23.0.2/32" in out["inside"]
    assert "default via 10.23.0.1 dev eth0" in out["route"]
    assert out["host_to_p"] == "hi-p\n" and out["p_to_host"] == "from-host\n"
    assert not out["link_after"]


UDP_ECHO = """import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(b"echo:" + data, peer)
"""


@ROOT_ONLY
def test_port_maps_reach_the_instance_on_loopback_and_outer_addresses(make_image, tmp_path):
    (tmp_path / "echo.py").write_text(UDP_ECHO)   # a UDP echo server in the instance's network
    out = in_own_network(tmp_path, make_image(startscript=HTTPD).path, """
import subprocess
subprocess.run(["ip", "link", "add", "outer0", "type", "veth", "peer", "name", "outer1"],
               check=True)
subprocess.run(["ip", "addr", "add", "192.0.2.10/24", "dev", "outer0"], check=True)
subprocess.run(["ip", "link", "set", "outer0", "up"], check=True)
subprocess.run(["ip", "link", "set", "outer1", "up"], check=True)
m = start("m", network_args=["portmap=8080:80/tcp;portmap=5353:53/udp"])
echo = subprocess.Popen(["nsenter", "-t", str(m.pid), "-n", sys.executable,
                         str(work / "echo.py")], stdout=subprocess.PIPE, text=True)
assert echo.stdout.readline().strip() == "ready"
for attempt in range(100):
    try:
        out["loopback"] = fetch_port("127.0.0.1", 8080); break
    except OSError:
        time.sleep(0.05)
out["outer"] = fetch_port("192.0.2.10", 8080)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"ping", ("127.0.0.1", 5353))
out["udp"] = u.recvfrom(100)[0].decode()
out["recorded"] = m.record.interfaces[0]["port_maps"]
try:
    start("clash", network_args="portmap=8080:80/tcp")
except NameConflict as err:
    out["in_use"] = str(err)
out["left"] = [r.name for r in registry.records()]
forwarder = m.record.interfaces[0]["forwarder"]
echo.kill(); echo.wait()
m.stop()
from instancelib.linux import procfs
out["forwarder_after"] = procfs.is_alive(forwarder[0], forwarder[1])
with open("/proc/net/tcp") as table:   # nobody listens on the host port any more
    out["freed"] = not [line for line in table.readlines()[1:]
                        if line.split()[1].endswith(":1F90") and line.split()[3] == "0A"]
""")
    assert out["loopback"] == "hi-m\n" and out["outer"] == "hi-m\n"
    assert out["udp"] == "echo:ping"
    assert out["recorded"] == ["8080:80/tcp", "5353:53/udp"]
    assert "host port 8080/tcp is in use" in out["in_use"] and out["left"] == ["m"]
    assert not out["forwarder_after"]
    assert out["freed"]


@ROOT_ONLY
def test_the_cli_joins_a_bridge_with_singularity_composes_quoted_port_map(make_image, tmp_path):
    out = in_own_network(tmp_path, make_image(startscript=HTTPD).path, """
import subprocess
env = dict(os.environ, INSTANCELIB_HOME=str(registry.root))
def cli(*args):
    return subprocess.run([sys.executable, "-m", "instancelib", *args], env=env,
                          capture_output=True, text=True, timeout=120)
started = cli("instance", "start", "--writable-tmpfs", "--net", "--network-args",
              '"portmap=8081:80/tcp"', str(image.path), "composed", "composed")
out["started"] = [started.returncode, started.stderr]
out["list"] = json.loads(cli("instance", "list", "--json").stdout)["instances"]
for attempt in range(100):
    try:
        out["mapped"] = fetch_port("127.0.0.1", 8081); break
    except OSError:
        time.sleep(0.05)
out["stopped"] = cli("instance", "stop", "composed").returncode
""")
    assert out["started"][0] == 0, out["started"][1]
    assert [(i["instance"], i["ip"]) for i in out["list"]] == [("composed", "10.22.0.2")]
    assert out["mapped"] == "hi-composed\n" and out["stopped"] == 0


@ROOT_ONLY
def test_masquerade_and_forwarding_take_instances_out_through_the_host(make_image, tmp_path):
    """A second namespace stands for the world beyond the host: its server sees the host's
    address for masqueraded networks, and answers nothing it has no route back to."""
    networks = tmp_path / "networks"
    networks.mkdir()
    (networks / "plain.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "plain", "plugins": [{
            "type": "bridge", "bridge": "sbr9", "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": "10.30.0.0/16",
                     "routes": [{"dst": "0.0.0.0/0"}]}}]}))
    out = in_own_network(tmp_path, make_image(startscript=HTTPD).path, JOIN_WORLD + """
from instancelib.linux import netns as nl
try:
    out["forward_before"] = open("/proc/sys/net/ipv4/ip_forward").read().strip()
    def out_of(instance):
        # (busybox 1.35's wget -T crashes: timeout bounds it instead)
        return instance.exec(["timeout", "2", "wget", "-q", "-O-",
                              "http://198.51.100.1:7000/"]).stdout.strip()
    b, p, q = start("b"), start("p", network="ptp"), start("q", network="ptp")
    out["bridge_out"] = out_of(b)
    out["ptp_out"] = out_of(p)
    out["ptp_to_ptp"] = p.exec(["timeout", "2", "wget", "-q", "-O-", f"http://{q.ip}/"]).stdout
    out["forward_after"] = open("/proc/sys/net/ipv4/ip_forward").read().strip()
    out["chains"] = [nl.nft_exists(nl.NFPROTO_IPV4, "instancelib", c)
                     for c in ("masq_10_22_0_0_16", "masq_10_23_0_0_16", "masq_10_30_0_0_16")]
    out["plain_out"] = out_of(start("plain", network="plain"))
finally:
""" + textwrap.indent(END_WORLD, "    "))
    assert out["forward_before"] == "0" and out["forward_after"] == "1"
    assert out["bridge_out"] == "198.51.100.2" and out["ptp_out"] == "198.51.100.2"   # masqueraded
    assert out["ptp_to_ptp"] == "hi-q\n"                                          # routed
    assert out["chains"] == [True, True, False]
    assert out["plain_out"] == ""      # not masqueraded: the world has no route back


@ROOT_ONLY
def test_a_masqueraded_network_without_nft_is_refused_before_anything_starts(
        image, start, monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCELIB_NETWORK_STATE", str(tmp_path / "state"))
    monkeypatch.setattr("instancelib.network.firewall.find_nft", lambda: None)
    with pytest.raises(Unsupported, match="apt-get install nftables"):
        start(image, network="bridge")
    assert not (tmp_path / "state" / "bridge").exists() or \
        sorted(os.listdir(tmp_path / "state" / "bridge")) == [".lock"]
