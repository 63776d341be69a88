"""What a node's FelixConfiguration adds to policy for its host endpoints and workloads.

Felix keeps a few things outside policy, and the evaluator models them as the dataplane
enforces them:

* failsafe ports (`failsafeInboundHostPorts` / `failsafeOutboundHostPorts`): traffic to a
  host endpoint on an inbound entry's protocol and port (from the entry's `net`, if it has
  one), or from a host endpoint to an outbound entry's port (to its `net`), is accepted
  whatever the policy says. Unset means Calico's defaults (`tabby.resources`); an empty
  list turns them off. In the untracked (raw) stage a packet whose *source* port is on the
  other list is also let through (it may be a reply of a failsafe connection), so
  untracked policy is skipped for it; normal policy still applies;
* `defaultEndpointToHostAction`: what happens to traffic from a workload to its own host
  once the workload's egress policy allowed it (Drop, the default; Accept; Return, which
  hands it to the host's other firewall rules).

FelixConfiguration `default` applies to every node and `node.<name>` overrides it field
by field for one node, as the agent merges them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tabby.policy.errors import PolicyError
from tabby.policy.rules import IPAddress, IPNetwork, parse_net, protocol_name

ENDPOINT_TO_HOST_ACTIONS = ("Drop", "Accept", "Return")
FAILSAFE_PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
INBOUND = "inbound"
OUTBOUND = "outbound"


@dataclass(frozen=True)
class FailsafePort:
    """One failsafe entry: protocol number, port, optional remote net."""

    protocol: int
    port: int
    net: IPNetwork | None = None

    @property
    def label(self) -> str:
        """`tcp:22`, or `tcp:10.0.0.0/8:22` with a net (Felix's own notation)."""
        proto = protocol_name(self.protocol).lower()
        return f"{proto}:{self.net}:{self.port}" if self.net else f"{proto}:{self.port}"

    def matches(self, protocol: int, port: int | None, remote: IPAddress | None) -> bool:
        if protocol != self.protocol or port != self.port:
            return False
        if self.net is None:
            return True
        return remote is not None and remote.version == self.net.version and remote in self.net


def parse_failsafes(entries: Any, where: str) -> tuple[FailsafePort, ...]:
    """FelixConfiguration failsafe entries ({protocol, port, net}) -> FailsafePorts."""
    if not isinstance(entries, list):
        raise PolicyError(f"{where}: invalid value {entries!r} (a list of protocol/port/net)")
    out = []
    for i, e in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(e, Mapping):
            raise PolicyError(f"{at}: invalid value {e!r} (protocol, port, net)")
        proto_text = str(e.get("protocol") or "TCP")
        proto = FAILSAFE_PROTOCOLS.get(proto_text.upper())
        if proto is None:
            raise PolicyError(f"{at}.protocol: invalid value {proto_text!r} (TCP, UDP, SCTP)")
        port = e.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise PolicyError(f"{at}.port: invalid value {port!r} (1-65535)")
        net = parse_net(e["net"], f"{at}.net") if e.get("net") else None
        out.append(FailsafePort(proto, port, net))
    return tuple(out)


def _defaults(field: str) -> tuple[FailsafePort, ...]:
    # Calico's defaults live with the FelixConfiguration model: one list for all users.
    from tabby.resources.felix import FELIX_DEFAULTS

    return parse_failsafes([p.model_dump(exclude_none=True) for p in FELIX_DEFAULTS[field]],
                           f"default {field}")


@dataclass(frozen=True)
class HostConfig:
    """One node's settings that decide host endpoint and workload-to-host traffic."""

    failsafe_inbound: tuple[FailsafePort, ...]
    failsafe_outbound: tuple[FailsafePort, ...]
    default_endpoint_to_host_action: str = "Drop"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str = "FelixConfiguration spec",
                  ) -> HostConfig:
        """A merged FelixConfiguration spec; unset fields take Calico's defaults."""
        kw: dict[str, Any] = {}
        for field, name in (("failsafeInboundHostPorts", "failsafe_inbound"),
                            ("failsafeOutboundHostPorts", "failsafe_outbound")):
            value = spec.get(field)
            kw[name] = (_defaults(field) if value is None
                        else parse_failsafes(value, f"{where}.{field}"))
        action = spec.get("defaultEndpointToHostAction") or "Drop"
        normal = str(action).capitalize()
        if normal not in ENDPOINT_TO_HOST_ACTIONS:
            raise PolicyError(f"{where}.defaultEndpointToHostAction: invalid value {action!r} "
                              f"(Drop, Accept, Return)")
        return cls(default_endpoint_to_host_action=normal, **kw)

    def failsafe(self, which: str, protocol: int, port: int | None,
                 remote: IPAddress | None) -> FailsafePort | None:
        """The first `which` (inbound/outbound) entry for this protocol, port and remote."""
        entries = self.failsafe_inbound if which == INBOUND else self.failsafe_outbound
        for e in entries:
            if e.matches(protocol, port, remote):
                return e
        return None


def merged_spec(specs: Mapping[str, Mapping[str, Any]], node: str) -> dict[str, Any]:
    """`default` then `node.<node>`, field by field (a node's own value wins)."""
    merged: dict[str, Any] = {}
    for name in ("default", f"node.{node}"):
        merged.update({k: v for k, v in (specs.get(name) or {}).items() if v is not None})
    return merged

