"""Typed messages from the calculation graph to the dataplane drivers.

Modelled on Felix's calc -> dataplane protocol, in Python: every message is a frozen,
slotted dataclass, hashable (collections are tuples / frozensets), and validated on
construction with a one-line error naming the field and the value. Drivers keep the
latest message per key (set id, policy id, endpoint id, ...), so a burst of updates for
one key coalesces to a single pending change.

The calc graph has already done all the label work: selectors became IP set ids, named
ports became "ip-port" IP sets, and each endpoint carries its ordered tiers and profiles.
Nothing here knows about selectors or the datastore.

Keys:
    IPSetUpdate / IPSetDeltaUpdate / IPSetRemove   set_id
    PolicyUpdate / PolicyRemove                    policy_id = PolicyId(tier, name)
    ProfileUpdate / ProfileRemove                  profile_id
    WorkloadEndpointUpdate / ...Remove             endpoint_id
    HostEndpointUpdate / ...Remove                 endpoint_id
    IPPoolUpdate / IPPoolRemove                    cidr
    ConfigUpdate                                   (one; each replaces the previous)
    RouteUpdate / RouteRemove                      dst
    VTEPUpdate / VTEPRemove                        node
    InSync                                         (the first complete snapshot was sent)

The messages live in three modules, re-exported here so that `from tabby.calc.messages
import X` is the one way to name them: `messages_fields` (value types, field checks),
`messages_rules` (rules, IP sets, policies, profiles) and `messages_endpoints` (endpoints,
pools, configuration, routes, VTEPs).
"""

from __future__ import annotations

from tabby.calc.messages_endpoints import (
    DEFAULT_FAILSAFE_INBOUND,
    DEFAULT_FAILSAFE_OUTBOUND,
    ConfigUpdate,
    FailsafePort,
    HostEndpointRemove,
    HostEndpointUpdate,
    InSync,
    IPPoolRemove,
    IPPoolUpdate,
    RouteRemove,
    RouteUpdate,
    TierInfo,
    VTEPRemove,
    VTEPUpdate,
    WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from tabby.calc.messages_fields import (
    ACTIONS,
    ENCAPS,
    ENDPOINT_TO_HOST_ACTIONS,
    IPSET_KINDS,
    PORT_PROTOCOLS,
    PROTOCOL_NUMBERS,
    ROUTE_KINDS,
    TIER_DEFAULT_ACTIONS,
    PolicyId,
    PortRange,
    protocol_number,
)
from tabby.calc.messages_rules import (
    IPSetDeltaUpdate,
    IPSetRemove,
    IPSetUpdate,
    PolicyRemove,
    PolicyUpdate,
    ProfileRemove,
    ProfileUpdate,
    Rule,
)

DataplaneMessage = (
    IPSetUpdate | IPSetDeltaUpdate | IPSetRemove | PolicyUpdate | PolicyRemove | ProfileUpdate
    | ProfileRemove | WorkloadEndpointUpdate | WorkloadEndpointRemove | HostEndpointUpdate
    | HostEndpointRemove | IPPoolUpdate | IPPoolRemove | ConfigUpdate | InSync | RouteUpdate
    | RouteRemove | VTEPUpdate | VTEPRemove
)

__all__ = [
    "ACTIONS", "ENCAPS", "ENDPOINT_TO_HOST_ACTIONS", "IPSET_KINDS", "PORT_PROTOCOLS",
    "PROTOCOL_NUMBERS", "ROUTE_KINDS", "TIER_DEFAULT_ACTIONS", "DEFAULT_FAILSAFE_INBOUND",
    "DEFAULT_FAILSAFE_OUTBOUND", "ConfigUpdate", "DataplaneMessage", "FailsafePort",
    "HostEndpointRemove", "HostEndpointUpdate", "IPPoolRemove", "IPPoolUpdate",
    "IPSetDeltaUpdate", "IPSetRemove", "IPSetUpdate", "InSync", "PolicyId", "PolicyRemove",
    "PolicyUpdate", "PortRange", "ProfileRemove", "ProfileUpdate", "RouteRemove",
    "RouteUpdate", "Rule", "TierInfo", "VTEPRemove", "VTEPUpdate", "WorkloadEndpointRemove",
    "WorkloadEndpointUpdate", "protocol_number",
]
