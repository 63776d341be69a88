"""WorkloadEndpoint (a container/VM interface) and HostEndpoint (a host interface)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, model_validator

from .common import (
    CIDR,
    IP,
    MAC,
    EndpointPort,
    IPv4,
    IPv6,
    Name,
    PortName,
    Protocol,
    TabbyModel,
    check_container_id,
    check_interface_name,
    parse_cidr_or_ip,
)
from .errors import FieldError, show
from .meta import Resource


def _host_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"invalid host port {show(value)} (want 0-65535)")
    return value


def _workload_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"invalid port {show(value)} (want 1-65535)")
    return value


def _wep_interface(value: Any) -> str:
    return check_interface_name(value)


def _hep_interface(value: Any) -> str:
    return check_interface_name(value, allow_star=True)


def _single_address(value: Any) -> str:
    _, net = parse_cidr_or_ip(value)
    if net.prefixlen != net.max_prefixlen:
        raise ValueError(
            f"ipNetworks entry {show(value)} holds several addresses (want a /32 or /128)"
        )
    return str(value)


class WorkloadEndpointPort(TabbyModel):
    """A container port: named (for policy) and/or mapped to a host port."""

    name: PortName | None = None
    protocol: Protocol
    port: Annotated[int, BeforeValidator(_workload_port)]
    hostPort: Annotated[int, BeforeValidator(_host_port)] | None = None
    hostIP: IP | None = None

    @model_validator(mode="after")
    def _rules(self) -> WorkloadEndpointPort:
        if not self.protocol.supports_ports:
            raise FieldError(
                "protocol",
                f"protocol {show(self.protocol.root)} has no ports (want TCP, UDP or SCTP)",
            )
        if not self.name and not self.hostPort:
            raise FieldError("name", "a port needs a name unless it has a hostPort")
        return self


class IPNAT(TabbyModel):
    internalIP: IP
    externalIP: IP
    source: str | None = None

    @model_validator(mode="after")
    def _same_family(self) -> IPNAT:
        if (
            ipaddress.ip_address(self.internalIP).version
            != ipaddress.ip_address(self.externalIP).version
        ):
            raise FieldError(
                "externalIP",
                f"externalIP {show(self.externalIP)} and internalIP {show(self.internalIP)} "
                "are different IP versions",
            )
        return self


class WorkloadEndpointSpec(TabbyModel):
    orchestrator: Name | None = None
    workload: Name | None = None
    node: Name | None = None
    containerID: Annotated[str, BeforeValidator(check_container_id)] | None = None
    pod: Name | None = None
    endpoint: Name | None = None
    serviceAccountName: Name | None = None
    ipNetworks: list[Annotated[str, BeforeValidator(_single_address)]] | None = None
    ipNATs: list[IPNAT] | None = None
    ipv4Gateway: IPv4 | None = None
    ipv6Gateway: IPv6 | None = None
    profiles: list[Name] | None = None
    interfaceName: Annotated[str, BeforeValidator(_wep_interface)]
    mac: MAC | None = None
    ports: list[WorkloadEndpointPort] | None = None
    allowSpoofedSourcePrefixes: list[CIDR] | None = None

    @model_validator(mode="after")
    def _nats_inside_networks(self) -> WorkloadEndpointSpec:
        nets = [parse_cidr_or_ip(n)[1] for n in self.ipNetworks or ()]
        for i, nat in enumerate(self.ipNATs or ()):
            ip = ipaddress.ip_address(nat.internalIP)
            if not any(ip in n for n in nets if n.version == ip.version):
                raise FieldError(
                    ("ipNATs", i, "internalIP"),
                    f"internalIP {show(nat.internalIP)} is not one of the endpoint's ipNetworks",
                )
        return self

    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The endpoint's IP addresses (from ipNetworks)."""
        return [parse_cidr_or_ip(n)[1].network_address for n in self.ipNetworks or ()]


class WorkloadEndpoint(Resource):
    KIND: ClassVar[str] = "WorkloadEndpoint"
    NAMESPACED: ClassVar[bool] = True

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["WorkloadEndpoint"] = "WorkloadEndpoint"
    spec: WorkloadEndpointSpec


class HostEndpointSpec(TabbyModel):
    node: Name
    interfaceName: Annotated[str, BeforeValidator(_hep_interface)] | None = None
    expectedIPs: list[IP] | None = None
    profiles: list[Name] | None = None
    ports: list[EndpointPort] | None = None

    @model_validator(mode="after")
    def _interface_or_ips(self) -> HostEndpointSpec:
        if not self.interfaceName and not self.expectedIPs:
            raise FieldError(
                "interfaceName", "a host endpoint needs an interfaceName or expectedIPs (or both)"
            )
        return self


class HostEndpoint(Resource):
    KIND: ClassVar[str] = "HostEndpoint"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["HostEndpoint"] = "HostEndpoint"
    spec: HostEndpointSpec
