"""tabby-ipam: Tabby's block-affinity IPAM as a CNI IPAM plugin, usable under any main plugin.

ADD returns each address with its block's prefix (10.65.0.7/26) and 169.254.1.1 (IPv6: the
fixed link-local fe80::ecee:eeff:feee:eeee) as gateway; routes only if `ipam.routes` lists
them. Under the reference `ptp` plugin the gateway goes on every host veth and the block is
routed via it, so workloads reach each other and the node (at 169.254.1.1). DEL releases by handle ("<network>.<containerID>"); CHECK verifies the
reservation; GC (1.1.0) releases this network's allocations that are not valid attachments;
STATUS answers whether the datastore is reachable.

tabby-cni calls the functions here in-process when its ipam type is tabby-ipam.
"""

from __future__ import annotations

import ipaddress
import sys

from tabby.cni import spec
from tabby.cni.constants import GATEWAY_V4, GATEWAY_V6
from tabby.cni.netconf import NetConf, handle_for
from tabby.cni.spec import CNIError
from tabby.datastore.base import Datastore, DatastoreError, Unavailable

# `typing` costs ~3 ms per plugin exec; annotations are strings (PEP 563), so it is
# needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def open_ds(nc: NetConf, unavailable_code: int = spec.ERR_TRY_AGAIN) -> Datastore:
    from tabby.datastore.url import open_datastore

    try:
        return open_datastore(nc.datastore)
    except ValueError as exc:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"datastore: {exc}") from None
    except Unavailable as exc:
        raise CNIError(unavailable_code, f"datastore unreachable: {exc}") from None


def ipam_errors(exc: BaseException) -> CNIError | None:
    """The CNI error for an IPAM or datastore failure (None: not one of ours)."""
    from tabby.ipam.store import IPAMError, RetriesExhausted

    if isinstance(exc, CNIError):
        return exc
    if isinstance(exc, RetriesExhausted):
        return CNIError(spec.ERR_TRY_AGAIN, f"IPAM: {exc}")
    if isinstance(exc, IPAMError):
        return CNIError(spec.ERR_IPAM, f"IPAM: {exc}")
    if isinstance(exc, Unavailable):
        return CNIError(spec.ERR_TRY_AGAIN, f"datastore unreachable: {exc}")
    if isinstance(exc, DatastoreError):
        return CNIError(spec.ERR_DATASTORE, f"datastore: {exc}")
    return None


def _with_block(ipam: Any, ips: list[Any]) -> list[Interface]:
    out: list[Interface] = []
    for ip in ips:
        found = ipam.lookup(ip)
        plen = int(found["block"].split("/")[1]) if found else ip.max_prefixlen
        out.append(ipaddress.ip_interface((ip, plen)))
    return out


def assign(nc: NetConf, ds: Datastore, stats: dict[str, int] | None = None) -> list[Interface]:
    """The attachment's addresses (block prefix kept). A repeated ADD of the same attachment
    gets what its handle already holds, so it never takes a second address."""
    from tabby.ipam.allocator import IPAM

    ipam = IPAM(ds)
    handle = nc.handle
    want = {4: int(nc.assign_v4), 6: int(nc.assign_v6)}
    requested = nc.requested_ips
    try:
        held = ipam.ips_by_handle(handle)
        if held:
            if (sorted(str(ip) for ip in held) == sorted(requested) if requested else
                    {v: sum(1 for ip in held if ip.version == v) for v in (4, 6)} == want):
                nc.log.info(f"handle {handle} already holds {[str(i) for i in held]}: reusing")
                return _with_block(ipam, held)
            ipam.release_by_handle(handle)  # wrong shape (config changed): start again
        attrs = nc.attrs()
        got: list[Interface] = []
        if requested:
            taken = []
            try:
                for ip in requested:
                    taken.append(ipam.assign_ip(ip, handle, attrs, node=nc.nodename))
            except BaseException:
                if taken:
                    ipam.release_by_handle(handle)
                raise
            got = _with_block(ipam, taken)
        elif nc.v4_pools or nc.v6_pools:
            # Requested pools apply per IP version (an empty list means "any").
            try:
                for version, pools in ((4, nc.v4_pools), (6, nc.v6_pools)):
                    if want[version]:
                        res = ipam.auto_assign(
                            handle, nc.nodename, want[4] if version == 4 else 0,
                            want[6] if version == 6 else 0, attrs, pools=pools or None,
                        )
                        got.extend([*res.v4, *res.v6])
            except BaseException:
                if got:
                    ipam.release_by_handle(handle)
                raise
        else:
            res = ipam.auto_assign(handle, nc.nodename, want[4], want[6], attrs)
            got = [*res.v4, *res.v6]
        nc.log.info(f"assigned {[str(i) for i in got]} to handle {handle}")
        return got
    except Exception as exc:
        err = ipam_errors(exc)
        if err is None:
            raise
        raise err from None
    finally:
        if stats is not None:
            for k, v in ipam.stats.items():
                stats[k] = stats.get(k, 0) + v


def release(nc: NetConf, ds: Datastore) -> list[str]:
    from tabby.ipam.allocator import IPAM

    try:
        released = IPAM(ds).release_by_handle(nc.handle)
    except Exception as exc:
        err = ipam_errors(exc)
        if err is None:
            raise
        raise err from None
    nc.log.info(f"released {[str(i) for i in released]} of handle {nc.handle}")
    return [str(i) for i in released]


def check(nc: NetConf, ds: Datastore, addresses: list[str]) -> None:
    from tabby.ipam.allocator import IPAM

    held = {str(ip) for ip in IPAM(ds).ips_by_handle(nc.handle)}
    for cidr in addresses:
        ip = cidr.split("/")[0]
        if ip not in held:
            raise CNIError(
                spec.ERR_CHECK_RESERVATION,
                f"IPAM: {ip} is not reserved for handle {nc.handle}",
            )


def valid_attachments(conf: dict[str, Any]) -> set[tuple[str, str]]:
    # The spec's field; libcni also sets "cni.dev/attachments" (an older spelling).
    items = conf.get("cni.dev/valid-attachments")
    if items is None:
        items = conf.get("cni.dev/attachments")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise CNIError(
            spec.ERR_INVALID_CONFIG, f"cni.dev/valid-attachments: expected a list (got {items!r})"
        )
    out = set()
    for i, a in enumerate(items):
        if not isinstance(a, dict) or not isinstance(a.get("containerID"), str):
            raise CNIError(
                spec.ERR_INVALID_CONFIG,
                f"cni.dev/valid-attachments[{i}]: expected {{\"containerID\", \"ifname\"}} "
                f"(got {a!r})",
            )
        out.add((a["containerID"], str(a.get("ifname") or "")))
    return out


def stale_allocations(nc: NetConf, ds: Datastore, valid: set[tuple[str, str]]) -> dict[str, dict]:
    """handle -> attrs of this network's allocations whose attachment is not valid."""
    from tabby.ipam.allocator import IPAM

    valid_handles = {handle_for(nc.name, cid, ifname) for cid, ifname in valid}
    prefix = nc.name + "."
    stale: dict[str, dict] = {}
    for alloc in IPAM(ds).allocations():
        handle, attrs = alloc["handle"], alloc.get("attrs") or {}
        if not handle or not handle.startswith(prefix) or handle in valid_handles:
            continue
        # The runtime lists this node's attachments only: other nodes' are not ours to judge.
        if attrs.get("node") != nc.nodename:
            continue
        # The prefix alone could match a network named "<name>.x": the attribute decides.
        if attrs.get("network", nc.name) != nc.name:
            continue
        stale[handle] = attrs
    return stale


def release_handles(nc: NetConf, ds: Datastore, handles: list[str]) -> None:
    from tabby.ipam.allocator import IPAM

    ipam = IPAM(ds)
    for handle in handles:
        ipam.release_by_handle(handle)
        nc.log.info(f"GC: released handle {handle}")


def gc(nc: NetConf, ds: Datastore, valid: set[tuple[str, str]]) -> dict[str, dict]:
    stale = stale_allocations(nc, ds, valid)
    release_handles(nc, ds, list(stale))
    return stale


def ipam_result(nc: NetConf, ifaces: list[Interface]) -> dict[str, Any]:
    """The IPAM result: each address with its block prefix and the Calico gateway. Routes
    only when `ipam.routes` asks for them (as host-local does): a main plugin such as ptp
    installs result routes before it makes the off-subnet gateway reachable, so a default
    route via 169.254.1.1 would fail there; ptp itself routes the block via the gateway."""
    ips = []
    for iface in ifaces:
        gw = GATEWAY_V6 if iface.version == 6 else GATEWAY_V4
        ips.append({"address": str(iface), "gateway": gw})
    out: dict[str, Any] = {"cniVersion": nc.version, "ips": ips}
    routes = nc.ipam.get("routes")
    if routes is not None:
        if not isinstance(routes, list) or not all(
            isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes
        ):
            raise CNIError(
                spec.ERR_INVALID_CONFIG, f"ipam.routes: expected a list of {{\"dst\"}} (got {routes!r})"
            )
        out["routes"] = routes
    if isinstance(nc.raw.get("dns"), dict):
        out["dns"] = nc.raw["dns"]
    return out


def status(nc: NetConf) -> None:
    ds = open_ds(nc, unavailable_code=spec.ERR_NOT_AVAILABLE)
    try:
        ds.revision()
    except DatastoreError as exc:
        raise CNIError(spec.ERR_NOT_AVAILABLE, f"datastore unreachable: {exc}") from None
    finally:
        ds.close()


# --- the executable -----------------------------------------------------------------------


def handle_command(env: spec.Env, conf: dict[str, Any]) -> dict[str, Any] | None:
    nc = NetConf(conf, env, ipam_only=True)
    if env.command == "STATUS":
        status(nc)
        return None
    ds = open_ds(nc)
    try:
        if env.command == "ADD":
            return ipam_result(nc, assign(nc, ds))
        if env.command == "DEL":
            release(nc, ds)
            return None
        if env.command == "CHECK":
            prev = conf.get("prevResult")
            if not isinstance(prev, dict):
                raise CNIError(spec.ERR_INVALID_CONFIG, "prevResult: missing (CHECK needs it)")
            check(nc, ds, [ip.get("address", "") for ip in prev.get("ips", [])])
            return None
        if env.command == "GC":
            gc(nc, ds, valid_attachments(conf))
            return None
    finally:
        ds.close()
    raise CNIError(spec.ERR_INVALID_ENV, f"CNI_COMMAND: {env.command} not handled")


def main() -> int:
    from tabby.cni.skel import run_and_exit

    return run_and_exit(handle_command)


if __name__ == "__main__":
    sys.exit(main())
