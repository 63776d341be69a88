"""FelixConfiguration: the per-cluster (`default`) and per-node (`node.<name>`) agent settings.

A typed subset of Calico's fields (the ones Tabby's agent uses or that common
manifests set); any other field is an error naming it. Every field is optional, as
Calico stores it: the agent merges `default` and `node.<name>` field by field and
`FelixConfigurationSpec.effective(field)` supplies Calico's default for unset fields.

`ipipImplementation` ("Kernel" | "BPF" | "Auto") is a Tabby extension: how the agent
provides IPIP when the kernel has no ipip module.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from .common import (
    CIDR,
    Duration,
    IPv4,
    IPv6,
    Port,
    TabbyModel,
    check_cidr_v4,
    int_range,
)
from .errors import FieldError, show
from .meta import Resource

PortInt = Annotated[int, int_range(0, 65535, "port")]
MTU = Annotated[int, int_range(68, 65535, "MTU")]
LogLevel = Literal["Trace", "Debug", "Info", "Warning", "Error", "Fatal"]
OnOff = Literal["Enabled", "Disabled"]


class ProtoPort(TabbyModel):
    """A failsafe port: protocol TCP/UDP/SCTP, port, and optionally a CIDR to limit it to."""

    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: PortInt
    net: CIDR | None = None


class _TableRange(TabbyModel):
    """A min..max range of route tables; subclasses set the bounds of each end."""

    min: int
    max: int

    @model_validator(mode="after")
    def _order(self) -> _TableRange:
        if self.min > self.max:
            raise FieldError("max", f"route table range max {self.max} is below min {self.min}")
        return self


class RouteTableRange(_TableRange):
    min: Annotated[int, int_range(1, 250, "route table")]
    max: Annotated[int, int_range(1, 250, "route table")]


class RouteTableIDRange(_TableRange):
    min: Annotated[int, int_range(1, 0xFFFFFFFF, "route table")]
    max: Annotated[int, int_range(1, 0xFFFFFFFF, "route table")]


class HealthTimeoutOverride(TabbyModel):
    name: str
    timeout: Duration


def _pp(proto: Literal["TCP", "UDP", "SCTP"], port: int) -> ProtoPort:
    return ProtoPort(protocol=proto, port=port)


# Felix's built-in failsafes: host-endpoint traffic allowed whatever the policy says.
DEFAULT_FAILSAFE_INBOUND_HOST_PORTS: tuple[ProtoPort, ...] = (
    _pp("TCP", 22),
    _pp("UDP", 68),
    _pp("TCP", 179),
    _pp("TCP", 2379),
    _pp("TCP", 2380),
    _pp("TCP", 5473),
    _pp("TCP", 6443),
    _pp("TCP", 6666),
    _pp("TCP", 6667),
)
DEFAULT_FAILSAFE_OUTBOUND_HOST_PORTS: tuple[ProtoPort, ...] = (
    _pp("UDP", 53),
    _pp("UDP", 67),
    _pp("TCP", 179),
    _pp("TCP", 2379),
    _pp("TCP", 2380),
    _pp("TCP", 5473),
    _pp("TCP", 6443),
    _pp("TCP", 6666),
    _pp("TCP", 6667),
)

FELIX_DEFAULTS: dict[str, Any] = {
    "ipv6Support": True,
    "routeRefreshInterval": "90s",
    "interfaceRefreshInterval": "90s",
    "iptablesRefreshInterval": "10s",
    "ipsetsRefreshInterval": "90s",
    "nftablesRefreshInterval": "90s",
    "interfacePrefix": "cali",
    "interfaceExclude": "kube-ipvs0",
    "chainInsertMode": "insert",
    "defaultEndpointToHostAction": "Drop",
    "logPrefix": "calico-packet",
    "logSeverityScreen": "Info",
    "logSeverityFile": "Info",
    "logSeveritySys": "Info",
    "ipipMTU": 1440,
    "vxlanMTU": 1410,
    "vxlanMTUV6": 1390,
    "vxlanPort": 4789,
    "vxlanVNI": 4096,
    "reportingInterval": "30s",
    "reportingTTL": "90s",
    "healthEnabled": False,
    "healthHost": "localhost",
    "healthPort": 9099,
    "prometheusMetricsEnabled": False,
    "prometheusMetricsPort": 9091,
    "failsafeInboundHostPorts": list(DEFAULT_FAILSAFE_INBOUND_HOST_PORTS),
    "failsafeOutboundHostPorts": list(DEFAULT_FAILSAFE_OUTBOUND_HOST_PORTS),
    "removeExternalRoutes": True,
    "ipForwarding": "Enabled",
    "bpfEnabled": False,
    "nftablesMode": "Enabled",
    "routeSource": "CalicoIPAM",
    "floatingIPs": "Disabled",
    "serviceLoopPrevention": "Drop",
    "ipipImplementation": "Auto",
    "allowVXLANPacketsFromWorkloads": False,
    "allowIPIPPacketsFromWorkloads": False,
    "wireguardEnabled": False,
}


class FelixConfigurationSpec(TabbyModel):
    useInternalDataplaneDriver: bool | None = None
    dataplaneDriver: str | None = None
    ipv6Support: bool | None = None
    routeRefreshInterval: Duration | None = None
    interfaceRefreshInterval: Duration | None = None
    iptablesRefreshInterval: Duration | None = None
    ipsetsRefreshInterval: Duration | None = None
    nftablesRefreshInterval: Duration | None = None
    iptablesBackend: Literal["Legacy", "NFT", "Auto"] | None = None
    featureDetectOverride: str | None = None
    featureGates: str | None = None
    interfacePrefix: str | None = None
    interfaceExclude: str | None = None
    chainInsertMode: Literal["insert", "append"] | None = None
    defaultEndpointToHostAction: Literal["Drop", "Accept", "Return"] | None = None
    iptablesFilterAllowAction: Literal["Accept", "Return"] | None = None
    iptablesMangleAllowAction: Literal["Accept", "Return"] | None = None
    iptablesFilterDenyAction: Literal["Drop", "Reject"] | None = None
    nftablesFilterAllowAction: Literal["Accept", "Return"] | None = None
    nftablesMangleAllowAction: Literal["Accept", "Return"] | None = None
    nftablesFilterDenyAction: Literal["Drop", "Reject"] | None = None
    nftablesMode: Literal["Enabled", "Disabled", "Auto"] | None = None
    logPrefix: str | None = None
    logFilePath: str | None = None
    logSeverityFile: LogLevel | None = None
    logSeverityScreen: LogLevel | None = None
    logSeveritySys: LogLevel | Literal["None"] | None = None
    logDebugFilenameRegex: str | None = None
    ipipEnabled: bool | None = None
    ipipMTU: MTU | None = None
    ipipImplementation: Literal["Kernel", "BPF", "Auto"] | None = None  # Tabby extension
    vxlanEnabled: bool | None = None
    vxlanMTU: MTU | None = None
    vxlanMTUV6: MTU | None = None
    vxlanPort: PortInt | None = None
    vxlanVNI: Annotated[int, int_range(1, 16777215, "VXLAN VNI")] | None = None
    allowVXLANPacketsFromWorkloads: bool | None = None
    allowIPIPPacketsFromWorkloads: bool | None = None
    reportingInterval: Duration | None = None
    reportingTTL: Duration | None = None
    endpointReportingEnabled: bool | None = None
    endpointReportingDelay: Duration | None = None
    endpointStatusPathPrefix: str | None = None
    iptablesMarkMask: Annotated[int, int_range(0, 0xFFFFFFFF, "mark mask")] | None = None
    nftablesMarkMask: Annotated[int, int_range(0, 0xFFFFFFFF, "mark mask")] | None = None
    disableConntrackInvalidCheck: bool | None = None
    healthEnabled: bool | None = None
    healthHost: str | None = None
    healthPort: PortInt | None = None
    healthTimeoutOverrides: list[HealthTimeoutOverride] | None = None
    prometheusMetricsEnabled: bool | None = None
    prometheusMetricsHost: str | None = None
    prometheusMetricsPort: PortInt | None = None
    prometheusGoMetricsEnabled: bool | None = None
    prometheusProcessMetricsEnabled: bool | None = None
    prometheusWireGuardMetricsEnabled: bool | None = None
    failsafeInboundHostPorts: list[ProtoPort] | None = None
    failsafeOutboundHostPorts: list[ProtoPort] | None = None
    kubeNodePortRanges: Annotated[list[Port], Field(max_length=7)] | None = None
    policySyncPathPrefix: str | None = None
    usageReportingEnabled: bool | None = None
    natPortRange: Port | None = None
    natOutgoingAddress: IPv4 | None = None
    deviceRouteSourceAddress: IPv4 | None = None
    deviceRouteSourceAddressIPv6: IPv6 | None = None
    deviceRouteProtocol: Annotated[int, int_range(0, 255, "route protocol")] | None = None
    removeExternalRoutes: bool | None = None
    programClusterRoutes: OnOff | None = None
    ipForwarding: OnOff | None = None
    externalNodesList: list[Annotated[str, BeforeValidator(check_cidr_v4)]] | None = None
    routeTableRange: RouteTableRange | None = None
    routeTableRanges: list[RouteTableIDRange] | None = None
    routeSource: Literal["WorkloadIPs", "CalicoIPAM"] | None = None
    mtuIfacePattern: str | None = None
    floatingIPs: OnOff | None = None
    serviceLoopPrevention: Literal["Drop", "Reject", "Disabled"] | None = None
    xdpEnabled: bool | None = None
    genericXDPEnabled: bool | None = None
    bpfEnabled: bool | None = None
    bpfLogLevel: Literal["Off", "Info", "Debug"] | None = None
    wireguardEnabled: bool | None = None
    wireguardEnabledV6: bool | None = None
    wireguardListeningPort: PortInt | None = None
    wireguardMTU: MTU | None = None
    wireguardInterfaceName: str | None = None

    @model_validator(mode="after")
    def _rules(self) -> FelixConfigurationSpec:
        for i, port in enumerate(self.kubeNodePortRanges or ()):
            if port.is_named:
                raise FieldError(
                    ("kubeNodePortRanges", i), f"named port {show(port.root)} not allowed here"
                )
        if self.natPortRange is not None and self.natPortRange.is_named:
            raise FieldError(
                "natPortRange", f"named port {show(self.natPortRange.root)} not allowed here"
            )
        if self.routeTableRange is not None and self.routeTableRanges is not None:
            raise FieldError(
                "routeTableRange", "routeTableRange cannot be set with routeTableRanges"
            )
        return self

    def effective(self, field: str) -> Any:
        """The field's value, or Calico's default when it is unset (None if it has none)."""
        if field not in type(self).model_fields:
            raise KeyError(field)
        value = getattr(self, field)
        return FELIX_DEFAULTS.get(field) if value is None else value


class FelixConfiguration(Resource):
    KIND: ClassVar[str] = "FelixConfiguration"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["FelixConfiguration"] = "FelixConfiguration"
    spec: FelixConfigurationSpec = Field(default_factory=FelixConfigurationSpec)
