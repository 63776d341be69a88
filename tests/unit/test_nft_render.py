"""Golden-text tests of the nft renderer (pure, no root).

Each sample in `tabby.dataplane.nft.samples` is rendered and compared, chain by chain,
with the text below. The goldens were reviewed by hand against Calico's semantics
(docs/design/dataplane.md); when the layout changes on purpose, regenerate them with
`python tests/unit/test_nft_render.py` and review the diff. tests/netns/test_nft_*.py
loads every sample into a real kernel.
"""

from __future__ import annotations

import sys

import pytest

from tabby.dataplane.nft import build, samples
from tabby.dataplane.nft.model import Ruleset, full_text

GOLDEN: dict[str, str] = {}
SELECTED = {
    "tiers_and_pass": ["tabby-pi-security_security.pass-dns-968f43adb7",
                       "tabby-ti-security-be5dfe41ab", "tabby-ti-default-972b65a64d",
                       "tabby-te-kube-admin-96e0ae022a", "tabby-tw-calidns", "tabby-fw-calidns"],
    "profiles": ["tabby-ri-kns.prod", "tabby-ri-ksa.prod.missing", "tabby-tw-caliapp"],
    "named_ports": ["tabby-pi-default_default.named-185ca71d88"],
    "log_rules": ["tabby-po-default_default.log-5a5dab11ad"],
    "host_endpoint": ["raw-prerouting", "filter-input", "filter-forward", "tabby-fh-dispatch",
                      "tabby-fh-eth0", "tabby-ti-default-f433b9ab40", "tabby-fhf-eth0",
                      "tabby-ti-default-dff617fd6e", "tabby-tha-any"],
    "do_not_track": ["tabby-pi-default_default.nodeports-23aa124bb5", "tabby-fhu-eth0",
                     "tabby-ti-default-48ef8e5173", "tabby-fhp-eth0",
                     "tabby-ti-default-98e3683669", "raw-output", "mangle-prerouting"],
    "nat_outgoing": ["raw-prerouting", "nat-postrouting"],
    "merged_rules": ["tabby-pi-default_default.merged-93c0831142"],
    "tunnels": ["filter-input", "filter-output"],
}
WITH_SETS = ("named_ports", "nat_outgoing", "merged_rules", "tunnels")


def chain_text(rs: Ruleset, name: str) -> str:
    c = rs.chains[name]
    head = f"chain {name}" + (f" [{c.hook}]" if c.hook else "")
    return "\n".join([head, *("    " + r for r in c.rules)])


def sets_text(rs: Ruleset) -> str:
    return "\n".join(
        f"set {s.name} {s.type}{' interval' if s.interval else ''}: {', '.join(sorted(s.elements))}"
        for s in rs.sets.values()
    )


def rendered(name: str) -> str:
    rs = build(samples.SAMPLES[name]()).ruleset
    body = "\n\n".join(chain_text(rs, c) for c in SELECTED[name])
    if name in WITH_SETS:
        body += "\n\n" + sets_text(rs)
    return body + "\n"


GOLDEN["do_not_track"] = """\
chain tabby-pi-default_default.nodeports-23aa124bb5
    meta nfproto ipv4 meta l4proto tcp tcp dport 30000-32767 ip saddr != 10.0.0.0/8 drop comment "policy default/default.nodeports ingress/0"
    meta nfproto ipv6 meta l4proto tcp tcp dport 30000-32767 drop comment "policy default/default.nodeports ingress/0"

chain tabby-fhu-eth0
    meta mark set meta mark & 0xfffcffff
    jump tabby-ti-default-48ef8e5173
    meta mark & 0x10000 == 0x10000 return

chain tabby-ti-default-48ef8e5173
    meta mark set meta mark & 0xfffdffff
    jump tabby-pi-default_default.untracked-b8f7fe74e4
    meta mark & 0x10000 == 0x10000 return

chain tabby-fhp-eth0
    meta mark set meta mark & 0xfffcffff
    jump tabby-ti-default-98e3683669
    meta mark & 0x10000 == 0x10000 return

chain tabby-ti-default-98e3683669
    meta mark set meta mark & 0xfffdffff
    jump tabby-pi-default_default.nodeports-23aa124bb5
    meta mark & 0x10000 == 0x10000 return

chain raw-output [type filter hook output priority raw; policy accept;]
    meta mark set meta mark & 0xffc0ffff
    oifname "lo" accept
    oifname "cali*" accept
    meta l4proto ipv6-icmp icmpv6 type { 133, 134, 135, 136 } accept comment "IPv6 neighbour discovery"
    jump tabby-thu-dispatch
    meta mark & 0x10000 == 0x10000 meta mark set meta mark | 0x100000 notrack comment "untracked policy allowed"

chain mangle-prerouting [type filter hook prerouting priority mangle; policy accept;]
    iifname "cali*" accept
    ct state established,related accept
    meta mark & 0x100000 == 0x100000 accept
    meta l4proto ipv6-icmp icmpv6 type { 133, 134, 135, 136 } accept comment "IPv6 neighbour discovery"
    jump tabby-fhp-dispatch
    meta mark & 0x10000 == 0x10000 meta mark set meta mark | 0x200000 comment "preDNAT policy allowed"
"""

GOLDEN["host_endpoint"] = """\
chain raw-prerouting [type filter hook prerouting priority raw; policy accept;]
    meta mark set meta mark & 0xffc0ffff
    iifname "cali*" meta nfproto ipv4 ip saddr != 0.0.0.0 fib saddr . iif oif missing drop comment "workload source not routed via its interface"
    iifname "cali*" meta nfproto ipv6 ip6 saddr != { ::, fe80::/10 } fib saddr . iif oif missing drop comment "workload source not routed via its interface"
    iifname "cali*" accept
    meta l4proto ipv6-icmp icmpv6 type { 133, 134, 135, 136 } accept comment "IPv6 neighbour discovery"
    tcp dport 22 accept comment "failsafe in"
    ip saddr 10.0.0.0/8 tcp dport 6443 accept comment "failsafe in"
    udp dport 68 accept comment "failsafe in"
    tcp sport { 179, 2379, 2380, 5473, 6443, 6666, 6667 } accept comment "failsafe out"
    udp sport { 53, 67 } accept comment "failsafe out"
    jump tabby-fhu-dispatch
    meta mark & 0x10000 == 0x10000 meta mark set meta mark | 0x100000 notrack comment "untracked policy allowed"

chain filter-input [type filter hook input priority filter; policy accept;]
    ct state established,related accept
    ct state invalid drop
    meta mark & 0x100000 == 0x100000 accept
    iifname "lo" accept
    iifname "cali*" jump tabby-wl-to-host
    meta mark & 0x200000 == 0x200000 accept
    meta l4proto ipv6-icmp icmpv6 type { 133, 134, 135, 136 } accept comment "IPv6 neighbour discovery"
    tcp dport 22 accept comment "failsafe in"
    ip saddr 10.0.0.0/8 tcp dport 6443 accept comment "failsafe in"
    udp dport 68 accept comment "failsafe in"
    jump tabby-fh-dispatch

chain filter-forward [type filter hook forward priority filter; policy accept;]
    ct state established,related accept
    ct state invalid drop
    meta mark & 0x300000 == 0x0 jump tabby-fhf-dispatch
    iifname "cali*" jump tabby-fw-dispatch
    oifname "cali*" jump tabby-tw-dispatch
    jump tabby-thf-dispatch

chain tabby-fh-dispatch
    iifname vmap @tabby-fh-map
    iifname "lo" return
    iifname "cali*" return
    goto tabby-fha-any

chain tabby-fh-eth0
    meta mark set meta mark & 0xfffcffff
    jump tabby-ti-default-f433b9ab40
    meta mark & 0x10000 == 0x10000 return
    drop comment "host endpoint node1/eth0 fh: no policy or profile allowed"

chain tabby-ti-default-f433b9ab40
    meta mark set meta mark & 0xfffdffff
    jump tabby-pi-default_default.ssh-only-fad0b43639
    meta mark & 0x10000 == 0x10000 return
    meta mark & 0x20000 == 0x0 drop comment "end of tier default"

chain tabby-fhf-eth0
    meta mark set meta mark & 0xfffcffff
    jump tabby-ti-default-dff617fd6e
    meta mark & 0x10000 == 0x10000 return

chain tabby-ti-default-dff617fd6e
    meta mark set meta mark & 0xfffdffff
    jump tabby-pi-default_default.fwd-64aac16294
    meta mark & 0x10000 == 0x10000 return
    meta mark & 0x20000 == 0x0 drop comment "end of tier default"

chain tabby-tha-any
    meta mark set meta mark & 0xfffcffff
    jump tabby-ro-projectcalico-default-allow
    meta mark & 0x10000 == 0x10000 return
    drop comment "host endpoint node1/all th: no policy or profile allowed"
"""

GOLDEN["log_rules"] = """\
chain tabby-po-default_default.log-5a5dab11ad
    log prefix "calico-packet " comment "policy default/default.log egress/0"
    meta nfproto ipv4 ip daddr @tabby-net4-s_db-c62cd09ce3 log prefix "db-egress " comment "policy default/default.log egress/1"
    meta nfproto ipv4 meta l4proto icmp icmp type 8 icmp code 0 meta mark set meta mark | 0x10000 return comment "policy default/default.log egress/2"
    meta nfproto ipv4 meta l4proto icmp icmp type . icmp code != { 3 . 4 } drop comment "policy default/default.log egress/3"
    meta nfproto ipv4 meta l4proto tcp meta l4proto != udp tcp dport != { 22, 6000-6010 } ip daddr 0.0.0.0/0 ip daddr != @tabby-net4-s_db-c62cd09ce3 meta mark set meta mark | 0x10000 return comment "policy default/default.log egress/4"
"""

GOLDEN["merged_rules"] = """\
chain tabby-pi-default_default.merged-93c0831142
    meta nfproto ipv4 meta l4proto tcp tcp dport 80 ip saddr { 10.66.0.0/23, 10.66.2.0/24, 10.66.4.0/24, 10.66.9.0/24 } meta mark set meta mark | 0x10000 return comment "policy default/default.merged ingress/0 +4 merged (0-4)"
    log prefix "merged " comment "policy default/default.merged ingress/5"
    meta nfproto ipv4 meta l4proto tcp ip saddr . tcp dport { 192.0.2.1 . 22, 192.0.2.2 . 23 } drop comment "policy default/default.merged ingress/6 +2 merged (6-8)"
    meta nfproto ipv6 meta l4proto tcp ip6 saddr . tcp dport { 2001:db8::1 . 22 } drop comment "policy default/default.merged ingress/6 +2 merged (6-8)"
    meta nfproto ipv4 meta l4proto tcp tcp dport { 9100, 9200 } ip saddr @tabby-ip4-s_mon-ab81966849 meta mark set meta mark | 0x10000 return comment "policy default/default.merged ingress/9 +1 merged (9-10)"
    meta nfproto ipv4 ip saddr 10.68.0.1 ip saddr != 10.68.0.0/31 meta mark set meta mark | 0x10000 return comment "policy default/default.merged ingress/11"
    meta nfproto ipv4 ip saddr 10.68.0.5 ip saddr != 10.68.0.4/31 meta mark set meta mark | 0x10000 return comment "policy default/default.merged ingress/12"
    meta nfproto ipv4 meta l4proto udp ip saddr . udp dport @tabby-pi-default_default.merged-93c0831142-m4-de7f54ea meta mark set meta mark | 0x10000 return comment "policy default/default.merged ingress/13 +39 merged (13-52)"

set tabby-ip4-s_mon-ab81966849 ipv4_addr: 10.65.9.1
set tabby-pi-default_default.merged-93c0831142-m4-de7f54ea ipv4_addr . inet_service interval: 10.67.0.1 . 5000-5005, 10.67.0.10 . 5010-5015, 10.67.0.11 . 5020-5025, 10.67.0.12 . 5030-5035, 10.67.0.13 . 5000-5005, 10.67.0.14 . 5010-5015, 10.67.0.15 . 5020-5025, 10.67.0.16 . 5030-5035, 10.67.0.17 . 5000-5005, 10.67.0.18 . 5010-5015, 10.67.0.19 . 5020-5025, 10.67.0.2 . 5010-5015, 10.67.0.20 . 5030-5035, 10.67.0.21 . 5000-5005, 10.67.0.22 . 5010-5015, 10.67.0.23 . 5020-5025, 10.67.0.24 . 5030-5035, 10.67.0.25 . 5000-5005, 10.67.0.26 . 5010-5015, 10.67.0.27 . 5020-5025, 10.67.0.28 . 5030-5035, 10.67.0.29 . 5000-5005, 10.67.0.3 . 5020-5025, 10.67.0.30 . 5010-5015, 10.67.0.31 . 5020-5025, 10.67.0.32 . 5030-5035, 10.67.0.33 . 5000-5005, 10.67.0.34 . 5010-5015, 10.67.0.35 . 5020-5025, 10.67.0.36 . 5030-5035, 10.67.0.37 . 5000-5005, 10.67.0.38 . 5010-5015, 10.67.0.39 . 5020-5025, 10.67.0.4 . 5030-5035, 10.67.0.40 . 5030-5035, 10.67.0.5 . 5000-5005, 10.67.0.6 . 5010-5015, 10.67.0.7 . 5020-5025, 10.67.0.8 . 5030-5035, 10.67.0.9 . 5000-5005
"""

GOLDEN["named_ports"] = """\
chain tabby-pi-default_default.named-185ca71d88
    meta nfproto ipv4 ip daddr . meta l4proto . th dport @tabby-np4-n_http-ad5f3e4674 meta mark set meta mark | 0x10000 return comment "policy default/default.named ingress/0"
    meta mark set meta mark & 0xfff3ffff
    tcp dport 443 meta mark set meta mark | 0x80000
    ip daddr . meta l4proto . th dport @tabby-np4-n_http-ad5f3e4674 meta mark set meta mark | 0x80000
    ip daddr . meta l4proto . th dport @tabby-np4-n_metrics-ca5d0e9605 meta mark set meta mark | 0x80000
    meta nfproto ipv4 meta l4proto tcp meta mark & 0x80000 == 0x80000 meta mark set meta mark | 0x10000 return comment "policy default/default.named ingress/1"
    meta nfproto ipv4 ip daddr . meta l4proto . th dport != @tabby-np4-n_metrics-ca5d0e9605 drop comment "policy default/default.named ingress/2"

set tabby-np4-n_http-ad5f3e4674 ipv4_addr . inet_proto . inet_service: 10.65.0.1 . tcp . 8080
set tabby-np6-n_http-ad5f3e4674 ipv6_addr . inet_proto . inet_service: fd00::1 . tcp . 8080
set tabby-np4-n_metrics-ca5d0e9605 ipv4_addr . inet_proto . inet_service: 10.65.0.1 . tcp . 9090
"""

GOLDEN["nat_outgoing"] = """\
chain raw-prerouting [type filter hook prerouting priority raw; policy accept;]
    meta mark set meta mark & 0xffc0ffff
    iifname "cali*" accept

chain nat-postrouting [type nat hook postrouting priority srcnat; policy accept;]
    ip saddr @tabby-pools4-masq ip daddr != @tabby-pools4-all masquerade comment "natOutgoing"
    ip6 saddr @tabby-pools6-masq ip6 daddr != @tabby-pools6-all masquerade comment "natOutgoing"

set tabby-pools4-all ipv4_addr interval: 10.65.0.0/16, 10.66.0.0/16
set tabby-pools4-masq ipv4_addr interval: 10.65.0.0/16
set tabby-pools6-all ipv6_addr interval: fd00:65::/64
set tabby-pools6-masq ipv6_addr interval: fd00:65::/64
"""

GOLDEN["profiles"] = """\
chain tabby-ri-kns.prod
    meta nfproto ipv4 ip saddr 10.66.0.0/16 drop comment "profile kns.prod ingress/0"
    meta l4proto tcp tcp dport 8000-8999 meta mark set meta mark | 0x10000 return comment "profile kns.prod ingress/1"

chain tabby-ri-ksa.prod.missing
    drop comment "profile ksa.prod.missing ingress: unknown profile"

chain tabby-tw-caliapp
    meta mark set meta mark & 0xfffcffff
    jump tabby-ri-kns.prod
    meta mark & 0x10000 == 0x10000 return
    jump tabby-ri-ksa.prod.missing
    meta mark & 0x10000 == 0x10000 return
    drop comment "workload k8s/default.app/eth0 ingress: no policy or profile allowed"
"""

GOLDEN["tiers_and_pass"] = """\
chain tabby-pi-security_security.pass-dns-968f43adb7
    meta l4proto udp udp dport 53 meta mark set meta mark | 0x20000 return comment "policy security/security.pass-dns ingress/0"
    meta nfproto ipv4 ip saddr 192.0.2.0/24 drop comment "policy security/security.pass-dns ingress/1"

chain tabby-ti-security-be5dfe41ab
    meta mark set meta mark & 0xfffdffff
    jump tabby-pi-security_security.pass-dns-968f43adb7
    meta mark & 0x10000 == 0x10000 return
    meta mark & 0x20000 == 0x0 drop comment "end of tier security"

chain tabby-ti-default-972b65a64d
    meta mark set meta mark & 0xfffdffff
    jump tabby-pi-default_default.dns-aae9a2a76c
    meta mark & 0x10000 == 0x10000 return
    meta mark & 0x20000 == 0x0 drop comment "end of tier default"

chain tabby-te-kube-admin-96e0ae022a
    meta mark set meta mark & 0xfffdffff
    jump tabby-po-kube-admin_kube-admin.noop-147f4443e2
    meta mark & 0x10000 == 0x10000 return

chain tabby-tw-calidns
    meta mark set meta mark & 0xfffcffff
    jump tabby-ti-security-be5dfe41ab
    meta mark & 0x10000 == 0x10000 return
    jump tabby-ti-default-972b65a64d
    meta mark & 0x10000 == 0x10000 return
    jump tabby-ri-kns.default
    meta mark & 0x10000 == 0x10000 return
    drop comment "workload k8s/default.dns/eth0 ingress: no policy or profile allowed"

chain tabby-fw-calidns
    meta mark set meta mark & 0xfffcffff
    jump tabby-te-kube-admin-96e0ae022a
    meta mark & 0x10000 == 0x10000 return
    jump tabby-ro-kns.default
    meta mark & 0x10000 == 0x10000 return
    drop comment "workload k8s/default.dns/eth0 egress: no policy or profile allowed"
"""

GOLDEN["tunnels"] = """\
chain filter-input [type filter hook input priority filter; policy accept;]
    ct state established,related accept
    ct state invalid drop
    meta mark & 0x100000 == 0x100000 accept
    iifname "lo" accept
    iifname "cali*" jump tabby-wl-to-host
    meta mark & 0x200000 == 0x200000 accept
    meta l4proto ipv6-icmp icmpv6 type { 133, 134, 135, 136 } accept comment "IPv6 neighbour discovery"
    ip saddr @tabby-hosts4 udp dport 4789 accept comment "VXLAN from a known node"
    ip saddr @tabby-hosts4 meta l4proto 4 accept comment "IPIP from a known node"
    jump tabby-fh-dispatch

chain filter-output [type filter hook output priority filter; policy accept;]
    ct state established,related accept
    ct state invalid drop
    meta mark & 0x100000 == 0x100000 accept
    oifname "lo" accept
    oifname "cali*" accept comment "host to local workload is always allowed"
    meta l4proto ipv6-icmp icmpv6 type { 133, 134, 135, 136 } accept comment "IPv6 neighbour discovery"
    ip daddr @tabby-hosts4 udp dport 4789 accept comment "VXLAN to a known node"
    ip daddr @tabby-hosts4 meta l4proto 4 accept comment "IPIP to a known node"
    jump tabby-th-dispatch

set tabby-hosts4 ipv4_addr: 192.168.0.10, 192.168.0.11, 192.168.1.12
"""

BASIC_FULL = """\
table inet tabby
delete table inet tabby
table inet tabby {
  comment "tabby: owned by the tabby agent; replaced on every full sync"
  set tabby-ip4-s_frontend-a89715d9c0 { type ipv4_addr; comment "ipset s:frontend";
    elements = {
      10.65.0.2,
      10.65.0.3
    }
  }
  set tabby-ip6-s_frontend-a89715d9c0 { type ipv6_addr; comment "ipset s:frontend";
    elements = {
      fd00::2
    }
  }
  map tabby-fw-map { type ifname : verdict;
    elements = {
      "caliweb" : goto tabby-fw-caliweb
    }
  }
  map tabby-tw-map { type ifname : verdict;
    elements = {
      "caliweb" : goto tabby-tw-caliweb
    }
  }
  chain tabby-pi-default_default.allow-web-9761c178fd {
    comment "policy default/default.allow-web ingress"
    meta nfproto ipv4 meta l4proto tcp tcp dport 80 ip saddr @tabby-ip4-s_frontend-a89715d9c0 meta mark set meta mark | 0x10000 return comment "default/default.allow-web/ingress/0"
    meta nfproto ipv6 meta l4proto tcp tcp dport 80 ip6 saddr @tabby-ip6-s_frontend-a89715d9c0 meta mark set meta mark | 0x10000 return comment "default/default.allow-web/ingress/0"
  }
  chain tabby-ri-kns.default {
    comment "profile kns.default ingress"
    meta mark set meta mark | 0x10000 return comment "profile kns.default ingress/0"
  }
  chain tabby-ro-kns.default {
    comment "profile kns.default egress"
    meta mark set meta mark | 0x10000 return comment "profile kns.default egress/0"
  }
  chain tabby-ti-default-fc96ad9749 {
    comment "tier default ingress: default.allow-web"
    meta mark set meta mark & 0xfffdffff
    jump tabby-pi-default_default.allow-web-9761c178fd
    meta mark & 0x10000 == 0x10000 return
    meta mark & 0x20000 == 0x0 drop comment "end of tier default"
  }
  chain tabby-tw-caliweb {
    comment "workload k8s/default.web/eth0"
    meta mark set meta mark & 0xfffcffff
    jump tabby-ti-default-fc96ad9749
    meta mark & 0x10000 == 0x10000 return
    jump tabby-ri-kns.default
    meta mark & 0x10000 == 0x10000 return
    drop comment "workload k8s/default.web/eth0 ingress: no policy or profile allowed"
  }
  chain tabby-fw-caliweb {
    comment "workload k8s/default.web/eth0"
    meta mark set meta mark & 0xfffcffff
    jump tabby-ro-kns.default
    meta mark & 0x10000 == 0x10000 return
    drop comment "workload k8s/default.web/eth0 egress: no policy or profile allowed"
  }
  chain tabby-fw-dispatch {
    iifname vmap @tabby-fw-map
    drop comment "unknown workload interface"
  }
  chain tabby-tw-dispatch {
    oifname vmap @tabby-tw-map
    drop comment "unknown workload interface"
  }
  chain tabby-wl-to-host {
    meta l4proto ipv6-icmp icmpv6 type { 130, 131, 132, 133, 135, 136 } accept
    jump tabby-fw-dispatch
    drop comment "DefaultEndpointToHostAction Drop"
  }
  chain raw-prerouting {
    type filter hook prerouting priority raw; policy accept;
    meta mark set meta mark & 0xffc0ffff
    iifname "cali*" meta nfproto ipv4 ip saddr != 0.0.0.0 fib saddr . iif oif missing drop comment "workload source not routed via its interface"
    iifname "cali*" meta nfproto ipv6 ip6 saddr != { ::, fe80::/10 } fib saddr . iif oif missing drop comment "workload source not routed via its interface"
    iifname "cali*" accept
  }
  chain filter-input {
    type filter hook input priority filter; policy accept;
    ct state established,related accept
    ct state invalid drop
    iifname "lo" accept
    iifname "cali*" jump tabby-wl-to-host
  }
  chain filter-forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ct state invalid drop
    iifname "cali*" jump tabby-fw-dispatch
    oifname "cali*" jump tabby-tw-dispatch
  }
  chain filter-output {
    type filter hook output priority filter; policy accept;
    ct state established,related accept
    ct state invalid drop
    oifname "lo" accept
    oifname "cali*" accept comment "host to local workload is always allowed"
  }
  chain nat-postrouting {
    type nat hook postrouting priority srcnat; policy accept;
  }
}
"""


@pytest.mark.parametrize("name", sorted(SELECTED))
def test_golden_chains(name: str) -> None:
    assert rendered(name) == GOLDEN[name]


def test_golden_full_table_basic() -> None:
    assert full_text(build(samples.basic()).ruleset).text() == BASIC_FULL


def test_only_the_profiles_sample_has_problems() -> None:
    for name, make in samples.SAMPLES.items():
        problems = build(make()).problems
        if name == "profiles":
            assert problems == {
                "profile:ksa.prod.missing": "endpoint refers to a profile that was never sent"
            }
        else:
            assert problems == {}, name


def test_render_is_deterministic() -> None:
    for make in samples.SAMPLES.values():
        assert full_text(build(make()).ruleset).text() == full_text(build(make()).ruleset).text()


if __name__ == "__main__":  # regenerate: python tests/unit/test_nft_render.py > /tmp/g.py
    for key in sorted(SELECTED):
        sys.stdout.write(f'GOLDEN["{key}"] = """\\\n{rendered(key)}"""\n\n')
    sys.stdout.write(f'BASIC_FULL = """\\\n{full_text(build(samples.basic()).ruleset).text()}"""\n')
