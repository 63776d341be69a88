"""Names and numbers that mark kernel objects as Tabby's workload wiring.

The agent reuses these to recognise (and clean up) what the CNI plugin made, after a restart
with no memory: a host-side link whose name starts with HOST_VETH_PREFIX, and routes with
protocol ROUTE_PROTO. Kept free of imports so the plugin and the agent can both use it.
"""

# `ip route ... proto 80`: the number Calico's Felix gives its own routes. It is unassigned
# in /etc/iproute2/rt_protos (kernel=2, boot=3, static=4, bird=12, bgp=186...), so a route
# with it is Tabby's and nobody else's.
ROUTE_PROTO = 80

# Host-side veth names: 'cali' + 11 hex digits (15 = IFNAMSIZ - 1), as Calico names them.
HOST_VETH_PREFIX = "cali"

# Every host-side veth gets this MAC (as in Calico): the workload's neighbour entry for its
# gateway is the same everywhere, and the IPv6 link-local gateway below follows from it.
HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"

# The workload's IPv4 next hop: not on any interface; the host veth answers ARP for it by
# proxy ARP. IPv6: the host veth's EUI-64 link-local address derived from HOST_VETH_MAC.
GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"

# IPAM handle of an attachment: "<network name>.<containerID>" (Calico's
# "k8s-pod-network.<containerID>" when the network is called k8s-pod-network).
HANDLE_SEPARATOR = "."
