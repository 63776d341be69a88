"""tabby.resources: parsing manifests as Calico users write them, defaults, round trips,
the kind registry and the codec (YAML/JSON/List)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tabby.resources import (
    DEFAULT_FAILSAFE_INBOUND_HOST_PORTS,
    BGPConfiguration,
    BGPPeer,
    EntityRule,
    FelixConfiguration,
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    HostEndpoint,
    IPPool,
    IPPoolSpec,
    KubernetesNamespace,
    KubernetesNetworkPolicy,
    NetworkPolicy,
    NetworkSet,
    Node,
    ObjectMeta,
    Port,
    Profile,
    Protocol,
    ResourceError,
    Rule,
    Tier,
    WorkloadEndpoint,
    default_policy_types,
    dump_json,
    dump_yaml,
    duration_seconds,
    from_dict,
    kind_for,
    kind_info,
    parse_documents,
    to_dict,
)

SAMPLE = Path(__file__).parent / "manifests" / "calico-sample.yaml"


def _one(text: str):
    (res,) = parse_documents(text)
    return res


def _pool(**spec):
    return from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "p"},
            "spec": spec,
        }
    )


# --------------------------------------------------------------------------- the sample set


@pytest.fixture(scope="module")
def sample():
    return parse_documents(SAMPLE.read_text(), str(SAMPLE))


def test_sample_parses_every_kind(sample):
    kinds = [type(r) for r in sample]
    for cls in (
        IPPool,
        Tier,
        GlobalNetworkPolicy,
        NetworkPolicy,
        Profile,
        NetworkSet,
        GlobalNetworkSet,
        BGPConfiguration,
        BGPPeer,
        HostEndpoint,
        FelixConfiguration,
        WorkloadEndpoint,
        Node,
        KubernetesNamespace,
        KubernetesNetworkPolicy,
    ):
        assert cls in kinds, cls
    assert len(sample) == 18


def test_sample_round_trips_exactly(sample):
    first = [to_dict(r) for r in sample]
    again = parse_documents(dump_yaml(sample, as_list=False))
    assert [to_dict(r) for r in again] == first
    # and through JSON, as the datastore stores values
    from_json = [from_dict(json.loads(json.dumps(d))) for d in first]
    assert [to_dict(r) for r in from_json] == first
    # and once more: the output is a fixed point
    assert [to_dict(r) for r in parse_documents(dump_yaml(again))] == first


def test_sample_values_are_typed(sample):
    by_name = {r.name: r for r in sample}
    np = by_name["allow-tcp-6379"]
    assert isinstance(np, NetworkPolicy)
    assert np.namespace == "production"
    allow = np.spec.ingress[2]
    assert isinstance(allow, Rule)
    assert allow.protocol == Protocol("TCP") and allow.protocol.number == 6
    assert [p.root for p in allow.destination.ports] == [6379, "redis"]
    assert allow.destination.ports[1].is_named
    assert np.spec.ingress[1].source.namespaceSelector == "global()"
    gnp = by_name["allow-ssh-on-hosts"]
    ports = gnp.spec.ingress[0].destination.ports
    assert (ports[1].min_port, ports[1].max_port) == (6443, 6444)
    wep = by_name["node1-k8s-my--nginx--b1337a-eth0"]
    assert wep.spec.containerID == "1337495556942031415926535"
    assert [str(a) for a in wep.spec.addresses()] == ["192.168.0.0"]
    knp = by_name["test-network-policy"]
    peer = knp.spec.ingress[0].from_[0]
    assert peer.ipBlock.except_ == ["172.17.1.0/24"]
    assert knp.spec.egress[0].ports[0].endPort == 6000


def test_sample_keys(sample):
    keys = {r.key for r in sample}
    assert "/tabby/v3/ippools/default-ipv4-ippool" in keys
    assert "/tabby/v3/networkpolicies/production/allow-tcp-6379" in keys
    assert "/tabby/v3/workloadendpoints/default/node1-k8s-my--nginx--b1337a-eth0" in keys
    assert "/tabby/k8s/networkpolicies/default/test-network-policy" in keys
    assert "/tabby/k8s/namespaces/production" in keys
    assert len(keys) == len(sample)


# --------------------------------------------------------------------------- defaults


def test_ippool_defaults_v4_materialised():
    spec = _pool(cidr="10.1.0.0/16").spec
    assert spec.blockSize == 26
    assert (spec.ipipMode, spec.vxlanMode) == ("Never", "Never")
    assert spec.natOutgoing is False
    assert spec.nodeSelector == "all()"
    assert spec.allowedUses == ["Workload", "Tunnel"]
    out = to_dict(_pool(cidr="10.1.0.0/16"))["spec"]
    assert out["blockSize"] == 26 and out["natOutgoing"] is False
    assert out["allowedUses"] == ["Workload", "Tunnel"]


def test_ippool_defaults_v6_and_canonical_cidr():
    spec = _pool(cidr="FD00:0:0:1::/64").spec
    assert spec.blockSize == 122
    assert spec.cidr == "fd00:0:0:1::/64"
    assert spec.ip_version == 6
    assert _pool(cidr="10.0.0.0/16", allowedUses=[]).spec.allowedUses == ["Workload", "Tunnel"]


def test_ippool_disabled_may_be_smaller_than_a_block():
    assert _pool(cidr="10.0.0.0/28", disabled=True).spec.blockSize == 26
    with pytest.raises(ResourceError, match="smaller than one block"):
        _pool(cidr="10.0.0.0/28")


@pytest.mark.parametrize(
    ("ingress", "egress", "want"),
    [
        (None, None, ["Ingress"]),
        ([{"action": "Allow"}], None, ["Ingress"]),
        (None, [{"action": "Allow"}], ["Egress"]),
        ([], [{"action": "Allow"}], ["Egress"]),
        ([{"action": "Allow"}], [{"action": "Deny"}], ["Ingress", "Egress"]),
    ],
)
def test_policy_types_inferred(ingress, egress, want):
    spec: dict = {}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    for kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
        res = from_dict(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": kind,
                "metadata": {"name": "p"},
                "spec": spec,
            }
        )
        assert res.spec.types == want
        assert res.spec.tier == "default"
        assert to_dict(res)["spec"]["types"] == want


def test_policy_types_given_are_kept():
    res = _one(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p}\n"
        "spec: {types: [Egress], ingress: [{action: Allow}]}\n"
    )
    assert res.spec.types == ["Egress"]
    assert default_policy_types([], []) == ["Ingress"]


def test_namespace_defaults_for_namespaced_kinds():
    res = _one("apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: ns1}\n")
    assert res.namespace == "default"
    assert res.key == "/tabby/v3/networksets/default/ns1"
    knp = _one("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k}\n")
    assert knp.namespace == "default"
    assert knp.spec.policyTypes == ["Ingress"]
    assert knp.spec.podSelector.is_empty()


def test_k8s_policy_types_and_protocol_defaulting():
    knp = _one(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k, namespace: x}\n"
        "spec:\n  podSelector: {}\n  egress:\n  - ports: [{port: 53}, {protocol: UDP, port: dns}]\n"
    )
    assert knp.spec.policyTypes == ["Ingress", "Egress"]
    ports = knp.spec.egress[0].ports
    assert (ports[0].protocol, ports[0].port) == ("TCP", 53)
    assert (ports[1].protocol, ports[1].port) == ("UDP", "dns")


def test_namespace_gets_metadata_name_label():
    ns = _one("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a, labels: {env: dev}}\n")
    assert ns.metadata.labels == {"env": "dev", "kubernetes.io/metadata.name": "team-a"}
    assert ns.key == "/tabby/k8s/namespaces/team-a"


def test_bgp_configuration_optional_with_effective_defaults():
    empty = _one(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n"
    )
    assert empty.spec.nodeToNodeMeshEnabled is None
    assert to_dict(empty)["spec"] == {}
    assert empty.spec.effective_node_to_node_mesh is True
    assert empty.spec.effective_as_number == 64512
    assert empty.spec.effective_listen_port == 179
    assert empty.spec.effective_log_severity == "Info"
    set_ = _one(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n"
        "spec: {nodeToNodeMeshEnabled: false, asNumber: '1.10'}\n"
    )
    assert set_.spec.effective_node_to_node_mesh is False
    assert set_.spec.asNumber == 65546  # asdot "1.10" stored as a plain number
    assert to_dict(set_)["spec"]["asNumber"] == 65546


def test_felix_configuration_defaults_and_failsafes():
    fc = _one(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\n"
    )
    assert fc.spec.effective("failsafeInboundHostPorts") == list(
        DEFAULT_FAILSAFE_INBOUND_HOST_PORTS
    )
    assert [(p.protocol, p.port) for p in DEFAULT_FAILSAFE_INBOUND_HOST_PORTS][:3] == [
        ("TCP", 22),
        ("UDP", 68),
        ("TCP", 179),
    ]
    assert fc.spec.effective("defaultEndpointToHostAction") == "Drop"
    assert fc.spec.effective("ipipImplementation") == "Auto"
    assert fc.spec.effective("vxlanVNI") == 4096
    with pytest.raises(KeyError):
        fc.spec.effective("noSuchField")
    node = _one(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: node.host-1}\n"
        "spec: {failsafeInboundHostPorts: [], routeRefreshInterval: 1m30s}\n"
    )
    assert node.spec.effective("failsafeInboundHostPorts") == []  # "[]" disables, not default
    assert duration_seconds(node.spec.routeRefreshInterval) == 90.0


def test_tier_defaults():
    t = _one("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: default}\n")
    assert (t.spec.order, t.spec.defaultAction) == (1_000_000, "Deny")
    assert to_dict(t)["spec"] == {"order": 1000000, "defaultAction": "Deny"}
    t = _one("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: kube-admin}\n")
    assert (t.spec.order, t.spec.defaultAction) == (1000, "Pass")
    t = _one("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: sec}\n")
    assert (t.spec.order, t.spec.defaultAction) == (None, "Deny")


def test_order_prints_like_calico():
    gnp = _one(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\n"
        "spec: {order: 100}\n"
    )
    assert gnp.spec.order == 100.0
    assert to_dict(gnp)["spec"]["order"] == 100 and isinstance(to_dict(gnp)["spec"]["order"], int)
    gnp = _one(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\n"
        "spec: {order: 10.5}\n"
    )
    assert to_dict(gnp)["spec"]["order"] == 10.5


def test_models_built_in_python():
    pool = IPPool(metadata=ObjectMeta(name="p"), spec=IPPoolSpec(cidr="10.0.0.0/16"))
    assert (pool.key, pool.spec.blockSize) == ("/tabby/v3/ippools/p", 26)
    np = NetworkPolicy(metadata={"name": "x"}, spec={"ingress": [{"action": "Allow"}]})
    assert (np.namespace, np.spec.types) == ("default", ["Ingress"])
    rule = Rule(action="Allow", protocol="TCP", destination=EntityRule(ports=[80, "1000:2000"]))
    assert [p.max_port for p in rule.destination.ports] == [80, 2000]
    assert np.describe() == "NetworkPolicy default/x"
    knp = from_dict(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "k", "namespace": "a"},
            "status": {},
        }
    )
    assert knp.describe() == "KubernetesNetworkPolicy a/k"
    with pytest.raises(ValidationError):
        IPPoolSpec(cidr="10.0.0.1/16")


# --------------------------------------------------------------------------- values


def test_port_forms():
    assert Port(80).root == 80 and not Port(80).is_named
    assert Port("80").root == 80  # a numeric string is the number, as Calico stores it
    assert (Port("80:90").min_port, Port("80:90").max_port) == (80, 90)
    assert Port("http-alt").port_name == "http-alt"
    assert (Port("http").min_port, Port("http").max_port) == (0, 0)


def test_protocol_forms():
    assert Protocol("SCTP").supports_ports
    assert not Protocol("ICMPv6").supports_ports
    assert Protocol(17).number == 17 and Protocol("17").root == 17
    assert Protocol("UDPLite").number == 136


def test_empty_rule_sides_are_not_printed():
    gnp = _one(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\n"
        "spec: {egress: [{action: Allow, source: {}}]}\n"
    )
    assert to_dict(gnp)["spec"]["egress"] == [{"action": "Allow"}]
    assert gnp.spec.egress[0].source.is_empty()


def test_yaml_quirks_handled():
    # 10:59 is a base-60 integer to PyYAML and a timestamp would become a datetime.
    gnp = _one(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n"
        "  name: p\n  creationTimestamp: 2024-05-01T10:00:00Z\n  resourceVersion: 42\n"
        "spec:\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination:\n      ports: [10:59]\n"
    )
    assert gnp.spec.ingress[0].destination.ports[0].root == "10:59"
    assert gnp.metadata.creationTimestamp == "2024-05-01T10:00:00Z"
    assert gnp.metadata.resourceVersion == "42"
    # a datetime from some other loader is turned back into RFC 3339
    d = to_dict(gnp)
    d["metadata"]["creationTimestamp"] = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
    assert from_dict(d).metadata.creationTimestamp == "2024-05-01T10:00:00Z"


def test_null_spec_is_empty():
    prof = _one("apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: x}\nspec:\n")
    assert prof.spec.ingress is None


def test_metadata_keeps_only_set_fields():
    prof = _one(
        "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: x\n  uid: abc\n"
        "  labels: {}\n  annotations: {note: hi}\n"
    )
    assert to_dict(prof)["metadata"] == {
        "name": "x",
        "uid": "abc",
        "labels": {},
        "annotations": {"note": "hi"},
    }


# --------------------------------------------------------------------------- codec


def test_json_single_object_and_list():
    obj = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "HostEndpoint",
        "metadata": {"name": "h1"},
        "spec": {"node": "n1", "interfaceName": "*"},
    }
    (res,) = parse_documents(json.dumps(obj))
    assert isinstance(res, HostEndpoint) and res.spec.interfaceName == "*"
    lst = {"apiVersion": "v1", "kind": "List", "items": [obj, {**obj, "metadata": {"name": "h2"}}]}
    assert [r.name for r in parse_documents(json.dumps(lst))] == ["h1", "h2"]
    assert [r.name for r in parse_documents(json.dumps([obj]))] == ["h1"]


def test_yaml_list_and_typed_list_without_item_kinds():
    text = (
        "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nitems:\n"
        "- metadata: {name: a}\n  spec: {cidr: 10.0.0.0/16}\n"
        "- apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata: {name: b}\n"
        "  spec: {cidr: 10.1.0.0/16}\n"
        "---\napiVersion: v1\nkind: List\nitems: []\n"
    )
    assert [(type(r), r.name) for r in parse_documents(text)] == [(IPPool, "a"), (IPPool, "b")]


def test_list_item_errors_name_document_and_item():
    text = (
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n"
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: ok}}\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: Bad_Name}}\n"
    )
    with pytest.raises(ResourceError) as exc:
        parse_documents(text)
    assert str(exc.value).startswith("document 2 item 2 (Namespace Bad_Name): metadata.name: ")


def test_third_of_five_documents_bad_names_document_3():
    good = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-%d}\nspec: {cidr: 10.%d.0.0/16}\n"
    docs = [good % (i, i) for i in range(5)]
    docs[2] = docs[2].replace("/16", "/33")
    text = "---\n".join(docs)
    with pytest.raises(ResourceError) as exc:
        parse_documents(text)
    assert str(exc.value) == 'document 3 (IPPool pool-2): spec.cidr: invalid CIDR "10.2.0.0/33"'
    with pytest.raises(ResourceError) as exc:
        parse_documents(text, "pools.yaml")
    assert str(exc.value).startswith("pools.yaml: document 3 (IPPool pool-2): spec.cidr:")


def test_empty_documents_are_skipped_but_counted():
    text = "---\n# nothing here\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: Bad}\n---\n"
    with pytest.raises(ResourceError, match=r"^document 2 \(Namespace Bad\)"):
        parse_documents(text)
    assert parse_documents("") == []


def test_dump_yaml_and_json_shapes(sample):
    one = [sample[0]]
    assert yaml.safe_load(dump_yaml(one))["kind"] == "IPPool"
    assert json.loads(dump_json(one))["kind"] == "IPPool"
    many = json.loads(dump_json(sample[:3]))
    assert many["kind"] == "List" and len(many["items"]) == 3
    assert yaml.safe_load(dump_yaml(sample[:2]))["kind"] == "List"
    assert [r.name for r in parse_documents(dump_json(sample[:3]))] == [r.name for r in sample[:3]]
    assert len(list(yaml.safe_load_all(dump_yaml(sample[:2], as_list=False)))) == 2
    assert json.loads(dump_json(one, as_list=True))["items"][0]["kind"] == "IPPool"


def test_bad_yaml_and_json_report_position():
    with pytest.raises(ResourceError, match=r"^<stdin>: invalid YAML at line 2"):
        parse_documents("a: b\n  c: d: e\n")
    with pytest.raises(ResourceError, match=r"^x.json: invalid JSON at line 1"):
        parse_documents('{"kind": ', "x.json")
    with pytest.raises(ResourceError, match=r"duplicate key .cidr."):
        parse_documents("apiVersion: v1\nspec:\n  cidr: a\n  cidr: b\n")


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("alias", "kind"),
    [
        ("ippool", "IPPool"),
        ("IPPools", "IPPool"),
        ("gnp", "GlobalNetworkPolicy"),
        ("globalnetworkpolicies", "GlobalNetworkPolicy"),
        ("policy", "NetworkPolicy"),
        ("np", "NetworkPolicy"),
        ("networkpolicies", "NetworkPolicy"),
        ("hep", "HostEndpoint"),
        ("wep", "WorkloadEndpoint"),
        ("bgpconfig", "BGPConfiguration"),
        ("felixconfigurations", "FelixConfiguration"),
        ("netsets", "NetworkSet"),
        ("tier", "Tier"),
        ("BGPPeer", "BGPPeer"),
        ("profiles", "Profile"),
        ("nodes", "Node"),
        ("globalnetworksets", "GlobalNetworkSet"),
    ],
)
def test_kind_aliases(alias, kind):
    info = kind_info(alias)
    assert info.kind == kind and info.api_version == "projectcalico.org/v3"


def test_kubernetes_kind_aliases():
    assert kind_info("k8snetworkpolicy").cls is KubernetesNetworkPolicy
    assert kind_info("networkpolicies.networking.k8s.io").cls is KubernetesNetworkPolicy
    assert kind_info("ns").cls is KubernetesNamespace
    assert kind_for("networking.k8s.io/v1", "NetworkPolicy").cls is KubernetesNetworkPolicy
    assert kind_for("projectcalico.org/v3", "NetworkPolicy").cls is NetworkPolicy


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(
        ResourceError, match=r'unknown resource type "ipool"; valid types: IPPool, '
    ):
        kind_info("ipool")


def test_keys_and_prefixes():
    pools = kind_info("ippool")
    assert pools.key("p1") == "/tabby/v3/ippools/p1"
    assert pools.prefix() == "/tabby/v3/ippools/"
    nps = kind_info("np")
    assert nps.key("a", "prod") == "/tabby/v3/networkpolicies/prod/a"
    assert nps.prefix("prod") == "/tabby/v3/networkpolicies/prod/"
    assert nps.prefix() == "/tabby/v3/networkpolicies/"
    assert nps.parse_key("/tabby/v3/networkpolicies/prod/a") == ("prod", "a")
    assert pools.parse_key("/tabby/v3/ippools/p1") == (None, "p1")
    knp = kind_info("knp")
    assert knp.key("a", "prod") == "/tabby/k8s/networkpolicies/prod/a"
    with pytest.raises(ResourceError):
        nps.key("a")
    with pytest.raises(ResourceError):
        pools.key("a", "prod")
    with pytest.raises(ResourceError):
        pools.prefix("prod")
