"""The CNI protocol as data: versions, error codes, the CNI_* environment, results.

Spec versions 1.0.0 and 1.1.0 (and 0.4.0, whose results differ only by the `version` field
of each IP). Nothing here touches the kernel or the datastore, and it imports only `json` and
`os`, because every plugin exec pays for what this module imports. The name checks are set
operations, not regular expressions: compiling a pattern costs ~0.1 ms per exec.
"""

from __future__ import annotations

import json
import os
import sys

# `typing` costs ~3 ms per plugin exec; annotations are strings (PEP 563), so it is
# needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]

# Well-known error codes (spec section "Error"): 0-99 are the spec's, 100+ the plugin's.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50  # STATUS: cannot service ADD
ERR_LIMITED_CONNECTIVITY = 51  # STATUS: existing containers may be affected too
# Tabby's own codes.
ERR_IPAM = 100  # no address: pool exhausted, no pool for the node, ...
ERR_DATAPLANE = 101  # a link, address, route or sysctl could not be written
ERR_DATASTORE = 102  # the datastore refused a write (not a transient outage)
ERR_CHECK_INTERFACE = 110  # CHECK: an interface is missing or not as created
ERR_CHECK_ADDRESS = 111  # CHECK: an address is missing
ERR_CHECK_ROUTE = 112  # CHECK: a route is missing
ERR_CHECK_RESERVATION = 113  # CHECK: the IPAM reservation or the endpoint is missing
ERR_INTERNAL = 999  # an unexpected failure (the Go skel uses the same number)

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# The first spec version that defines each command (older versions must refuse it).
COMMAND_SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}

# Environment each command needs (spec section 2, "Parameters").
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),  # CNI_NETNS may be absent on DEL
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_.-")
_NETNS_CHARS = _ALNUM | frozenset("_.:@+=,/-")


def is_identifier(text: str) -> bool:
    """[A-Za-z0-9][A-Za-z0-9_.-]*: the spec's container ID, also network names."""
    return bool(text) and text[0] in _ALNUM and set(text) <= _ID_CHARS


def _is_netns_path(text: str) -> bool:
    """/[A-Za-z0-9_.:@+=,/-]*"""
    return text[:1] == "/" and set(text) <= _NETNS_CHARS


class CNIError(Exception):
    """A failure reported to the runtime as the spec's error result."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_result(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    # isdecimal() is the regex \d (any Unicode decimal digit), which int() also reads.
    if len(parts) != 3 or not all(p.isdecimal() for p in parts):
        raise CNIError(ERR_DECODE, f"cniVersion: {version!r} is not a version (want X.Y.Z)")
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_version(version: Any, command: str) -> str:
    """The config's cniVersion, checked as supported and as allowing `command`."""
    if not isinstance(version, str) or not version:
        raise CNIError(ERR_INVALID_CONFIG, f"cniVersion: missing or not a string ({version!r})")
    version_tuple(version)
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            ERR_INCOMPATIBLE_VERSION,
            f"cniVersion: {version} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})",
        )
    since = COMMAND_SINCE.get(command)
    if since and version_tuple(version) < version_tuple(since):
        raise CNIError(
            ERR_INCOMPATIBLE_VERSION,
            f"config version {version} does not allow {command} (needs {since} or later)",
        )
    return version


class Env:
    """The CNI_* parameters of one invocation, validated for its command."""

    def __init__(self, environ: dict[str, str] | os._Environ[str] | None = None) -> None:
        e = os.environ if environ is None else environ
        self.environ = e  # the caller's environment (the runtime's, also when served)
        command = e.get("CNI_COMMAND", "")
        if not command:
            raise CNIError(ERR_INVALID_ENV, "CNI_COMMAND: required environment variable missing")
        if command not in COMMANDS:
            raise CNIError(
                ERR_INVALID_ENV,
                f"CNI_COMMAND: unknown command {command!r} (expected one of {', '.join(COMMANDS)})",
            )
        self.command = command
        missing = [k for k in REQUIRED_ENV[command] if not e.get(k)]
        if missing:
            raise CNIError(
                ERR_INVALID_ENV,
                f"{', '.join(missing)}: required environment variable"
                f"{'s' if len(missing) > 1 else ''} missing for {command}",
            )
        self.container_id = e.get("CNI_CONTAINERID", "")
        self.netns = e.get("CNI_NETNS", "")
        self.ifname = e.get("CNI_IFNAME", "")
        self.path = [p for p in e.get("CNI_PATH", "").split(":") if p]
        self.args_text = e.get("CNI_ARGS", "")
        if command in ("ADD", "DEL", "CHECK"):
            if not is_identifier(self.container_id):
                raise CNIError(
                    ERR_INVALID_ENV,
                    f"CNI_CONTAINERID: invalid container ID {self.container_id!r} "
                    "(alphanumeric first, then alphanumerics, '_', '.', '-')",
                )
            check_ifname(self.ifname, "CNI_IFNAME")
            if self.netns and not _is_netns_path(self.netns):
                # It goes into `ip -batch` lines and an nsenter argument: a plain path only.
                raise CNIError(
                    ERR_INVALID_ENV,
                    f"CNI_NETNS: {self.netns!r} is not an absolute path of plain characters",
                )
        self.args = parse_cni_args(self.args_text)


def check_ifname(name: str, field: str) -> str:
    """Linux interface-name rules as the spec states them."""
    if (
        not name
        or len(name) > 15
        or name in (".", "..")
        or any(c in name for c in "/:")
        or any(c.isspace() for c in name)
    ):
        raise CNIError(
            ERR_INVALID_ENV,
            f"{field}: invalid interface name {name!r} (1-15 characters, no '/', ':' or spaces)",
        )
    return name


# Keys Tabby understands in CNI_ARGS; others need IgnoreUnknown (as libcni's LoadArgs does).
KNOWN_CNI_ARGS = (
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",  # requested addresses, comma-separated (as calico-ipam and `static` read it)
    "MAC",
)


def parse_cni_args(text: str) -> dict[str, str]:
    """'K1=V1;K2=V2' -> dict. Unknown keys are an error unless IgnoreUnknown is true."""
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CNIError(ERR_INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[key] = value
    ignore = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    if not ignore:
        unknown = [k for k in out if k not in KNOWN_CNI_ARGS]
        if unknown:
            raise CNIError(
                ERR_INVALID_ENV,
                f"CNI_ARGS: unknown key {unknown[0]!r} (known: {', '.join(KNOWN_CNI_ARGS)}; "
                "add IgnoreUnknown=1 to ignore others)",
            )
    return out


def load_config(data: bytes | str, command: str) -> dict[str, Any]:
    """Parse the network configuration from stdin and check the fields every plugin needs."""
    try:
        conf = json.loads(data)
    except ValueError as exc:
        raise CNIError(ERR_DECODE, f"network configuration: invalid JSON on stdin: {exc}") from None
    if not isinstance(conf, dict):
        raise CNIError(ERR_DECODE, "network configuration: expected a JSON object on stdin")
    conf["cniVersion"] = check_version(conf.get("cniVersion"), command)
    if command == "VERSION":
        return conf
    name = conf.get("name")
    if not isinstance(name, str) or not is_identifier(name):
        raise CNIError(
            ERR_INVALID_CONFIG,
            f"name: missing or invalid network name {name!r} "
            "(alphanumeric first, then alphanumerics, '_', '.', '-')",
        )
    if not isinstance(conf.get("type"), str) or not conf["type"]:
        raise CNIError(ERR_INVALID_CONFIG, f"type: missing or not a string ({conf.get('type')!r})")
    return conf


def version_result(conf_version: str | None) -> dict[str, Any]:
    return {"cniVersion": conf_version or LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


def convert_result(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A result in Tabby's 1.x shape, rendered for `version` (0.4.0 wants ips[].version)."""
    out = dict(result)
    out["cniVersion"] = version
    if version_tuple(version) < (1, 0, 0):
        out["ips"] = [
            {**ip, "version": "6" if ":" in ip["address"] else "4"} for ip in result.get("ips", [])
        ]
    elif version_tuple(version) < (1, 1, 0):
        # 1.1.0 added interfaces[].mtu and several route fields; older readers may be strict.
        if "interfaces" in result:
            out["interfaces"] = [
                {k: v for k, v in i.items() if k in ("name", "mac", "sandbox")}
                for i in result["interfaces"]
            ]
        if "routes" in result:
            out["routes"] = [{k: v for k, v in r.items() if k in ("dst", "gw")}
                             for r in result["routes"]]
    return out


def emit(obj: dict[str, Any], out: Any = None) -> None:
    out = sys.stdout if out is None else out
    out.write(json.dumps(obj, indent=2) + "\n")
    out.flush()


def read_stdin() -> bytes:
    try:
        return sys.stdin.buffer.read()
    except OSError as exc:
        raise CNIError(ERR_IO, f"stdin: cannot read the network configuration: {exc}") from None
