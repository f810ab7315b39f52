"""Running instances from a network namespace that stands for the host (``unshare --net``).

``in_own_network`` runs a script there: the bridge, veths, pasta's tap and
all traffic live and die in that namespace, and nothing is added to the
machine's own network.  ``WORLD`` (with ``JOIN_WORLD`` in the script) is a
second namespace beyond it, for traffic leaving the "host": its server
answers with the address it sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import instancelib

HTTPD = "#!/bin/sh\nmkdir -p /www && echo hi-$1 > /www/index.html\nexec httpd -f -p 80 -h /www\n"

PROLOGUE = """
import json, os, signal, socket, sys, time
from pathlib import Path
from instancelib import Image, Instance, InstanceRegistry, NameConflict
from instancelib.linux import netns
netns.bring_up("lo")
work = Path(sys.argv[1])
registry = InstanceRegistry(work / "registry")
image = Image(sys.argv[2])
out = {}

def links():
    with open("/proc/net/dev") as f:   # this namespace's (sysfs shows the host's)
        return sorted(line.split(":")[0].strip() for line in f.readlines()[2:])

def start(name, **options):
    return Instance.start(image, name, registry=registry, writable_tmpfs=True, args=[name],
                          network=options.pop("network", "bridge"), **options)

def fetch(address):
    return fetch_port(address, 80)

def fetch_until(address, port, seconds=10):
    # pasta (unlike the forwarder) accepts before the instance listens, then closes:
    # an empty answer counts as "not yet" too.
    deadline = time.monotonic() + seconds
    while True:
        try:
            answer = fetch_port(address, port)
            if answer or time.monotonic() > deadline:
                return answer
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)

def fetch_port(address, port):
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        response = b""
        while chunk := s.recv(4096):   # to the end: headers and body may come apart
            response += chunk
    return response.decode().split("\\r\\n\\r\\n", 1)[-1]
"""
EPILOGUE = """
print(json.dumps(out))
"""
CLEANUP = """
finally:
    for instance in registry.list():   # also when the body failed: nothing may outlive it
        instance.stop(force=True)
"""


def in_own_network(tmp_path: Path, image_path: str, body: str) -> dict:  # type: ignore[type-arg]
    (tmp_path / "world.py").write_text(WORLD)
    script = tmp_path / "script.py"
    script.write_text(PROLOGUE + "try:\n" + textwrap.indent(body, "    ") + CLEANUP + EPILOGUE)
    env = dict(os.environ, INSTANCELIB_NETWORK_STATE=str(tmp_path / "state"),
               INSTANCELIB_NETWORK_DIR=str(tmp_path / "networks"),
               PYTHONPATH=str(Path(instancelib.__file__).resolve().parents[1]))
    result = subprocess.run(["unshare", "--net", sys.executable, str(script), str(tmp_path),
                             image_path], env=env, capture_output=True, text=True, timeout=180,
                            check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


WORLD = """import os, socket, sys, time
from instancelib.linux import netns
print("in its namespace", flush=True)   # only now may its end of the link be moved in
deadline = time.monotonic() + 30
while "w1" not in open("/proc/net/dev").read() and time.monotonic() < deadline:
    time.sleep(0.01)
netns.add_address("w1", "198.51.100.1", 24)   # the host's gateway
netns.add_address("w1", "198.51.100.7", 24)   # a server beyond it (pasta maps the gateway
                                              # address to the host itself)
netns.bring_up("w1")
netns.bring_up("lo")
server = socket.create_server(("0.0.0.0", 7000))
server.settimeout(60)
print("ready", flush=True)
for _ in range(10):                      # bounded: the test makes fewer requests
    client, peer = server.accept()
    client.recv(4096)
    client.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n" + peer[0].encode() + b"\\n")
    client.close()
"""



JOIN_WORLD = """
import subprocess
world = subprocess.Popen(["unshare", "--net", sys.executable, str(work / "world.py")],
                         stdout=subprocess.PIPE, text=True)
assert world.stdout.readline().strip() == "in its namespace"
subprocess.run(["ip", "link", "add", "w0", "type", "veth", "peer", "name", "w1", "netns",
                str(world.pid)], check=True)
subprocess.run(["ip", "addr", "add", "198.51.100.2/24", "dev", "w0"], check=True)
subprocess.run(["ip", "link", "set", "w0", "up"], check=True)
subprocess.run(["ip", "route", "add", "default", "via", "198.51.100.1"], check=True)
assert world.stdout.readline().strip() == "ready"
"""
END_WORLD = """
world.kill(); world.wait()
"""
