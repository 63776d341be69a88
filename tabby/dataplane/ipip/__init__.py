"""IP-in-IP (Calico's ipipMode) on every kernel: the ipip module's tunl0 where it exists,
tc BPF programs on the underlay where it does not. See docs/design/ipip.md.

    from tabby.dataplane.ipip import IpipDataplane, detect
"""

from tabby.dataplane.ipip.bpf_path import read_counters
from tabby.dataplane.ipip.dataplane import ANNOTATION, IpipDataplane, IpipError, IpipStatus
from tabby.dataplane.ipip.kernel_support import detect
from tabby.dataplane.ipip.routes import IPIP_ROUTE_PROTO
from tabby.dataplane.ipip.stale import StaleRemoved, remove_stale

__all__ = [
    "ANNOTATION",
    "IPIP_ROUTE_PROTO",
    "IpipDataplane",
    "IpipError",
    "IpipStatus",
    "StaleRemoved",
    "detect",
    "read_counters",
    "remove_stale",
]
