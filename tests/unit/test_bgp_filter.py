"""BGPFilter: the resource (Calico's fields and validation), the CLI verbs, and how rules
become BIRD functions called from the sessions of the BGPPeers that list them. The golden
file `bgp_filters.conf` (test_bgp_render.py) holds the whole rendering and is checked with
`bird -p`; tests/netns/test_bgp_filter.py shows the filters acting on real routes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tabby.bgp import filters as bgpfilters
from tabby.bgp.bird import check_config
from tabby.bgp.inputs import FILTERS, WATCH_PREFIXES, BgpInputs
from tabby.bgp.render import render
from tabby.cli.main import main
from tabby.resources import (
    BGPFilter,
    BGPFilterRuleV4,
    BGPFilterRuleV6,
    ResourceError,
    from_dict,
    kind_info,
    parse_documents,
    to_dict,
)

V3 = "projectcalico.org/v3"

# Calico's own sample (docs.tigera.io reference/resources/bgpfilter), field for field.
CALICO_SAMPLE = """\
apiVersion: projectcalico.org/v3
kind: BGPFilter
metadata:
  name: my-filter
spec:
  exportV4:
    - action: Accept
      matchOperator: In
      cidr: 77.0.0.0/16
      source: RemotePeers
    - action: Reject
      interface: '*.calico'
  importV4:
    - action: Accept
      matchOperator: In
      cidr: 55.0.0.0/16
      prefixLength:
        min: 30
    - action: Reject
      matchOperator: NotIn
      cidr: 44.0.0.0/16
  exportV6:
    - action: Reject
      source: RemotePeers
    - action: Reject
      interface: '*.calico'
  importV6:
    - action: Accept
      matchOperator: Equal
      cidr: 5000::0/64
    - action: Reject
"""


def doc(spec: dict[str, Any], name: str = "f") -> dict[str, Any]:
    return {"apiVersion": V3, "kind": "BGPFilter", "metadata": {"name": name}, "spec": spec}


def v4(*rules: dict[str, Any], field: str = "exportV4") -> dict[str, Any]:
    return doc({field: list(rules)})


# ------------------------------------------------------------------------------ the resource


def test_calico_sample_parses_and_round_trips() -> None:
    [res] = parse_documents(CALICO_SAMPLE, "sample.yaml")
    assert isinstance(res, BGPFilter)
    assert [r.action for r in res.spec.exportV4 or ()] == ["Accept", "Reject"]
    assert res.spec.importV4 and res.spec.importV4[0].prefixLength is not None
    assert res.spec.importV4[0].prefixLength.min == 30
    assert to_dict(from_dict(to_dict(res))) == to_dict(res)
    # Written fields come back exactly as written (no defaults added).
    import yaml

    assert to_dict(res)["spec"] == yaml.safe_load(CALICO_SAMPLE)["spec"]


def test_kind_is_registered_cluster_scoped() -> None:
    for alias in ("BGPFilter", "bgpfilter", "bgpfilters"):
        assert kind_info(alias).cls is BGPFilter
    info = kind_info("bgpfilter")
    assert not info.namespaced
    assert info.key("edge") == "/tabby/v3/bgpfilters/edge" == f"{FILTERS}edge"
    assert FILTERS in WATCH_PREFIXES


BAD: list[tuple[dict[str, Any], str]] = [
    (v4({"matchOperator": "In", "cidr": "10.0.0.0/8"}),
     "spec.exportV4[0].action: required field missing"),
    (v4({"action": "Allow"}),
     'spec.exportV4[0].action: invalid value "Allow" (want Accept or Reject)'),
    (v4({"action": "Accept", "matchOperator": "Contains", "cidr": "10.0.0.0/8"}),
     'spec.exportV4[0].matchOperator: invalid value "Contains" (want Equal, NotEqual, In '
     "or NotIn)"),
    (v4({"action": "Accept", "cidr": "10.0.0.0/8"}),
     "spec.exportV4[0].matchOperator: matchOperator is required with cidr"),
    (v4({"action": "Accept", "matchOperator": "In"}),
     "spec.exportV4[0].cidr: cidr is required with matchOperator"),
    (v4({"action": "Accept", "prefixLength": {"min": 24}}),
     "spec.exportV4[0].cidr: cidr is required with prefixLength"),
    (v4({"action": "Accept", "matchOperator": "In", "cidr": "fd00::/64"}),
     'spec.exportV4[0].cidr: expected an IPv4 CIDR, got "fd00::/64"'),
    (doc({"importV6": [{"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.0/8"}]}),
     'spec.importV6[0].cidr: expected an IPv6 CIDR, got "10.0.0.0/8"'),
    (v4({"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.1/8"}),
     "spec.exportV4[0].cidr: CIDR \"10.0.0.1/8\" has host bits set (did you mean '10.0.0.0/8'?)"),
    (v4({"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.0/33"}),
     'spec.exportV4[0].cidr: invalid IPv4 CIDR "10.0.0.0/33"'),
    (v4({"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.0/8",
         "prefixLength": {"max": 33}}),
     "spec.exportV4[0].prefixLength.max: invalid prefix length 33 (want 0-32)"),
    (doc({"exportV6": [{"action": "Accept", "matchOperator": "In", "cidr": "fd00::/8",
                        "prefixLength": {"min": 129}}]}),
     "spec.exportV6[0].prefixLength.min: invalid prefix length 129 (want 0-128)"),
    (v4({"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.0/8",
         "prefixLength": {"min": 28, "max": 24}}),
     'spec.exportV4[0].prefixLength: prefixLength {"min": 28, "max": 24}: min is greater '
     "than max"),
    (v4({"action": "Accept", "matchOperator": "NotIn", "cidr": "10.0.0.0/16",
         "prefixLength": {"max": 8}}),
     'spec.exportV4[0].prefixLength: prefixLength {"max": 8}: max is shorter than cidr '
     '"10.0.0.0/16": no route in it could match'),
    (v4({"action": "Accept", "matchOperator": "Equal", "cidr": "10.0.0.0/16",
         "prefixLength": {"min": 24}}),
     'spec.exportV4[0].prefixLength: prefixLength {"min": 24} excludes /16, the only length '
     'cidr "10.0.0.0/16" has: the rule could never match'),
    (v4({"action": "Reject", "source": "LocalPeers"}),
     'spec.exportV4[0].source: invalid value "LocalPeers" (want RemotePeers)'),
    (v4({"action": "Reject", "interface": "eth0 lo"}),
     "spec.exportV4[0].interface: invalid interface \"eth0 lo\" (1-15 of letters, digits, '_', "
     "'.', '-', '*')"),
    (v4({"action": "Reject", "interface": "a-much-too-long-name*"}),
     'spec.exportV4[0].interface: invalid interface "a-much-too-long-name*"'),
    (v4({"action": "Reject", "interface": 'x"y'}), "spec.exportV4[0].interface: invalid"),
    (v4({"action": "Reject", "cidrs": ["10.0.0.0/8"]}),
     'spec.exportV4[0].cidrs: unknown field "cidrs" (did you mean "cidr"?)'),
    (doc({"exportv4": []}), 'spec.exportv4: unknown field "exportv4" (did you mean "exportV4"?)'),
    (v4({"action": "Reject", "prefixLength": {"min": "24"}}),
     "prefixLength.min: invalid prefix length \"24\" (want 0-32)"),
]


@pytest.mark.parametrize(("manifest", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_filters_name_field_and_value(manifest: dict[str, Any], message: str) -> None:
    with pytest.raises(ResourceError) as exc:
        from_dict(manifest, where="document 1")
    text = str(exc.value)
    assert "\n" not in text
    assert message in text, text


GOOD_RULES: list[dict[str, Any]] = [
    {"action": "Accept"},  # no condition: every route
    {"action": "Reject", "source": "RemotePeers"},
    {"action": "Reject", "interface": "*.calico"},
    {"action": "Accept", "matchOperator": "Equal", "cidr": "10.0.0.1"},  # bare IP: a /32
    {"action": "Accept", "matchOperator": "Equal", "cidr": "10.0.0.0/16",
     "prefixLength": {"min": 16, "max": 24}},
    {"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.0/16",
     "prefixLength": {"min": 0, "max": 16}},
    {"action": "Accept", "matchOperator": "NotIn", "cidr": "0.0.0.0/0",
     "prefixLength": {"max": 0}},
]


@pytest.mark.parametrize("rule", GOOD_RULES, ids=[json.dumps(r) for r in GOOD_RULES])
def test_good_rules(rule: dict[str, Any]) -> None:
    res = from_dict(v4(rule))
    assert to_dict(res)["spec"]["exportV4"] == [rule]


# ------------------------------------------------------------------------------ rules -> BIRD


def rule4(**fields: Any) -> BGPFilterRuleV4:
    return BGPFilterRuleV4.model_validate({"action": "Accept", **fields})


def rule6(**fields: Any) -> BGPFilterRuleV6:
    return BGPFilterRuleV6.model_validate({"action": "Accept", **fields})


@pytest.mark.parametrize(("rule", "condition"), [
    (rule4(), None),
    (rule4(matchOperator="Equal", cidr="10.0.0.0/16"), "net = 10.0.0.0/16"),
    (rule4(matchOperator="NotEqual", cidr="10.0.0.0/16"), "net != 10.0.0.0/16"),
    (rule4(matchOperator="In", cidr="10.0.0.0/16"), "net ~ 10.0.0.0/16"),
    (rule4(matchOperator="NotIn", cidr="10.0.0.0/16"), "net !~ 10.0.0.0/16"),
    (rule4(matchOperator="Equal", cidr="10.0.0.7"), "net = 10.0.0.7/32"),
    # prefixLength: min defaults to the cidr's length, max to the family's longest
    (rule4(matchOperator="In", cidr="10.0.0.0/16", prefixLength={"min": 30}),
     "net ~ [ 10.0.0.0/16{30,32} ]"),
    (rule4(matchOperator="In", cidr="10.0.0.0/16", prefixLength={"max": 24}),
     "net ~ [ 10.0.0.0/16{16,24} ]"),
    (rule4(matchOperator="NotIn", cidr="10.0.0.0/16", prefixLength={"min": 20, "max": 28}),
     "net !~ [ 10.0.0.0/16{20,28} ]"),
    # a min below the cidr's length cannot match more: it starts at the cidr
    (rule4(matchOperator="In", cidr="10.0.0.0/16", prefixLength={"min": 8, "max": 24}),
     "net ~ [ 10.0.0.0/16{16,24} ]"),
    (rule4(matchOperator="In", cidr="10.0.0.0/16", prefixLength={"min": 16, "max": 32}),
     "net ~ 10.0.0.0/16"),
    (rule4(matchOperator="Equal", cidr="10.0.0.0/16", prefixLength={"min": 16}),
     "net = 10.0.0.0/16"),
    (rule4(source="RemotePeers"), "source = RTS_BGP"),
    (rule4(interface="eth*"), 'ifname ~ "eth*"'),
    (rule4(matchOperator="In", cidr="10.0.0.0/8", source="RemotePeers", interface="*.calico"),
     '(net ~ 10.0.0.0/8) && (source = RTS_BGP) && (ifname ~ "*.calico")'),
    (rule6(matchOperator="In", cidr="fd00::/48", prefixLength={"min": 64}),
     "net ~ [ fd00::/48{64,128} ]"),
    (rule6(matchOperator="Equal", cidr="5000::0/64"), "net = 5000::/64"),
    (rule6(matchOperator="NotIn", cidr="fd00::/48"), "net !~ fd00::/48"),
])
def test_rule_condition(rule: Any, condition: str | None) -> None:
    assert bgpfilters.rule_condition(rule) == condition


def test_function_names_fit_bird_symbols() -> None:
    assert bgpfilters.function_name("edge", "import", 4) == "'tabby_bgpfilter_edge_import4'"
    long_a = "x" * 200 + ".a"
    long_b = "x" * 200 + ".b"
    names = {bgpfilters.function_name(n, "export", 6) for n in (long_a, long_b)}
    assert len(names) == 2  # shortened names stay distinct
    assert all(len(n) - 2 <= 64 for n in names)  # BIRD's limit, without the quotes
    assert bgpfilters.function_name(long_a, "export", 6) == bgpfilters.function_name(
        long_a, "export", 6)


# ------------------------------------------------------------------------------ sessions


def put(inputs: BgpInputs, kind: str, plural: str, name: str, spec: dict[str, Any]) -> None:
    inputs.apply(f"/tabby/v3/{plural}/{name}",
                 {"apiVersion": V3, "kind": kind, "metadata": {"name": name}, "spec": spec})


def two_nodes(*filter_names: str, **filters: dict[str, Any]) -> BgpInputs:
    inputs = BgpInputs()
    put(inputs, "Node", "nodes", "n1", {"bgp": {"ipv4Address": "172.31.0.10/24",
                                                "ipv6Address": "fd00:31::10/64"}})
    put(inputs, "Node", "nodes", "n2", {"bgp": {"ipv4Address": "172.31.0.11/24"}})
    put(inputs, "IPPool", "ippools", "pool", {"cidr": "10.65.0.0/16"})
    inputs.apply("/tabby/ipam/v2/affinities/n1/10.65.1.0-26",
                 {"node": "n1", "cidr": "10.65.1.0/26", "state": "confirmed"})
    for name, spec in filters.items():
        put(inputs, "BGPFilter", "bgpfilters", name.replace("_", "-"), spec)
    put(inputs, "BGPPeer", "bgppeers", "ext",
        {"peerIP": "192.0.2.1", "asNumber": 65000, "filters": list(filter_names)})
    return inputs


def session(config: str, name: str) -> str:
    start = config.index(f"protocol bgp {name} ")
    return config[start:config.index("\n}", start)]


REJECT_ALL = {"exportV4": [{"action": "Reject"}], "importV4": [{"action": "Reject"}]}
ACCEPT_ALL = {"exportV4": [{"action": "Accept"}], "importV4": [{"action": "Accept"}]}


def test_filters_are_called_in_the_peers_order_before_the_default() -> None:
    inputs = two_nodes("second", "first", second=REJECT_ALL, first=ACCEPT_ALL)
    r = render(inputs, "n1")
    ext = session(r.config, "Global_192_0_2_1")
    calls = [line.strip() for line in ext.splitlines() if "();" in line]
    assert calls == [
        "'tabby_bgpfilter_second_import4'();  # BGPFilter \"second\"",
        "'tabby_bgpfilter_first_import4'();  # BGPFilter \"first\"",
        "'tabby_bgpfilter_second_export4'();  # BGPFilter \"second\"",
        "'tabby_bgpfilter_first_export4'();  # BGPFilter \"first\"",
        "tabby_bgp_export_default4();  # no filter decided: the default export",
    ]
    # the own-block guard stays ahead of every filter, the default accept behind them
    imp = ext[ext.index("import filter {"):ext.index("};")]
    assert imp.index("if net = 10.65.1.0/26 then reject;") < imp.index("'tabby_bgpfilter_")
    assert imp.rstrip().endswith("accept;  # no filter decided: the default import")
    # the mesh session is not a BGPPeer's: it keeps the shared filters
    mesh = session(r.config, "Mesh_172_31_0_11")
    assert "import filter tabby_bgp_import4;" in mesh
    assert "export filter tabby_bgp_export4;" in mesh
    assert r.issues == []


def test_each_function_is_rendered_once_and_only_when_used() -> None:
    inputs = two_nodes("shared", shared=REJECT_ALL, unused=ACCEPT_ALL)
    put(inputs, "BGPPeer", "bgppeers", "ext2",
        {"peerIP": "192.0.2.2", "asNumber": 65000, "filters": ["shared"]})
    text = render(inputs, "n1").config
    assert text.count("function 'tabby_bgpfilter_shared_import4'()") == 1
    assert text.count("'tabby_bgpfilter_shared_import4'();") == 2
    assert "unused" not in text
    assert "tabby_bgpfilter_shared_import6" not in text  # no IPv6 rules, no IPv6 peers


def test_a_filter_without_rules_for_the_family_changes_nothing() -> None:
    only_v6 = {"exportV6": [{"action": "Reject"}]}
    inputs = two_nodes("v6-only", v6_only=only_v6)
    ext = session(render(inputs, "n1").config, "Global_192_0_2_1")
    assert "import filter tabby_bgp_import4;" in ext
    assert "export filter tabby_bgp_export4;" in ext


def test_ipv6_sessions_call_the_ipv6_rules() -> None:
    inputs = two_nodes("edge", edge={"importV6": [{"action": "Reject", "matchOperator": "In",
                                                   "cidr": "2001:db8::/32"}]})
    put(inputs, "BGPPeer", "bgppeers", "ext6",
        {"peerIP": "fd00:31::1", "asNumber": 65000, "filters": ["edge"]})
    text = render(inputs, "n1").config
    ext6 = session(text, "Global_fd00_31__1")
    assert "'tabby_bgpfilter_edge_import6'();" in ext6
    assert "export filter tabby_bgp_export6;" in ext6
    assert "if net ~ 2001:db8::/32 then reject;  # rule 1" in text
    assert "import filter tabby_bgp_import4;" in session(text, "Global_192_0_2_1")


def test_missing_and_invalid_filters_are_reported_and_left_out() -> None:
    inputs = two_nodes("gone", "broken", "edge", edge=REJECT_ALL)
    inputs.apply(f"{FILTERS}broken", doc({"exportV4": [{"action": "Drop"}]}, name="broken"))
    r = render(inputs, "n1")
    messages = [(i.severity, str(i)) for i in r.issues]
    assert ("warning", 'BGPPeer "ext": BGPFilter "gone" not found: sessions rendered without '
                       "it") in messages
    assert ("warning", 'BGPPeer "ext": BGPFilter "broken" is invalid: sessions rendered '
                       "without it") in messages
    assert any(s == "error" and str(i).startswith('BGPFilter "broken": ignored: spec.exportV4')
               for s, i in messages)
    [ext] = [p for p in r.peers if p.name == "Global_192_0_2_1"]
    assert ext.filters == ("edge",)
    assert "gone" not in session(r.config, ext.name)
    # Once the filter exists it is used: the controller re-renders on its key.
    assert BgpInputs.is_relevant(f"{FILTERS}gone", "n1")
    assert inputs.apply(f"{FILTERS}gone", doc(ACCEPT_ALL, name="gone"))
    r = render(inputs, "n1")
    assert [p.filters for p in r.peers if p.name == ext.name] == [("gone", "edge")]
    assert "'tabby_bgpfilter_gone_export4'();" in r.config
    # ... and deleting it goes back to rendering without it
    assert inputs.apply(f"{FILTERS}gone", None)
    assert "tabby_bgpfilter_gone" not in render(inputs, "n1").config


def test_reverse_sessions_carry_the_peers_filters() -> None:
    inputs = BgpInputs()
    put(inputs, "BGPConfiguration", "bgpconfigurations", "default",
        {"nodeToNodeMeshEnabled": False})
    put(inputs, "Node", "nodes", "a", {"bgp": {"ipv4Address": "10.0.0.1/24"}})
    put(inputs, "Node", "nodes", "b", {"bgp": {"ipv4Address": "10.0.0.2/24"}})
    put(inputs, "BGPFilter", "bgpfilters", "f", REJECT_ALL)
    put(inputs, "BGPPeer", "bgppeers", "ab",
        {"node": "a", "peerIP": "10.0.0.2", "asNumber": 64512, "filters": ["f"]})
    for node in ("a", "b"):
        [peer] = render(inputs, node).peers
        assert peer.filters == ("f",), node


@pytest.mark.skipif(shutil.which("bird") is None and not os.path.exists("/usr/sbin/bird"),
                    reason="BIRD 2 not installed (Debian package bird2)")
def test_every_rule_shape_parses_with_bird(tmp_path: Path) -> None:
    rules4 = [r for r in GOOD_RULES]
    rules6 = [{"action": "Accept", "matchOperator": op, "cidr": "fd00::/48",
               **({"prefixLength": {"min": 56, "max": 64}} if op.endswith("In") else {})}
              for op in ("Equal", "NotEqual", "In", "NotIn")]
    spec = {"exportV4": rules4, "importV4": rules4, "exportV6": rules6, "importV6": rules6}
    inputs = two_nodes("all", all=spec)
    put(inputs, "BGPPeer", "bgppeers", "ext6",
        {"peerIP": "fd00:31::1", "asNumber": 65000, "filters": ["all"]})
    text = render(inputs, "n1").config
    assert text.count("function 'tabby_bgpfilter_all_") == 4
    assert check_config(text, tmp_path / "check.conf") is None


# ------------------------------------------------------------------------------ the CLI


def test_cli_apply_get_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TABBY_DATASTORE", f"sqlite:///{tmp_path}/tabby.db")
    (tmp_path / "f.yaml").write_text(CALICO_SAMPLE)
    assert main(["apply", "-f", str(tmp_path / "f.yaml")]) == 0
    capsys.readouterr()
    assert main(["get", "bgpfilter", "my-filter", "-o", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["kind"] == "BGPFilter"
    assert got["spec"]["importV4"][0] == {"cidr": "55.0.0.0/16", "prefixLength": {"min": 30},
                                          "matchOperator": "In", "action": "Accept"}
    assert main(["get", "bgpfilters"]) == 0
    assert "my-filter" in capsys.readouterr().out
    assert main(["delete", "bgpfilter", "my-filter"]) == 0
    capsys.readouterr()
    assert main(["get", "bgpfilter", "my-filter"]) != 0
