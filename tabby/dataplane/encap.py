"""Encapsulation constants shared by the device drivers and the nft renderer.

Kept free of imports so the pure renderer does not pull in netlink libraries.
"""

VXLAN_DEVICE = "vxlan.tabby"
VXLAN_VNI = 4096
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
IPIP_PROTOCOL = 4  # IP protocol number of IP-in-IP
