"""IPPool: a range that IPAM carves into blocks, with encapsulation and NAT settings.

Defaults are materialised when the resource is validated, as Calico does on create:
blockSize 26 (IPv4) / 122 (IPv6), ipipMode and vxlanMode "Never", natOutgoing false,
nodeSelector "all()", allowedUses [Workload, Tunnel], assignmentMode "Automatic".
The cidr must be strictly masked and is stored in canonical form.
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .common import IPNetwork, Selector, TabbyModel, parse_cidr_or_ip
from .errors import FieldError, show
from .meta import Resource

EncapMode = Literal["Always", "CrossSubnet", "Never"]
AllowedUse = Literal["Workload", "Tunnel", "LoadBalancer"]

DEFAULT_BLOCK_SIZE_V4 = 26
DEFAULT_BLOCK_SIZE_V6 = 122
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
_LINK_LOCAL = {
    4: ipaddress.ip_network("169.254.0.0/16"),
    6: ipaddress.ip_network("fe80::/10"),
}


def _default_uses() -> list[AllowedUse]:
    return ["Workload", "Tunnel"]


class IPPoolSpec(TabbyModel):
    cidr: str
    vxlanMode: EncapMode = "Never"
    ipipMode: EncapMode = "Never"
    natOutgoing: bool = False
    disabled: bool = False
    disableBGPExport: bool = False
    blockSize: int = 0  # 0 = not given: becomes 26 or 122 by the pool's IP version
    nodeSelector: Selector = "all()"
    namespaceSelector: Selector | None = None
    allowedUses: list[AllowedUse] = Field(default_factory=_default_uses)
    assignmentMode: Literal["Automatic", "Manual"] = "Automatic"

    @model_validator(mode="before")
    @classmethod
    def _cidr_first(cls, data: Any) -> Any:
        # Check the CIDR before anything that depends on it, with the CIDR in the message.
        if isinstance(data, dict) and "cidr" in data:
            try:
                addr, net = parse_cidr_or_ip(data["cidr"])
            except ValueError as exc:
                raise FieldError("cidr", str(exc)) from None
            if addr != net.network_address:
                raise FieldError(
                    "cidr",
                    f"IP pool CIDR {show(data['cidr'])} is not strictly masked "
                    f"(did you mean {str(net)!r}?)",
                )
            data = {**data, "cidr": str(net)}
        return data

    @model_validator(mode="after")
    def _defaults_and_rules(self) -> IPPoolSpec:
        net = self.network
        v = net.version
        if net.overlaps(_LINK_LOCAL[v]):
            raise FieldError(
                "cidr", f"IP pool {show(self.cidr)} overlaps the link-local range {_LINK_LOCAL[v]}"
            )
        if self.blockSize == 0:
            self.blockSize = DEFAULT_BLOCK_SIZE_V4 if v == 4 else DEFAULT_BLOCK_SIZE_V6
        lo, hi = BLOCK_SIZE_RANGE[v]
        if not lo <= self.blockSize <= hi:
            raise FieldError(
                "blockSize",
                f"invalid blockSize {self.blockSize} for an IPv{v} pool (want {lo}-{hi})",
            )
        if not self.disabled and net.prefixlen > self.blockSize:
            raise FieldError(
                "cidr",
                f"IP pool {show(self.cidr)} is smaller than one block (blockSize {self.blockSize})",
            )
        if v == 6 and self.ipipMode != "Never":
            raise FieldError(
                "ipipMode", f"ipipMode {show(self.ipipMode)} is not supported on an IPv6 pool"
            )
        if self.ipipMode != "Never" and self.vxlanMode != "Never":
            raise FieldError(
                "vxlanMode",
                f"ipipMode {show(self.ipipMode)} and vxlanMode {show(self.vxlanMode)} "
                "cannot both be enabled",
            )
        if not self.allowedUses:
            self.allowedUses = _default_uses()
        self._check_uses()
        return self

    def _check_uses(self) -> None:
        uses = set(self.allowedUses)
        if "LoadBalancer" in uses:
            other = uses - {"LoadBalancer"}
            if other:
                raise FieldError(
                    "allowedUses",
                    f"LoadBalancer cannot be combined with {', '.join(sorted(other))}",
                )
            if self.ipipMode != "Never" or self.vxlanMode != "Never":
                raise FieldError("allowedUses", "a LoadBalancer pool cannot use IPIP or VXLAN")
            if self.disableBGPExport:
                raise FieldError(
                    "disableBGPExport", "a LoadBalancer pool cannot disable BGP export"
                )
            if self.nodeSelector.strip() != "all()":
                raise FieldError(
                    "nodeSelector",
                    f"a LoadBalancer pool must have nodeSelector all(), not {show(self.nodeSelector)}",
                )
        if "Tunnel" in uses and self.namespaceSelector:
            raise FieldError(
                "namespaceSelector",
                "a pool with allowedUses Tunnel cannot have a namespaceSelector",
            )

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr)

    @property
    def ip_version(self) -> int:
        return self.network.version


class IPPool(Resource):
    KIND: ClassVar[str] = "IPPool"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["IPPool"] = "IPPool"
    spec: IPPoolSpec
