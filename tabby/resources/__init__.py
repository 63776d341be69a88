"""Typed, validated models of the projectcalico.org/v3 kinds and the Kubernetes inputs.

Attribute names are Calico's JSON field names (no aliases, except `from_`/`except_` in
the Kubernetes NetworkPolicy model, where the JSON names are Python keywords).
Unknown fields are errors; every error is a one-line `ResourceError`.

    from tabby.resources import parse_documents, to_dict, kind_info
    for res in parse_documents(text, "pools.yaml"):
        store.put(res.key, json.dumps(to_dict(res)))
"""

from .bgp import (
    BGP_DEFAULTS,
    BGPConfiguration,
    BGPConfigurationSpec,
    BGPPassword,
    BGPPeer,
    BGPPeerSpec,
    Community,
    PrefixAdvertisement,
    split_peer_ip,
)
from .codec import dump_json, dump_yaml, from_dict, parse_documents, to_dict
from .common import (
    PORT_PROTOCOLS,
    PROTOCOL_NUMBERS,
    EndpointPort,
    Port,
    Protocol,
    duration_seconds,
    parse_net,
)
from .endpoint import (
    IPNAT,
    HostEndpoint,
    HostEndpointSpec,
    WorkloadEndpoint,
    WorkloadEndpointPort,
    WorkloadEndpointSpec,
)
from .errors import FieldError, ResourceError
from .felix import (
    DEFAULT_FAILSAFE_INBOUND_HOST_PORTS,
    DEFAULT_FAILSAFE_OUTBOUND_HOST_PORTS,
    FELIX_DEFAULTS,
    FelixConfiguration,
    FelixConfigurationSpec,
    ProtoPort,
)
from .ippool import DEFAULT_BLOCK_SIZE_V4, DEFAULT_BLOCK_SIZE_V6, IPPool, IPPoolSpec
from .kubernetes import (
    NAMESPACE_NAME_LABEL,
    IPBlock,
    KubernetesNamespace,
    KubernetesNetworkPolicy,
    KubernetesNetworkPolicySpec,
    LabelSelector,
    LabelSelectorRequirement,
    NamespaceSpec,
    NetworkPolicyEgressRule,
    NetworkPolicyIngressRule,
    NetworkPolicyPeer,
    NetworkPolicyPort,
)
from .meta import CALICO_API_VERSION, DEFAULT_NAMESPACE, ObjectMeta, Resource
from .networkset import GlobalNetworkSet, GlobalNetworkSetSpec, NetworkSet, NetworkSetSpec
from .node import Node, NodeAddress, NodeBGPSpec, NodeSpec, OrchRef
from .policy import (
    DEFAULT_TIER,
    GlobalNetworkPolicy,
    GlobalNetworkPolicySpec,
    NetworkPolicy,
    NetworkPolicySpec,
    default_policy_types,
)
from .profile import Profile, ProfileSpec
from .registry import KINDS, KindInfo, kind_for, kind_info
from .rule import (
    EntityRule,
    HTTPMatch,
    HTTPPath,
    ICMPFields,
    Rule,
    RuleMetadata,
    ServiceAccountMatch,
    ServiceMatch,
)
from .tier import DEFAULT_TIER_ORDER, WELL_KNOWN_TIERS, Tier, TierSpec

__all__ = [
    "BGP_DEFAULTS",
    "CALICO_API_VERSION",
    "DEFAULT_BLOCK_SIZE_V4",
    "DEFAULT_BLOCK_SIZE_V6",
    "DEFAULT_FAILSAFE_INBOUND_HOST_PORTS",
    "DEFAULT_FAILSAFE_OUTBOUND_HOST_PORTS",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TIER",
    "DEFAULT_TIER_ORDER",
    "FELIX_DEFAULTS",
    "IPNAT",
    "KINDS",
    "NAMESPACE_NAME_LABEL",
    "PORT_PROTOCOLS",
    "PROTOCOL_NUMBERS",
    "WELL_KNOWN_TIERS",
    "BGPConfiguration",
    "BGPConfigurationSpec",
    "BGPPassword",
    "BGPPeer",
    "BGPPeerSpec",
    "Community",
    "EndpointPort",
    "EntityRule",
    "FelixConfiguration",
    "FelixConfigurationSpec",
    "FieldError",
    "GlobalNetworkPolicy",
    "GlobalNetworkPolicySpec",
    "GlobalNetworkSet",
    "GlobalNetworkSetSpec",
    "HTTPMatch",
    "HTTPPath",
    "HostEndpoint",
    "HostEndpointSpec",
    "ICMPFields",
    "IPBlock",
    "IPPool",
    "IPPoolSpec",
    "KindInfo",
    "KubernetesNamespace",
    "KubernetesNetworkPolicy",
    "KubernetesNetworkPolicySpec",
    "LabelSelector",
    "LabelSelectorRequirement",
    "NamespaceSpec",
    "NetworkPolicy",
    "NetworkPolicyEgressRule",
    "NetworkPolicyIngressRule",
    "NetworkPolicyPeer",
    "NetworkPolicyPort",
    "NetworkPolicySpec",
    "NetworkSet",
    "NetworkSetSpec",
    "Node",
    "NodeAddress",
    "NodeBGPSpec",
    "NodeSpec",
    "ObjectMeta",
    "OrchRef",
    "Port",
    "PrefixAdvertisement",
    "Profile",
    "ProfileSpec",
    "ProtoPort",
    "Protocol",
    "Resource",
    "ResourceError",
    "Rule",
    "RuleMetadata",
    "ServiceAccountMatch",
    "ServiceMatch",
    "Tier",
    "TierSpec",
    "WorkloadEndpoint",
    "WorkloadEndpointPort",
    "WorkloadEndpointSpec",
    "default_policy_types",
    "dump_json",
    "dump_yaml",
    "duration_seconds",
    "from_dict",
    "kind_for",
    "kind_info",
    "parse_documents",
    "parse_net",
    "split_peer_ip",
    "to_dict",
]
