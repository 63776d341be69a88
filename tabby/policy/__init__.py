"""Policy: which tiers/policies apply to an endpoint, and the reference evaluator.

    from tabby.policy import PolicySet, evaluate, make_flow
    ps = PolicySet.from_resources(resources)          # v3 + Kubernetes inputs
    verdict = evaluate(ps, make_flow(ps, "x/b", "x/a", protocol="TCP", port=80))
    verdict.allowed, verdict.to_json()

Modules: ``selectors`` (namespace / pcns. / pcsa. selector combination, the one place it
happens), ``rules`` (compiled rules), ``model`` (endpoints, network sets, tiers, policies,
profiles), ``k8s`` (Kubernetes NetworkPolicy and Namespace conversion), ``resolve`` (ordering
and per-endpoint chains, incremental `PolicyOrder`), ``match`` (rule matching), ``walk``
(one chain walked: steps and decider), ``host`` (FelixConfiguration's failsafe ports and
DefaultEndpointToHostAction per node), ``hostpath`` (the host endpoint stages of a flow),
``evaluate`` (the verdict and its decision path) and ``matrix`` (all pairs at once).
"""

from tabby.policy.errors import PolicyError
from tabby.policy.evaluate import Verdict, evaluate, make_flow
from tabby.policy.host import FailsafePort, HostConfig
from tabby.policy.match import Flow, Matcher, Peer
from tabby.policy.matrix import reachability
from tabby.policy.model import (
    EGRESS,
    INGRESS,
    Endpoint,
    NetworkSet,
    Policy,
    PolicySet,
    Profile,
    Tier,
    compile_policy,
    compile_profile,
)
from tabby.policy.resolve import (
    EndpointPolicies,
    HostEndpointPolicies,
    PolicyOrder,
    TierPolicies,
    applicable,
    order_policies,
    resolve_endpoint,
    resolve_host_endpoint,
)

__all__ = [
    "EGRESS",
    "INGRESS",
    "Endpoint",
    "EndpointPolicies",
    "FailsafePort",
    "Flow",
    "HostConfig",
    "HostEndpointPolicies",
    "Matcher",
    "NetworkSet",
    "Peer",
    "Policy",
    "PolicyError",
    "PolicyOrder",
    "PolicySet",
    "Profile",
    "Tier",
    "TierPolicies",
    "Verdict",
    "applicable",
    "compile_policy",
    "compile_profile",
    "evaluate",
    "make_flow",
    "order_policies",
    "reachability",
    "resolve_endpoint",
    "resolve_host_endpoint",
]
