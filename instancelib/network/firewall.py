"""IP masquerade and forwarding for networks with the host as gateway (the helper's part).

A network whose definition says ``ipMasq`` gets one nf_tables chain in the
table ``ip instancelib``: a ``postrouting`` NAT hook that masquerades what
comes from the network's subnet and leaves it (multicast excepted), as
CNI's bridge and ptp plugins do with iptables.  The chain is per subnet, not
per instance: made once, the first time an instance joins (checked through
nfnetlink, ~40 µs, so a start pays nothing more), and it stays with the
bridge.  The rules are made by nftables' ``nft`` in one transaction
(``nft -f -``), so two helpers racing make the same chain once.

Routing to and from a gateway network needs IPv4 forwarding in the host's
namespace (``net.ipv4.ip_forward``): it is turned on when it is off, as
CNI does for a gateway bridge or a ptp link, and logged.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import subprocess

from instancelib.linux import netns

__all__ = ["TABLE", "chain_name", "ensure_forwarding", "ensure_masquerade", "find_nft"]

TABLE = "instancelib"
_FORWARD = "/proc/sys/net/ipv4/ip_forward"
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

log = logging.getLogger("instancelib.network")


def find_nft() -> str | None:
    """nftables' ``nft`` (also looked for in /usr/sbin and /sbin), or None."""
    return shutil.which("nft", path=_SEARCH)


def chain_name(subnet: ipaddress.IPv4Network) -> str:
    """The masquerade chain of ``subnet``: ``masq_10_22_0_0_16``."""
    return "masq_" + str(subnet).replace(".", "_").replace("/", "_")


def ensure_masquerade(subnet: ipaddress.IPv4Network) -> None:
    """Make the masquerade chain of ``subnet`` if it does not exist (``OSError`` if refused)."""
    chain = chain_name(subnet)
    if netns.nft_exists(netns.NFPROTO_IPV4, TABLE, chain):
        return
    nft = find_nft()
    if nft is None:
        raise OSError(2, "IP masquerade needs nftables' nft (Debian: apt-get install nftables)")
    where = f"ip {TABLE} {chain}"
    script = (f"add table ip {TABLE}\n"
              f"add chain {where} {{ type nat hook postrouting priority srcnat; "
              "policy accept; }\n"
              f"flush chain {where}\n"
              f"add rule {where} ip saddr {subnet} ip daddr != {subnet} "
              "ip daddr != 224.0.0.0/4 masquerade\n")
    result = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True,
                            timeout=30, check=False)
    if result.returncode != 0:
        raise OSError(1, f"nft: {result.stderr.strip() or 'failed'}")
    log.info("IP masquerade for %s (nf_tables chain %s)", subnet, where)


def ensure_forwarding() -> None:
    """Turn IPv4 forwarding on in this network namespace if it is off."""
    with open(_FORWARD, "rb") as current:
        if current.read().strip() == b"1":
            return
    with open(_FORWARD, "wb") as setting:
        setting.write(b"1")
    log.info("net.ipv4.ip_forward was 0: set to 1 (instances' traffic is routed by the host)")
