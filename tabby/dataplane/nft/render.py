"""Build Tabby's whole nft table from the dataplane's desired state (pure, no I/O).

`build(state)` returns a `model.Ruleset`; `model.full_text` / `model.delta_text` turn it
into `nft -f` input. The layout (see docs/design/dataplane.md):

* base chains: raw prerouting/output (mark reset, workload reverse-path check, untracked
  host-endpoint policy), mangle-priority prerouting (preDNAT policy), filter
  input/forward/output (conntrack fast path, then dispatch), nat postrouting
  (natOutgoing);
* dispatch chains: one verdict-map lookup keyed by interface name (`iifname vmap @map`),
  so the per-packet cost does not grow with the number of endpoints; an unknown workload
  interface falls through the map to a drop;
* per-endpoint chains jump to one tier chain per tier, in order, then to profiles, then
  drop; a tier chain (shared by endpoints with the same policies) jumps to its policy
  chains in order; a policy chain's Allow/Pass set a mark bit and return; Allow returns
  all the way out, Pass skips the rest of the tier, and the end of a tier drops unless
  it passed (or the tier's default action is Pass). With `inline_max` / `index_min`
  (the driver's default), small allow-only policies are copied into the tier chain and
  long runs of port-keyed allow-only ones are looked up by port instead (tiers.py);
* policy/profile chains: one per (policy, direction) that some endpoint uses; runs of
  same-action rules that differ only in CIDRs/ports become set lookups (merge.py).

Anything that cannot be rendered fails closed: a rule that cannot be expressed, or a
policy the kernel rejected, makes its policy chain a single drop (reported in
`Rendered.problems`); a policy or profile an endpoint names but nobody sent also drops.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tabby.calc.messages import (
    ConfigUpdate,
    FailsafePort,
    HostEndpointUpdate,
    IPPoolUpdate,
    IPSetUpdate,
    PolicyId,
    PolicyUpdate,
    PortRange,
    ProfileUpdate,
    TierInfo,
    WorkloadEndpointUpdate,
)
from tabby.dataplane.encap import VXLAN_PORT
from tabby.dataplane.nft import names as n
from tabby.dataplane.nft.ipsets import SET_TYPES, set_elements
from tabby.dataplane.nft.merge import compile_rules
from tabby.dataplane.nft.model import NftChain, NftMap, NftSet, Ruleset
from tabby.dataplane.nft.portmap import Key, port_keys
from tabby.dataplane.nft.rules import RuleError, port_literal
from tabby.dataplane.nft.tiers import PolicyInfo, tier_rules

ACCEPT_RETURN = f"{n.mark_set(n.MARK_ACCEPT)} return"
PASS_RETURN = f"{n.mark_set(n.MARK_PASS)} return"
POLICY_VERDICTS = {"allow": ACCEPT_RETURN, "deny": "drop", "pass": PASS_RETURN}
# A policy direction whose rules are all Allow and compile to at most this many nft rules
# is inlined into its tier chains (tiers.py). Each tier chain using it holds a copy, so
# the table grows by at most INLINE_MAX / 2 times the jump + check pair it replaces; a
# change to the policy rewrites those tier chains instead of its own.
INLINE_MAX = 4
# A run of at least this many allow-only policies whose rules all name a protocol and
# destination ports is looked up by port in one verdict map (tiers.py, portmap.py).
# Fewer are cheaper inlined or jumped to than an extra map in the table.
INDEX_MIN = 8
ICMPV6_TO_HOST = "{ 130, 131, 132, 133, 135, 136 }"  # MLD, router/neighbour discovery
# Neighbour/router discovery is never policed on host endpoints: without it IPv6 stops
# working on the link altogether (a failsafe of the same kind as Calico's port lists).
ICMPV6_ND = (f"meta l4proto ipv6-icmp icmpv6 type {{ 133, 134, 135, 136 }} accept "
             f"{n.comment('IPv6 neighbour discovery')}")


@dataclass
class DataplaneState:
    """Everything the dataplane should enforce, keyed like the messages."""

    config: ConfigUpdate = field(default_factory=ConfigUpdate)
    ipsets: dict[str, IPSetUpdate] = field(default_factory=dict)
    policies: dict[PolicyId, PolicyUpdate] = field(default_factory=dict)
    profiles: dict[str, ProfileUpdate] = field(default_factory=dict)
    workloads: dict[str, WorkloadEndpointUpdate] = field(default_factory=dict)
    host_endpoints: dict[str, HostEndpointUpdate] = field(default_factory=dict)
    pools: dict[str, IPPoolUpdate] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # owner -> kernel's reason
    # Node underlay addresses, from `local-host`/`remote-host` routes (by dst) and from
    # VTEPs (by node): the peers whose tunnel packets skip host endpoint policy.
    host_routes: dict[str, str] = field(default_factory=dict)
    vtep_hosts: dict[str, str] = field(default_factory=dict)

    def tunnel_peers(self) -> frozenset[str]:
        """The known nodes' IPv4 underlay addresses (Tabby's tunnels are IPv4-only)."""
        addrs = {*self.host_routes.values(), *self.vtep_hosts.values()}
        return frozenset(a for a in addrs if ipaddress.ip_address(a).version == 4)

    def encaps_in_use(self) -> tuple[bool, bool]:
        """(VXLAN, IPIP): does any pool use it? Disabled pools count - their blocks may
        still have workloads behind tunnels."""
        pools = self.pools.values()
        return (any(p.vxlan_mode != "Never" for p in pools),
                any(p.ipip_mode != "Never" for p in pools))


@dataclass
class Rendered:
    ruleset: Ruleset
    problems: dict[str, str]  # owner ("policy:tier/name", "wep:id", ...) -> why it fails closed


def policy_owner(pid: PolicyId) -> str:
    return f"policy:{pid}"


def profile_owner(profile_id: str) -> str:
    return f"profile:{profile_id}"


@dataclass(frozen=True)
class _Cached:
    """A compiled policy/profile chain and what it depended on."""

    msg: object
    log_prefix: str
    rejected: str | None
    shapes: tuple[tuple[str, tuple[str, bool, bool] | None], ...]  # per set id looked up
    chain: NftChain
    sets: tuple[NftSet, ...]  # the chain's own named sets (merged rules)
    problem: str | None
    keys: tuple[Key, ...] | None  # portmap.port_keys of the rules (tier port index)


# (chain name, owner) -> compiled chain; the driver keeps one across builds so a change
# to one endpoint does not recompile every policy.
ChainCache = dict[tuple[str, str], _Cached]


# --- the builder ----------------------------------------------------------------------------


class _Builder:
    def __init__(self, state: DataplaneState, cache: ChainCache | None = None,
                 merge: bool = True, inline_max: int = 0, index_min: int = 0) -> None:
        self.s = state
        self.merge = merge
        self.inline_max = inline_max
        self.index_min = index_min
        self.cache = cache if cache is not None else {}
        self.refs: set[str] = set()  # set ids looked up while compiling one chain
        self.touched: set[tuple[str, str]] = set()
        self.cfg = state.config
        self.rs = Ruleset()
        self.problems: dict[str, str] = {}
        self.policy_chains: dict[str, NftChain] = {}  # the ones tier chains jump to
        self.policy_infos: dict[str, PolicyInfo] = {}  # every policy compiled, by chain name
        self.index_maps: dict[str, NftMap] = {}  # tier port indexes (tiers.py)
        self.index_chains: dict[str, NftChain] = {}  # their jump-to-several chains
        self.rule_sets: list[NftSet] = []  # named sets of merged policy/profile rules
        self.profile_chains: dict[str, NftChain] = {}
        self.tier_chains: dict[str, NftChain] = {}
        self.endpoint_chains: list[NftChain] = []
        self.maps: dict[str, list[tuple[str, str]]] = {}
        self.any_hep = False

    # -- sets --

    def resolve(self, set_id: str, want: str, version: int) -> str | None:
        self.refs.add(set_id)
        ipset = self.s.ipsets.get(set_id)
        if ipset is None:
            raise RuleError(f"references unknown IP set {set_id!r}")
        if (want == "port") != (ipset.kind == "ip-port"):
            raise RuleError(f"IP set {set_id!r} is of kind {ipset.kind!r}, not usable here")
        if not set_elements(ipset.kind, ipset.members)[0 if version == 4 else 1]:
            return None
        return n.ipset_name(set_id, ipset.kind, version)

    def add_sets(self) -> None:
        """One named set per IP set and family that has members. Load time grows about
        with the square of the number of named sets (measured, mostly kernel time), so
        empty families get none: rules treat them as matching nothing."""
        for set_id in sorted(self.s.ipsets):
            ipset = self.s.ipsets[set_id]
            elems = set_elements(ipset.kind, ipset.members)
            for version, members in ((4, elems[0]), (6, elems[1])):
                if not members:
                    continue
                typ, interval = SET_TYPES[(ipset.kind, version)]
                self.rs.add_set(NftSet(
                    n.ipset_name(set_id, ipset.kind, version), typ, interval, members,
                    owner=f"ipset:{set_id}", note=f"ipset {set_id}"[:120],
                ))

    # -- policies and profiles --

    def _rules_chain(self, name: str, owner: str, msg: PolicyUpdate | ProfileUpdate,
                     inbound: bool, label: str) -> _Cached:
        rejected = self.s.rejected.get(owner)
        key = (name, owner)
        self.touched.add(key)
        hit = self.cache.get(key)
        if hit is None or not self._still_valid(hit, msg, rejected):
            self.refs = set()
            chain, sets, problem = self._compile_chain(name, owner, msg, inbound, label, rejected)
            shapes = tuple(sorted((sid, self._shape(sid)) for sid in self.refs))
            keys = port_keys(msg.inbound_rules if inbound else msg.outbound_rules)
            hit = _Cached(msg, self.cfg.log_prefix, rejected, shapes, chain, sets, problem, keys)
            self.cache[key] = hit
        if hit.problem is not None:
            self.problems[owner] = hit.problem
        self.rule_sets += hit.sets
        return hit

    def _still_valid(self, hit: _Cached, msg: object, rejected: str | None) -> bool:
        if not (hit.msg is msg or hit.msg == msg):
            return False
        if hit.log_prefix != self.cfg.log_prefix or hit.rejected != rejected:
            return False
        return all(self._shape(sid) == shape for sid, shape in hit.shapes)

    def _shape(self, set_id: str) -> tuple[str, bool, bool] | None:
        """What a compiled rule depends on: the set's kind and which families are empty."""
        ipset = self.s.ipsets.get(set_id)
        if ipset is None:
            return None
        v4, v6 = set_elements(ipset.kind, ipset.members)
        return ipset.kind, bool(v4), bool(v6)

    def _compile_chain(self, name: str, owner: str, msg: PolicyUpdate | ProfileUpdate,
                       inbound: bool, label: str, rejected: str | None,
                       ) -> tuple[NftChain, tuple[NftSet, ...], str | None]:
        if rejected is not None:
            return NftChain(name, (f"drop {n.comment(f'{label}: rejected: {rejected}')}",),
                            owner=owner, note=label), (), rejected
        rules = msg.inbound_rules if inbound else msg.outbound_rules
        try:
            lines, sets = compile_rules(
                rules, chain=name, owner=owner, label=label, resolve=self.resolve,
                verdicts=POLICY_VERDICTS, log_prefix=self.cfg.log_prefix, merge=self.merge)
        except (RuleError, ValueError) as exc:
            return NftChain(name, (f"drop {n.comment(f'{label}: rejected: {exc}')}",),
                            owner=owner, note=label), (), str(exc)
        return NftChain(name, tuple(lines), owner=owner, note=label), tuple(sets), None

    def policy_info(self, pid: PolicyId, inbound: bool) -> PolicyInfo:
        """The policy's compiled chain and what tiers.py needs to know to inline or
        index it; the chain goes into the table only if a tier chain jumps to it."""
        name = n.policy_chain(str(pid), inbound)
        if name in self.policy_infos:
            return self.policy_infos[name]
        owner = policy_owner(pid)
        label = f"policy {pid} {'ingress' if inbound else 'egress'}"
        pol = self.s.policies.get(pid)
        if pol is None:
            self.problems[owner] = "endpoint refers to a policy that was never sent"
            chain = NftChain(name, (f"drop {n.comment(f'{label}: unknown policy')}",),
                             owner=owner, note=label)
            info = PolicyInfo(chain, False, None)
        else:
            hit = self._rules_chain(name, owner, pol, inbound, label)
            rules = pol.inbound_rules if inbound else pol.outbound_rules
            # A failed-closed policy keeps its chain (a single drop, its owner visible).
            allow_only = hit.problem is None and all(r.action == "allow" for r in rules)
            info = PolicyInfo(hit.chain, allow_only, hit.keys if allow_only else None)
        self.policy_infos[name] = info
        return info

    def profile_chain(self, profile_id: str, inbound: bool) -> str:
        name = n.profile_chain(profile_id, inbound)
        if name not in self.profile_chains:
            owner = profile_owner(profile_id)
            label = f"profile {profile_id} {'ingress' if inbound else 'egress'}"
            prof = self.s.profiles.get(profile_id)
            if prof is None:
                # A missing profile denies (fail closed), like a missing policy.
                self.problems[owner] = "endpoint refers to a profile that was never sent"
                chain = NftChain(name, (f"drop {n.comment(f'{label}: unknown profile')}",),
                                 owner=owner, note=label)
            else:
                chain = self._rules_chain(name, owner, prof, inbound, label).chain
            self.profile_chains[name] = chain
        return name

    # -- endpoints --

    def endpoint_rules(
        self,
        tiers: Iterable[TierInfo],
        inbound: bool,
        profiles: Sequence[str],
        *,
        tier_drop: bool,
        use_profiles: bool,
        final_drop: bool,
        label: str,
    ) -> tuple[str, ...]:
        rules = [n.mark_clear(n.MARK_ACCEPT | n.MARK_PASS)]
        for tier in tiers:
            pols = tier.ingress_policies if inbound else tier.egress_policies
            if not pols:
                continue  # the tier has no policy for this direction: it does not apply
            rules.append(f"jump {self.tier_chain(tier, pols, inbound, tier_drop)}")
            rules.append(f"{n.mark_is_set(n.MARK_ACCEPT)} return")
        if use_profiles:
            for prof in profiles:
                rules.append(f"jump {self.profile_chain(prof, inbound)}")
                rules.append(f"{n.mark_is_set(n.MARK_ACCEPT)} return")
        if final_drop:
            rules.append(f"drop {n.comment(f'{label}: no policy or profile allowed')}")
        return tuple(rules)

    def tier_chain(self, tier: TierInfo, pols: Sequence[str], inbound: bool,
                   tier_drop: bool) -> str:
        """One chain per distinct (tier, policy list, direction): endpoints that share
        their policies (a namespace, a deployment) share it, so the ruleset grows with
        the number of distinct policy lists, not with endpoints x policies."""
        key = repr((tier.name, tier.default_action, tuple(pols), inbound, tier_drop))
        name = f"tabby-t{'i' if inbound else 'e'}-{tier.name[:24]}-{n.short_hash(key)}"
        if name not in self.tier_chains:
            owner = f"tier:{tier.name}"
            infos = [self.policy_info(PolicyId(tier.name, pol), inbound) for pol in pols]
            out = tier_rules(name, owner, infos, inline_max=self.inline_max,
                             index_min=self.index_min)
            self.policy_chains.update((c.name, c) for c in out.used)
            self.index_chains.update((c.name, c) for c in out.chains)
            for m in out.maps:
                self.index_maps[m.name] = m
            if tier_drop and tier.default_action == "Deny":
                out.add(f"{n.mark_is_clear(n.MARK_PASS)} drop "
                        f"{n.comment(f'end of tier {tier.name}')}", owner)
            note = f"tier {tier.name} {'ingress' if inbound else 'egress'}: {', '.join(pols)}"
            # Copied rules keep their policy as owner, so a rule the kernel refuses
            # still fails its own policy closed (driver._blame), not the tier.
            mixed = len(set(out.owners)) > 1
            self.tier_chains[name] = NftChain(
                name, tuple(out.rules), owner=owner, note=note[:120],
                rule_owners=tuple(out.owners) if mixed else None)
        return name

    def add_endpoint_chain(self, kind: str, ifname: str, owner: str, rules: tuple[str, ...],
                           note: str) -> None:
        name = n.endpoint_chain(kind, ifname)
        self.endpoint_chains.append(NftChain(name, rules, owner=owner, note=note))
        if ifname != "*":
            self.maps.setdefault(kind, []).append((ifname, name))

    def add_workloads(self) -> None:
        by_if: dict[str, WorkloadEndpointUpdate] = {}
        for eid in sorted(self.s.workloads):
            wep = self.s.workloads[eid]
            if wep.interface_name in by_if:
                self.problems[f"wep:{eid}"] = (
                    f"interface {wep.interface_name} already used by "
                    f"{by_if[wep.interface_name].endpoint_id}"
                )
                continue
            by_if[wep.interface_name] = wep
        for ifname in sorted(by_if):
            wep = by_if[ifname]
            owner, label = f"wep:{wep.endpoint_id}", f"workload {wep.endpoint_id}"
            for kind, inbound in ((n.WL_TO, True), (n.WL_FROM, False)):
                rules = self.endpoint_rules(
                    wep.tiers, inbound, wep.profile_ids, tier_drop=True, use_profiles=True,
                    final_drop=True, label=f"{label} {'ingress' if inbound else 'egress'}")
                self.add_endpoint_chain(kind, ifname, owner, rules, label)

    def add_host_endpoints(self) -> None:
        by_if: dict[str, HostEndpointUpdate] = {}
        for eid in sorted(self.s.host_endpoints):
            hep = self.s.host_endpoints[eid]
            if not hep.interface_name:
                self.problems[f"hep:{eid}"] = "no interface_name: not enforced (resolve it first)"
                continue
            if hep.interface_name in by_if:
                self.problems[f"hep:{eid}"] = (
                    f"interface {hep.interface_name} already used by "
                    f"{by_if[hep.interface_name].endpoint_id}"
                )
                continue
            by_if[hep.interface_name] = hep
        self.any_hep = bool(by_if)
        for ifname in sorted(by_if):
            hep = by_if[ifname]
            owner, label = f"hep:{hep.endpoint_id}", f"host endpoint {hep.endpoint_id}"
            profs = hep.profile_ids
            # (chain kind, tiers, inbound, end-of-tier drop, profiles + final drop)
            specs = (
                (n.HEP_FROM, hep.tiers, True, True, True),
                (n.HEP_TO, hep.tiers, False, True, True),
                (n.HEP_FWD_FROM, hep.forward_tiers, True, True, False),
                (n.HEP_FWD_TO, hep.forward_tiers, False, True, False),
                (n.HEP_RAW_FROM, hep.untracked_tiers, True, False, False),
                (n.HEP_RAW_TO, hep.untracked_tiers, False, False, False),
                (n.HEP_PREDNAT, hep.pre_dnat_tiers, True, False, False),
            )
            for kind, tiers, inbound, tier_drop, normal in specs:
                rules = self.endpoint_rules(
                    tiers, inbound, profs, tier_drop=tier_drop, use_profiles=normal,
                    final_drop=normal, label=f"{label} {kind}")
                self.add_endpoint_chain(kind, ifname, owner, rules, label)

    # -- dispatch and base chains --

    def wl_match(self, key: str) -> list[str]:
        return n.wl_iface_matches(self.cfg.workload_iface_prefixes, key)

    def dispatch(self) -> list[NftChain]:
        chains = []
        for kind, key in ((n.WL_FROM, "iifname"), (n.WL_TO, "oifname")):
            chains.append(NftChain(n.dispatch_chain(kind), (
                f"{key} vmap @{n.dispatch_map(kind)}",
                f"drop {n.comment('unknown workload interface')}",
            )))
        if not self.any_hep:
            return chains
        star = {c.name for c in self.endpoint_chains}
        for kind, key in ((n.HEP_FROM, "iifname"), (n.HEP_TO, "oifname"),
                          (n.HEP_FWD_FROM, "iifname"), (n.HEP_FWD_TO, "oifname"),
                          (n.HEP_RAW_FROM, "iifname"), (n.HEP_RAW_TO, "oifname"),
                          (n.HEP_PREDNAT, "iifname")):
            rules = [f"{key} vmap @{n.dispatch_map(kind)}"]
            any_chain = n.endpoint_chain(kind, "*")
            if any_chain in star:
                rules += [f'{key} "lo" return', *(f"{m} return" for m in self.wl_match(key))]
                rules.append(f"goto {any_chain}")
            chains.append(NftChain(n.dispatch_chain(kind), tuple(rules)))
        return chains

    def failsafes(self, entries: Iterable[FailsafePort], port: str, addr: str, what: str) -> list[str]:
        groups: dict[tuple[str, str | None], list[int]] = {}
        for e in entries:
            groups.setdefault((e.protocol, e.net), []).append(e.port)
        out = []
        for (proto, net), ports in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            match = ""
            if net is not None:
                fam = "ip" if ipaddress.ip_network(net).version == 4 else "ip6"
                match = f"{fam} {addr} {net} "
            lit = port_literal(PortRange(p, p) for p in ports)
            out.append(f"{match}{proto} {port} {lit} accept {n.comment(f'failsafe {what}')}")
        return out

    def base_chains(self) -> list[NftChain]:
        c = self.cfg
        wl_in, wl_out = self.wl_match("iifname"), self.wl_match("oifname")
        established = ["ct state established,related accept", "ct state invalid drop"]
        untracked_ok = f"{n.mark_is_set(n.MARK_UNTRACKED)} accept"

        def fs_in(port: str, addr: str) -> list[str]:
            return self.failsafes(c.failsafe_inbound, port, addr, "in")

        def fs_out(port: str, addr: str) -> list[str]:
            return self.failsafes(c.failsafe_outbound, port, addr, "out")

        raw_pre = [n.mark_clear(n.MARK_ALL)]
        if c.workload_source_spoofing == "Disabled":
            for m in wl_in:
                raw_pre.append(f"{m} meta nfproto ipv4 ip saddr != 0.0.0.0 fib saddr . iif oif "
                               f"missing drop {n.comment('workload source not routed via its interface')}")
                raw_pre.append(f"{m} meta nfproto ipv6 ip6 saddr != {{ ::, fe80::/10 }} fib saddr "
                               f". iif oif missing drop {n.comment('workload source not routed via its interface')}")
        raw_pre += [f"{m} accept" for m in wl_in]
        raw_out = [n.mark_clear(n.MARK_ALL)]
        mangle_pre: list[str] = []
        untracked_allow = (f"{n.mark_is_set(n.MARK_ACCEPT)} {n.mark_set(n.MARK_UNTRACKED)} notrack "
                           f"{n.comment('untracked policy allowed')}")
        if self.any_hep:
            raw_pre += [ICMPV6_ND, *fs_in("dport", "saddr"), *fs_out("sport", "saddr"),
                        f"jump {n.dispatch_chain(n.HEP_RAW_FROM)}", untracked_allow]
            raw_out += ['oifname "lo" accept', *(f"{m} accept" for m in wl_out), ICMPV6_ND,
                        *fs_out("dport", "daddr"), *fs_in("sport", "daddr"),
                        f"jump {n.dispatch_chain(n.HEP_RAW_TO)}", untracked_allow]
            mangle_pre += [*(f"{m} accept" for m in wl_in), *established[:1], untracked_ok,
                           ICMPV6_ND, *fs_in("dport", "saddr"), f"jump {n.dispatch_chain(n.HEP_PREDNAT)}",
                           f"{n.mark_is_set(n.MARK_ACCEPT)} {n.mark_set(n.MARK_PREDNAT)} "
                           f"{n.comment('preDNAT policy allowed')}"]

        # The UNTRACKED/PREDNAT bits are only trusted when our raw/mangle chains, which
        # clear them first, exist: with no host endpoint there is nothing to skip.
        hep_ok = [untracked_ok] if self.any_hep else []
        prednat_ok = f"{n.mark_is_set(n.MARK_PREDNAT)} accept"
        inp = [*established, *hep_ok, 'iifname "lo" accept',
               *(f"{m} jump tabby-wl-to-host" for m in wl_in)]
        tun_in, tun_out = self.tunnel_rules()
        if self.any_hep:
            inp += [prednat_ok, ICMPV6_ND, *fs_in("dport", "saddr"), *tun_in,
                    f"jump {n.dispatch_chain(n.HEP_FROM)}"]
        # Forwarded: an untracked or preDNAT Allow skips only the incoming host endpoint's
        # forward policy (as in Felix); workload and outgoing host endpoint policy still apply.
        fwd = [*established]
        if self.any_hep:
            fwd.append(f"{n.mark_is_clear(n.MARK_UNTRACKED | n.MARK_PREDNAT)} "
                       f"jump {n.dispatch_chain(n.HEP_FWD_FROM)}")
        fwd += [f"{m} jump {n.dispatch_chain(n.WL_FROM)}" for m in wl_in]
        fwd += [f"{m} jump {n.dispatch_chain(n.WL_TO)}" for m in wl_out]
        if self.any_hep:
            fwd.append(f"jump {n.dispatch_chain(n.HEP_FWD_TO)}")
        out = [*established, *hep_ok, 'oifname "lo" accept',
               *(f"{m} accept {n.comment('host to local workload is always allowed')}" for m in wl_out)]
        if self.any_hep:
            out += [ICMPV6_ND, *fs_out("dport", "daddr"), *tun_out,
                    f"jump {n.dispatch_chain(n.HEP_TO)}"]

        to_host_action = {"Drop": "drop", "Return": "accept", "Accept": "accept"}[
            c.default_endpoint_to_host_action]
        wl_to_host = NftChain("tabby-wl-to-host", (
            f"meta l4proto ipv6-icmp icmpv6 type {ICMPV6_TO_HOST} accept",
            f"jump {n.dispatch_chain(n.WL_FROM)}",
            f"{to_host_action} {n.comment('DefaultEndpointToHostAction ' + c.default_endpoint_to_host_action)}",
        ))

        def base(name: str, hook: str, prio: str, rules: list[str], typ: str = "filter") -> NftChain:
            return NftChain(name, tuple(rules),
                            hook=f"type {typ} hook {hook} priority {prio}; policy accept;")

        chains = [wl_to_host, base("raw-prerouting", "prerouting", "raw", raw_pre)]
        if self.any_hep:
            chains += [base("raw-output", "output", "raw", raw_out),
                       base("mangle-prerouting", "prerouting", "mangle", mangle_pre)]
        return [
            *chains,
            base("filter-input", "input", "filter", inp),
            base("filter-forward", "forward", "filter", fwd),
            base("filter-output", "output", "filter", out),
            base("nat-postrouting", "postrouting", "srcnat", self.nat_rules(), typ="nat"),
        ]

    def tunnel_rules(self) -> tuple[list[str], list[str]]:
        """(input, output) rules that let the cluster's own VXLAN / IPIP packets between
        known nodes past host endpoint policy, as Felix does: a host endpoint on the
        underlay must not cut pod-to-pod traffic. Only rendered with a host endpoint
        (without one nothing in input/output would stop them, and node churn then
        costs no kernel write) and an encapsulation some pool uses; the peer set is
        declared even when empty, so the first node to appear is a set change only."""
        vxlan, ipip = self.s.encaps_in_use()
        if not self.any_hep or not (vxlan or ipip):
            return [], []
        self.rs.add_set(NftSet(n.HOSTS_SET, "ipv4_addr", False, self.s.tunnel_peers(),
                               note="tunnel peers: node underlay addresses"))
        inp: list[str] = []
        out: list[str] = []
        for on, match, what in ((vxlan, f"udp dport {VXLAN_PORT}", "VXLAN"),
                                (ipip, f"meta l4proto {n.IPIP_PROTO}", "IPIP")):
            if on:
                inp.append(f"ip saddr @{n.HOSTS_SET} {match} accept "
                           f"{n.comment(f'{what} from a known node')}")
                out.append(f"ip daddr @{n.HOSTS_SET} {match} accept "
                           f"{n.comment(f'{what} to a known node')}")
        return inp, out

    def nat_rules(self) -> list[str]:
        rules = []
        for version, addr in ((4, "ip"), (6, "ip6")):
            pools = [p for p in self.s.pools.values()
                     if ipaddress.ip_network(p.cidr).version == version]
            masq = [p.cidr for p in pools if p.masquerade and not p.disabled]
            if not masq:
                continue
            all_name, masq_name = f"tabby-pools{version}-all", f"tabby-pools{version}-masq"
            typ = "ipv4_addr" if version == 4 else "ipv6_addr"
            idx = 0 if version == 4 else 1
            all_elems = set_elements("net", frozenset(p.cidr for p in pools))[idx]
            masq_elems = set_elements("net", frozenset(masq))[idx]
            self.rs.add_set(NftSet(all_name, typ, True, all_elems, note="all IP pools"))
            self.rs.add_set(NftSet(masq_name, typ, True, masq_elems, note="natOutgoing IP pools"))
            nat_addr = self.cfg.nat_outgoing_address
            if nat_addr and ipaddress.ip_address(nat_addr).version == version:
                verdict = f"snat {addr} to {nat_addr}"
            else:
                verdict = "masquerade"
            rules.append(f"{addr} saddr @{masq_name} {addr} daddr != @{all_name} {verdict} "
                         f"{n.comment('natOutgoing')}")
        return rules


def build(state: DataplaneState, cache: ChainCache | None = None, *,
          merge: bool = True, inline_max: int = 0, index_min: int = 0) -> Rendered:
    """The whole desired table. Order: sets, maps, policy/profile chains, endpoint chains,
    dispatch chains, base chains (the written order a reader expects; a full replace is one
    transaction, so the order only matters for readability and for deltas).

    `merge=False` renders one nft rule per policy rule (no merging: merge.py); a cache
    must only be shared by builds with the same `merge`. `inline_max` > 0 inlines
    allow-only policies of at most that many compiled rules into their tier chains;
    `index_min` > 0 looks runs of at least that many port-keyed allow-only policies up by
    port (tiers.py). The driver passes INLINE_MAX and INDEX_MIN; 0, the default here,
    jumps to every policy's own chain."""
    b = _Builder(state, cache, merge, inline_max, index_min)
    b.add_workloads()
    b.add_host_endpoints()
    for key in [k for k in b.cache if k not in b.touched]:
        del b.cache[key]  # policies no endpoint uses any more
    chains_tail = [*b.dispatch(), *b.base_chains()]
    b.add_sets()
    for s in b.rule_sets:
        b.rs.add_set(s)
    for kind in (n.WL_FROM, n.WL_TO, n.HEP_FROM, n.HEP_TO, n.HEP_FWD_FROM, n.HEP_FWD_TO,
                 n.HEP_RAW_FROM, n.HEP_RAW_TO, n.HEP_PREDNAT):
        if kind in (n.WL_FROM, n.WL_TO) or b.any_hep:
            b.rs.maps[n.dispatch_map(kind)] = NftMap(
                n.dispatch_map(kind), tuple(sorted(b.maps.get(kind, []))))
    b.rs.maps.update(b.index_maps)
    for chain in (*b.policy_chains.values(), *b.profile_chains.values(),
                  *b.index_chains.values(), *b.tier_chains.values(), *b.endpoint_chains,
                  *chains_tail):
        b.rs.add_chain(chain)
    return Rendered(b.rs, b.problems)
