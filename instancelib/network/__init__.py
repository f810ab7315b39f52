"""Networks of instances: named networks (CNI-format files), their arguments, addresses.

``config`` reads the named networks, ``args`` the ``network_args``,
``ipam`` allocates addresses.  Below ``Instance`` and above cgroups and
``linux`` (see the README's module map).
"""

from instancelib.network.args import NetworkArgs, PortMap, parse_network_args, split_flag_values
from instancelib.network.config import Network, load_network

__all__ = ["Network", "NetworkArgs", "PortMap", "load_network", "parse_network_args",
           "split_flag_values"]
