"""Dataplane configuration (FelixConfiguration's share) and IP pools.

FelixConfiguration `default` applies to every node; `node.<name>` overrides it field by
field for one node, as Felix merges them. Unset fields keep the dataplane's defaults
(`messages.ConfigUpdate`). One ConfigUpdate is always sent before InSync, even with no
FelixConfiguration at all; later ones only when a value changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tabby.calc import messages as m
from tabby.calc import sequencer as sq
from tabby.policy.host import merged_spec

log = logging.getLogger(__name__)

CONFIG_KEY = "config"


def _failsafes(entries: Any) -> tuple[m.FailsafePort, ...]:
    return tuple(m.FailsafePort((e.get("protocol") or "TCP").lower(), int(e["port"]),
                                e.get("net")) for e in entries)


def config_update(spec: Mapping[str, Any]) -> m.ConfigUpdate:
    """The merged FelixConfiguration spec as a ConfigUpdate; ValueError names a bad field."""
    kw: dict[str, Any] = {}
    for field, name in (("failsafeInboundHostPorts", "failsafe_inbound"),
                        ("failsafeOutboundHostPorts", "failsafe_outbound")):
        if spec.get(field) is not None:
            kw[name] = _failsafes(spec[field])
    if spec.get("defaultEndpointToHostAction"):
        kw["default_endpoint_to_host_action"] = spec["defaultEndpointToHostAction"]
    if spec.get("logPrefix"):
        kw["log_prefix"] = spec["logPrefix"]
    if spec.get("interfacePrefix"):
        kw["workload_iface_prefixes"] = tuple(
            p.strip() for p in spec["interfacePrefix"].split(",") if p.strip())
    if spec.get("natOutgoingAddress"):
        kw["nat_outgoing_address"] = spec["natOutgoingAddress"]
    return m.ConfigUpdate(**kw)


def pool_update(doc: Mapping[str, Any]) -> m.IPPoolUpdate:
    spec = doc.get("spec") or {}
    return m.IPPoolUpdate(spec["cidr"], masquerade=bool(spec.get("natOutgoing")),
                          ipip_mode=spec.get("ipipMode") or "Never",
                          vxlan_mode=spec.get("vxlanMode") or "Never",
                          disabled=bool(spec.get("disabled")))


class ConfigCalculator:
    def __init__(self, node_name: str, seq: sq.EventSequencer) -> None:
        self._node = node_name
        self._names = ("default", f"node.{node_name}")
        self._seq = seq
        self._specs: dict[str, Mapping[str, Any]] = {}
        self._pools: dict[str, m.IPPoolUpdate] = {}  # by pool name
        self._dirty = True

    def set_felix_config(self, name: str, doc: Mapping[str, Any] | None) -> None:
        if name not in self._names:
            return
        if doc is None:
            self._specs.pop(name, None)
        else:
            self._specs[name] = dict(doc.get("spec") or {})
        self._dirty = True

    def set_pool(self, name: str, doc: Mapping[str, Any] | None) -> None:
        msg = None if doc is None else pool_update(doc)
        old = self._pools.pop(name, None)
        if msg is not None:
            self._pools[name] = msg
        # Keyed by CIDR: a pool re-created under another name must not be removed by
        # the old name's deletion.
        for cidr in {p.cidr for p in (old, msg) if p is not None}:
            users = sorted((n, p) for n, p in self._pools.items() if p.cidr == cidr)
            if users:
                self._seq.put(sq.POOL, cidr, users[0][1])
            else:
                self._seq.remove(sq.POOL, cidr)

    def flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        try:
            msg = config_update(merged_spec(self._specs, self._node))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("FelixConfiguration unusable, keeping the defaults: %s", exc)
            msg = m.ConfigUpdate()
        self._seq.put(sq.CONFIG, CONFIG_KEY, msg)
