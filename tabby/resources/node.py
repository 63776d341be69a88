"""Node: one host running Tabby, with its BGP and tunnel addresses."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from .common import (
    MAC,
    ASNumber,
    CIDRv4,
    CIDRv6,
    IPv4,
    IPv6,
    Name,
    TabbyModel,
    check_cidr,
)
from .errors import FieldError
from .meta import Resource


class NodeBGPSpec(TabbyModel):
    asNumber: ASNumber | None = None
    ipv4Address: CIDRv4 | None = None  # address with its subnet, e.g. 10.0.0.1/24
    ipv6Address: CIDRv6 | None = None
    ipv4IPIPTunnelAddr: IPv4 | None = None
    routeReflectorClusterID: IPv4 | None = None


class NodeAddress(TabbyModel):
    address: Annotated[str, BeforeValidator(check_cidr)]
    type: Literal["CalicoNodeIP", "InternalIP", "ExternalIP"] | None = None


class NodeInterface(TabbyModel):
    name: Name | None = None
    addresses: list[str] | None = None


class OrchRef(TabbyModel):
    nodeName: str | None = None
    orchestrator: str


class NodeWireguardSpec(TabbyModel):
    interfaceIPv4Address: IPv4 | None = None
    interfaceIPv6Address: IPv6 | None = None


class NodeSpec(TabbyModel):
    bgp: NodeBGPSpec | None = None
    ipv4VXLANTunnelAddr: IPv4 | None = None
    vxlanTunnelMACAddr: MAC | None = None
    ipv6VXLANTunnelAddr: IPv6 | None = None
    vxlanTunnelMACAddrV6: MAC | None = None
    orchRefs: list[OrchRef] | None = None
    wireguard: NodeWireguardSpec | None = None
    addresses: list[NodeAddress] | None = None
    interfaces: list[NodeInterface] | None = None

    @model_validator(mode="after")
    def _bgp_not_empty(self) -> NodeSpec:
        if self.bgp is not None and not self.bgp.model_dump(exclude_none=True):
            raise FieldError("bgp", "must not be empty (omit it instead)")
        return self


class Node(Resource):
    KIND: ClassVar[str] = "Node"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["Node"] = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: dict[str, Any] | None = None
