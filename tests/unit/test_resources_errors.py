"""tabby.resources: bad input gives one line naming the document, object, field and value."""

from __future__ import annotations

import pytest

from tabby.resources import ResourceError, from_dict, parse_documents

V3 = "projectcalico.org/v3"
K8S_NP = "networking.k8s.io/v1"


def doc(kind: str, spec: dict | None = None, name: str = "x", api: str = V3, **meta) -> dict:
    out: dict = {"apiVersion": api, "kind": kind, "metadata": {"name": name, **meta}}
    if spec is not None:
        out["spec"] = spec
    return out


def allow(**fields) -> dict:
    return {"action": "Allow", **fields}


def gnp(*ingress: dict, **spec) -> dict:
    return doc("GlobalNetworkPolicy", {"ingress": list(ingress), **spec})


def pool(name: str = "x", **spec) -> dict:
    return doc("IPPool", {"cidr": "10.0.0.0/16", **spec}, name=name)


ING = "spec.ingress[0]"

# (manifest, the message after "document 1 (<Kind> <name>): ")
CASES: list[tuple[dict, str]] = [
    # --- IPPool
    (pool(cidr="10.0.0.0/33"), 'spec.cidr: invalid CIDR "10.0.0.0/33"'),
    (
        pool(cidr="10.0.0.1/16"),
        "spec.cidr: IP pool CIDR \"10.0.0.1/16\" is not strictly masked (did you mean '10.0.0.0/16'?)",
    ),
    (pool(cidr=10), "spec.cidr: expected a CIDR (a string), got 10"),
    (
        pool(cidr="169.254.0.0/16"),
        'spec.cidr: IP pool "169.254.0.0/16" overlaps the link-local range 169.254.0.0/16',
    ),
    (pool(blockSize=33), "spec.blockSize: invalid blockSize 33 for an IPv4 pool (want 20-32)"),
    (
        pool(cidr="fd00::/64", blockSize=112),
        "spec.blockSize: invalid blockSize 112 for an IPv6 pool (want 116-128)",
    ),
    (pool(blockSize="26"), 'spec.blockSize: expected an integer, got "26"'),
    (
        pool(cidr="fd00::/64", ipipMode="Always"),
        'spec.ipipMode: ipipMode "Always" is not supported on an IPv6 pool',
    ),
    (
        pool(ipipMode="Always", vxlanMode="CrossSubnet"),
        'spec.vxlanMode: ipipMode "Always" and vxlanMode "CrossSubnet" cannot both be enabled',
    ),
    (
        pool(ipipMode="always"),
        'spec.ipipMode: invalid value "always" (want Always, CrossSubnet or Never)',
    ),
    (pool(ipipmode="Always"), 'spec.ipipmode: unknown field "ipipmode" (did you mean "ipipMode"?)'),
    (pool(natOutgoing="yes"), 'spec.natOutgoing: expected true or false, got "yes"'),
    (
        pool(nodeSelector="global()"),
        'spec.nodeSelector: global() can only be used in an EntityRule namespaceSelector: "global()"',
    ),
    (
        pool(nodeSelector="a =="),
        'spec.nodeSelector: invalid selector "a ==" position 4: expected a quoted string',
    ),
    (
        pool(allowedUses=["LoadBalancer", "Workload"]),
        "spec.allowedUses: LoadBalancer cannot be combined with Workload",
    ),
    (
        pool(allowedUses=["Tunnel"], namespaceSelector="all()"),
        "spec.namespaceSelector: a pool with allowedUses Tunnel cannot have a namespaceSelector",
    ),
    (doc("IPPool", {}), "spec.cidr: required field missing"),
    # --- names, labels, namespaces
    (
        pool(name="a_b"),
        "metadata.name: invalid name \"a_b\" (lower-case alphanumerics, '-' and '.', "
        "starting and ending alphanumeric, at most 253 characters)",
    ),
    (
        doc("IPPool", {"cidr": "10.0.0.0/16"}, namespace="prod"),
        'metadata.namespace: IPPool is not namespaced (got "prod")',
    ),
    (
        doc("Profile", {}, labels={"a": "b c"}),
        "metadata.labels: label a: invalid value \"b c\" (at most 63 alphanumerics, '-', '_', '.', "
        "starting and ending alphanumeric)",
    ),
    (
        doc("Profile", {}, labels={"a/b/c": "x"}),
        'metadata.labels: invalid label key "a/b/c" (prefix must be a DNS subdomain)',
    ),
    (
        doc("Profile", {}, labels={"ok": 5}),
        "metadata.labels: label ok: value must be a string, got 5 (quote it)",
    ),
    (
        doc("Profile", {"labelsToApply": {"-bad": "x"}}),
        "spec.labelsToApply: invalid label key \"-bad\" (name part: at most 63 alphanumerics, '-', "
        "'_', '.', starting and ending alphanumeric)",
    ),
    (
        doc("Tier", {}, name="a.b"),
        "metadata.name: invalid tier name \"a.b\" (lower-case alphanumerics and '-', at most 63 characters)",
    ),
    (
        doc("Tier", {"order": 5}, name="default"),
        "spec.order: tier default must have order 1000000, not 5",
    ),
    (
        doc("GlobalNetworkPolicy", {}, name="a.b.c"),
        "metadata.name: invalid policy name \"a.b.c\" (lower-case alphanumerics and '-', optionally "
        "prefixed by the tier and a dot, at most 253 characters)",
    ),
    (
        doc("NetworkPolicy", {"tier": "sec"}, name="other.p"),
        'metadata.name: policy name "other.p" has tier prefix "other" but spec.tier is "sec"',
    ),
    (
        doc("Namespace", None, name="a.b", api="v1"),
        "metadata.name: invalid namespace name \"a.b\" (lower-case alphanumerics and '-', at most 63 characters)",
    ),
    (
        doc("NetworkSet", {}, labels={"projectcalico.org/namespace": "x"}),
        "metadata.labels: projectcalico.org/namespace is not a valid label name here",
    ),
    # --- rules: protocols, ports, actions
    (
        gnp(allow(protocol="tcp")),
        f'{ING}.protocol: invalid protocol "tcp" (want TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255)',
    ),
    (gnp(allow(protocol=0)), f"{ING}.protocol: invalid protocol number 0 (want 1-255)"),
    (gnp(allow(protocol=256)), f"{ING}.protocol: invalid protocol number 256 (want 1-255)"),
    (
        gnp({"action": "Accept"}),
        f'{ING}.action: invalid value "Accept" (want Allow, Deny, Log or Pass)',
    ),
    (gnp({"protocol": "TCP"}), f"{ING}.action: required field missing"),
    (
        gnp(allow(destination={"ports": [80]})),
        f"{ING}.destination.ports[0]: port 80 needs the rule protocol set to TCP, UDP or SCTP",
    ),
    (
        gnp(allow(protocol="ICMP", destination={"ports": ["http"]})),
        f'{ING}.destination.ports[0]: protocol "ICMP" has no ports (port "http"; ports need TCP, UDP or SCTP)',
    ),
    (
        gnp(allow(protocol="TCP", destination={"ports": ["90:80"]})),
        f'{ING}.destination.ports[0]: invalid port range "90:80" (min is greater than max)',
    ),
    (
        gnp(allow(protocol="UDP", source={"notPorts": ["0:10"]})),
        f'{ING}.source.notPorts[0]: invalid port range "0:10" (ports must be 1-65535)',
    ),
    (
        gnp(allow(protocol="TCP", destination={"ports": [70000]})),
        f"{ING}.destination.ports[0]: invalid port 70000 (want 1-65535)",
    ),
    (
        gnp(allow(protocol="TCP", destination={"ports": ["80-90"]})),
        f'{ING}.destination.ports[0]: invalid port "80-90" (want a number 1-65535, a range "min:max" or a port name)',
    ),
    # --- ICMP
    (
        gnp(allow(icmp={"type": 8})),
        f"{ING}.icmp: icmp needs protocol ICMP or ICMPv6 (rule has no protocol)",
    ),
    (
        gnp(allow(protocol="TCP", notICMP={"type": 8})),
        f'{ING}.notICMP: notICMP needs protocol ICMP or ICMPv6 (rule has protocol "TCP")',
    ),
    (
        gnp(allow(protocol="ICMP", icmp={"type": 255})),
        f"{ING}.icmp.type: invalid ICMP type 255 (want 0-254)",
    ),
    (
        gnp(allow(protocol="ICMP", icmp={"type": 8, "code": 256})),
        f"{ING}.icmp.code: invalid ICMP code 256 (want 0-255)",
    ),
    (
        gnp(allow(protocol="ICMP", icmp={"code": 0})),
        f"{ING}.icmp.code: ICMP code 0 given without an ICMP type",
    ),
    (
        gnp(allow(protocol="ICMP", ipVersion=6)),
        f"{ING}.ipVersion: protocol ICMP needs ipVersion 4, not 6",
    ),
    (
        gnp(allow(protocol=58, ipVersion=4)),
        f"{ING}.ipVersion: protocol ICMPv6 needs ipVersion 6, not 4",
    ),
    # --- nets
    (
        gnp(allow(source={"nets": ["10.0.0.0/8"]}, destination={"nets": ["fd00::/8"]})),
        f'{ING}.destination.nets[0]: rule mixes IPv4 and IPv6 CIDRs ("fd00::/8")',
    ),
    (
        gnp(allow(ipVersion=6, source={"nets": ["10.0.0.0/8"]})),
        f'{ING}.source.nets[0]: IPv4 CIDR "10.0.0.0/8" in an ipVersion 6 rule',
    ),
    (
        gnp(allow(destination={"notNets": ["0.0.0.0/0"]})),
        f'{ING}.destination.notNets[0]: notNets "0.0.0.0/0" matches no traffic',
    ),
    (
        gnp(allow(source={"nets": ["10.0.0.1/8"]})),
        f"{ING}.source.nets[0]: CIDR \"10.0.0.1/8\" has host bits set (did you mean '10.0.0.0/8'?)",
    ),
    # --- selectors and global()
    (
        gnp(allow(source={"selector": "app == "})),
        f'{ING}.source.selector: invalid selector "app == " position 7: expected a quoted string',
    ),
    (
        gnp(allow(source={"selector": "global()"})),
        f'{ING}.source.selector: global() can only be used in an EntityRule namespaceSelector: "global()"',
    ),
    (
        gnp(allow(source={"namespaceSelector": "global() && all()"})),
        f'{ING}.source.namespaceSelector: global() cannot be combined with other selectors: "global() && all()"',
    ),
    (
        doc("GlobalNetworkPolicy", {"namespaceSelector": "global()"}),
        'spec.namespaceSelector: global() can only be used in an EntityRule namespaceSelector: "global()"',
    ),
    (
        doc("NetworkPolicy", {"serviceAccountSelector": "global()"}),
        'spec.serviceAccountSelector: global() can only be used in an EntityRule namespaceSelector: "global()"',
    ),
    # --- services, HTTP
    (
        gnp(allow(source={"selector": "a == 'x'", "services": {"name": "svc", "namespace": "a"}})),
        f"{ING}.source.selector: selector cannot be combined with services",
    ),
    (
        gnp(allow(source={"services": {"name": "svc"}})),
        f"{ING}.source.services.namespace: services in a GlobalNetworkPolicy must give a namespace",
    ),
    (
        gnp({"action": "Deny", "http": {"methods": ["GET"]}}),
        f"{ING}.http: HTTP match is only valid on Allow rules, not Deny",
    ),
    (
        doc("NetworkPolicy", {"egress": [allow(http={"methods": ["GET"]})]}),
        "spec.egress[0].http: HTTP match not allowed in an egress rule",
    ),
    # --- GlobalNetworkPolicy flags and types
    (
        doc("GlobalNetworkPolicy", {"preDNAT": True, "doNotTrack": True, "applyOnForward": True}),
        "spec.preDNAT: preDNAT and doNotTrack cannot both be true",
    ),
    (
        doc("GlobalNetworkPolicy", {"preDNAT": True, "applyOnForward": True, "egress": [allow()]}),
        "spec.egress: a preDNAT policy cannot have egress rules",
    ),
    (
        doc("GlobalNetworkPolicy", {"preDNAT": True, "applyOnForward": True, "types": ["Egress"]}),
        "spec.types: a preDNAT policy cannot have type Egress",
    ),
    (
        doc("GlobalNetworkPolicy", {"doNotTrack": True}),
        "spec.applyOnForward: applyOnForward must be true when doNotTrack is true",
    ),
    (
        doc("GlobalNetworkPolicy", {"types": ["Ingress", "Ingress"]}),
        'spec.types: duplicate policy type in ["Ingress", "Ingress"]',
    ),
    (
        doc("NetworkPolicy", {"types": ["ingress"]}),
        'spec.types[0]: invalid value "ingress" (want Ingress or Egress)',
    ),
    # --- BGPPeer
    (
        doc("BGPPeer", {"node": "a", "nodeSelector": "all()"}),
        "spec.node: node must be empty when nodeSelector is given",
    ),
    (
        doc("BGPPeer", {"peerIP": "10.0.0.1", "asNumber": 1, "peerSelector": "all()"}),
        "spec.peerIP: peerIP must be empty when peerSelector is given",
    ),
    (
        doc("BGPPeer", {"peerSelector": "all()", "asNumber": 64512}),
        "spec.asNumber: asNumber must be empty when peerSelector is given (the selected nodes' AS is used)",
    ),
    (doc("BGPPeer", {"peerIP": "10.0.0.1"}), "spec.asNumber: asNumber is required with peerIP"),
    (
        doc("BGPPeer", {"peerIP": "[fd00::1]:70000", "asNumber": 1}),
        'spec.peerIP: invalid port in peerIP "[fd00::1]:70000" (want 1-65535)',
    ),
    (
        doc("BGPPeer", {"peerIP": "10.0.0.300", "asNumber": 1}),
        'spec.peerIP: invalid peerIP "10.0.0.300" (want "<IP>", "<IPv4>:<port>" or "[<IPv6>]:<port>")',
    ),
    (
        doc("BGPPeer", {"peerIP": "10.0.0.1", "asNumber": 0}),
        'spec.asNumber: invalid AS number 0 (want 1-4294967295 or dotted "x.y")',
    ),
    (
        doc("BGPPeer", {"peerIP": "10.0.0.1", "asNumber": 4294967296}),
        'spec.asNumber: invalid AS number 4294967296 (want 1-4294967295 or dotted "x.y")',
    ),
    (
        doc("BGPPeer", {"peerIP": "10.0.0.1", "asNumber": "65536.1"}),
        'spec.asNumber: invalid AS number "65536.1" (want 1-4294967295 or dotted "x.y")',
    ),
    (
        doc("BGPPeer", {"localWorkloadSelector": "all()"}),
        "spec.asNumber: asNumber is required with localWorkloadSelector",
    ),
    (
        doc("BGPPeer", {"peerIP": "10.0.0.1", "asNumber": 1, "reachableBy": "fd00::1"}),
        'spec.reachableBy: reachableBy "fd00::1" and peerIP "10.0.0.1" are different IP versions',
    ),
    # --- BGPConfiguration
    (
        doc(
            "BGPConfiguration",
            {
                "communities": [{"name": "c", "value": "65536:1"}],
                "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c"]}],
            },
        ),
        'spec.communities[0].value: invalid community "65536:1" (want "aa:nn" or "aa:nn:mm")',
    ),
    (
        doc(
            "BGPConfiguration",
            {"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["nope"]}]},
        ),
        'spec.prefixAdvertisements[0].communities[0]: community "nope" is neither a value nor a defined name',
    ),
    (
        doc("BGPConfiguration", {"nodeToNodeMeshEnabled": False, "nodeMeshMaxRestartTime": "120s"}),
        "spec.nodeMeshMaxRestartTime: nodeMeshMaxRestartTime cannot be set when nodeToNodeMeshEnabled is false",
    ),
    (
        doc("BGPConfiguration", {"listenPort": 0}),
        "spec.listenPort: invalid listenPort 0 (want 1-65535)",
    ),
    # --- endpoints, nodes
    (
        doc("HostEndpoint", {"node": "n"}),
        "spec.interfaceName: a host endpoint needs an interfaceName or expectedIPs (or both)",
    ),
    (doc("HostEndpoint", {"interfaceName": "eth0"}), "spec.node: required field missing"),
    (
        doc("HostEndpoint", {"node": "n", "interfaceName": "averyveryverylongname"}),
        "spec.interfaceName: invalid interface name \"averyveryverylongname\" (1-15 of letters, digits, '_', '.', '-')",
    ),
    (
        doc("HostEndpoint", {"node": "n", "expectedIPs": ["10.0.0.0/24"]}),
        'spec.expectedIPs[0]: invalid IP address "10.0.0.0/24"',
    ),
    (
        doc(
            "HostEndpoint",
            {
                "node": "n",
                "interfaceName": "eth0",
                "ports": [{"name": "p", "protocol": "ICMP", "port": 1}],
            },
        ),
        'spec.ports[0].protocol: protocol "ICMP" has no ports (want TCP, UDP or SCTP)',
    ),
    (
        doc("WorkloadEndpoint", {"interfaceName": "cali1", "ipNetworks": ["10.0.0.0/24"]}),
        'spec.ipNetworks[0]: ipNetworks entry "10.0.0.0/24" holds several addresses (want a /32 or /128)',
    ),
    (
        doc(
            "WorkloadEndpoint",
            {
                "interfaceName": "cali1",
                "ipNetworks": ["10.0.0.1/32"],
                "ipNATs": [{"internalIP": "10.0.0.2", "externalIP": "1.1.1.1"}],
            },
        ),
        'spec.ipNATs[0].internalIP: internalIP "10.0.0.2" is not one of the endpoint\'s ipNetworks',
    ),
    (
        doc("WorkloadEndpoint", {"interfaceName": "cali1", "mac": "zz:00:00:00:00:00"}),
        'spec.mac: invalid MAC address "zz:00:00:00:00:00"',
    ),
    (doc("Node", {"bgp": {}}), "spec.bgp: must not be empty (omit it instead)"),
    (
        doc("Node", {"bgp": {"ipv4Address": "fd00::1/64"}}),
        'spec.bgp.ipv4Address: expected an IPv4 address/CIDR, got "fd00::1/64"',
    ),
    # --- FelixConfiguration
    (doc("FelixConfiguration", {"bogusField": 1}), 'spec.bogusField: unknown field "bogusField"'),
    (
        doc("FelixConfiguration", {"routeRefreshInterval": "90"}),
        'spec.routeRefreshInterval: invalid duration "90" (want e.g. "90s", "1m30s", "250ms")',
    ),
    (
        doc("FelixConfiguration", {"natOutgoingAddress": "fd00::1"}),
        'spec.natOutgoingAddress: expected an IPv4 address, got "fd00::1"',
    ),
    (
        doc("FelixConfiguration", {"ipipImplementation": "Magic"}),
        'spec.ipipImplementation: invalid value "Magic" (want Kernel, BPF or Auto)',
    ),
    # --- Kubernetes NetworkPolicy
    (
        doc(
            "NetworkPolicy",
            {
                "ingress": [
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}
                ]
            },
            api=K8S_NP,
        ),
        'spec.ingress[0].from[0].ipBlock.except[0]: except "11.0.0.0/16" must be a strict subset of cidr "10.0.0.0/8"',
    ),
    (
        doc(
            "NetworkPolicy",
            {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
            api=K8S_NP,
        ),
        "spec.ingress[0].from[0].ipBlock: ipBlock cannot be combined with podSelector or namespaceSelector",
    ),
    (
        doc("NetworkPolicy", {"ingress": [{"form": []}]}, api=K8S_NP),
        'spec.ingress[0].form: unknown field "form" (did you mean "from"?)',
    ),
    (
        doc(
            "NetworkPolicy", {"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}, api=K8S_NP
        ),
        "spec.ingress[0].ports[0].endPort: endPort needs a numeric port",
    ),
    (
        doc("NetworkPolicy", {"ingress": [{"ports": [{"port": 100, "endPort": 90}]}]}, api=K8S_NP),
        "spec.ingress[0].ports[0].endPort: endPort 90 must be between port 100 and 65535",
    ),
    (
        doc(
            "NetworkPolicy",
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            api=K8S_NP,
        ),
        "spec.podSelector.matchExpressions[0].values: operator In needs at least one value",
    ),
    (
        doc("NetworkPolicy", {"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, api=K8S_NP),
        'spec.ingress[0].ports[0].protocol: invalid value "ICMP" (want TCP, UDP or SCTP)',
    ),
    (
        doc("NetworkPolicy", {"ingress": [{"from": [{}]}]}, api=K8S_NP),
        "spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock",
    ),
    # --- structure
    (
        {
            "apiVersion": V3,
            "kind": "IPPool",
            "metadata": {"nmae": "x"},
            "spec": {"cidr": "10.0.0.0/16"},
        },
        'metadata.nmae: unknown field "nmae" (did you mean "name"?) (+1 more)',
    ),
    (
        {"apiVersion": V3, "kind": "IPPool", "metadata": {"name": "x"}, "specs": {}},
        'specs: unknown field "specs" (did you mean "spec"?) (+1 more)',
    ),
    (pool(foo=1, bar=2), 'spec.foo: unknown field "foo" (+1 more)'),
]


def _label(d: dict) -> str:
    name = d["metadata"].get("name")
    if name and d["metadata"].get("namespace"):
        name = f"{d['metadata']['namespace']}/{name}"
    return f"({d['kind']} {name})" if name else f"({d['kind']})"


@pytest.mark.parametrize(("manifest", "message"), CASES, ids=[m for _, m in CASES])
def test_bad_input_message(manifest, message):
    with pytest.raises(ResourceError) as exc:
        from_dict(manifest, "document 1")
    text = str(exc.value)
    assert text == f"document 1 {_label(manifest)}: {message}"
    assert "\n" not in text


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (
            {"kind": "IPPool", "metadata": {"name": "p"}},
            "document 1 (IPPool p): apiVersion: required field missing",
        ),
        (
            {"apiVersion": V3, "kind": "IPPol", "metadata": {"name": "p"}},
            'document 1 (IPPol p): unknown kind "IPPol"; valid kinds: IPPool, Node, ',
        ),
        (
            {"apiVersion": "projectcalico.org/v2", "kind": "IPPool", "metadata": {"name": "p"}},
            'document 1 (IPPool p): unsupported apiVersion "projectcalico.org/v2" for kind IPPool (want projectcalico.org/v3)',
        ),
        (["not", "a", "mapping"], "document 1: expected a mapping with apiVersion and kind, got "),
    ],
)
def test_bad_document_shape(manifest, message):
    with pytest.raises(ResourceError) as exc:
        from_dict(manifest, "document 1")
    assert str(exc.value).startswith(message)


def test_error_in_yaml_names_the_document_and_nothing_is_returned():
    text = "\n---\n".join(
        [
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t1}",
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t2}",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n"
            "spec:\n  ingress:\n  - action: Allow\n    destination:\n      ports: [443]",
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t4}",
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t5}",
        ]
    )
    with pytest.raises(ResourceError) as exc:
        parse_documents(text)
    assert str(exc.value) == (
        "document 3 (NetworkPolicy prod/p): spec.ingress[0].destination.ports[0]: "
        "port 443 needs the rule protocol set to TCP, UDP or SCTP"
    )


def test_resource_error_is_a_value_error():
    assert issubclass(ResourceError, ValueError)
