"""`tabby ipam ...`: calicoctl's IPAM verbs (show, check, release, gc, configure).

Exit codes: 0 success (for `check`: no problems), 1 bad input / problems found /
nothing to release, 2 datastore unreachable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rich.table import Table

from tabby.cli.common import (
    CLIError,
    add_output_flag,
    console,
    datastore_parent,
    err_console,
    open_client,
    print_data,
)

OUTPUTS = ("table", "json", "yaml")


def register(sub: argparse._SubParsersAction) -> None:
    parent = datastore_parent()
    ipam = sub.add_parser("ipam", help="IP address management: show, check, release, gc, configure")
    verbs = ipam.add_subparsers(dest="ipam_command", metavar="SUBCOMMAND")
    ipam.set_defaults(func=lambda args: (ipam.print_help(), 1)[1])

    p = verbs.add_parser("show", help="pool and block usage", parents=[parent])
    p.add_argument("--show-blocks", action="store_true", help="also list every block")
    p.add_argument("--show-configuration", action="store_true", help="show the IPAM config")
    p.add_argument("--ip", help="show who holds this address")
    add_output_flag(p, OUTPUTS, "table")
    p.set_defaults(func=_guard(_cmd_show))

    p = verbs.add_parser(
        "check", parents=[parent],
        help="report leaked addresses, endpoints without allocations, affinities of "
             "deleted nodes (exit 1 when problems are found)")
    add_output_flag(p, OUTPUTS, "table")
    p.set_defaults(func=_guard(_cmd_check))

    p = verbs.add_parser("release", help="release addresses", parents=[parent])
    p.add_argument("--ip", action="append", required=True, metavar="IP",
                   help="address to release (repeatable)")
    p.set_defaults(func=_guard(_cmd_release))

    p = verbs.add_parser(
        "gc", parents=[parent],
        help="release leaked addresses and the block affinities of deleted nodes")
    p.add_argument("--dry-run", action="store_true", help="print what would be done")
    p.add_argument("--grace-period", type=float, default=None, metavar="SECONDS",
                   help="leave leaked addresses younger than this (default 60: an ADD in "
                        "progress holds its address before its endpoint exists)")
    add_output_flag(p, OUTPUTS, "table")
    p.set_defaults(func=_guard(_cmd_gc))

    p = verbs.add_parser("configure", help="set the IPAM configuration", parents=[parent])
    p.add_argument("--strictaffinity", type=_bool, metavar="true|false",
                   help="never borrow addresses from other nodes' blocks")
    p.add_argument("--max-blocks-per-host", type=_count, metavar="N",
                   help="blocks a node may claim (0 = no explicit limit; needs strict affinity)")
    p.add_argument("--autoallocateblocks", type=_bool, metavar="true|false",
                   help="claim new blocks when a node's blocks are full")
    add_output_flag(p, OUTPUTS, "table")
    p.set_defaults(func=_guard(_cmd_configure))


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """IPAM failures become one-line CLI errors (exit 1)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except _ipam_errors() as exc:
            raise CLIError(str(exc)) from None

    return run


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"invalid value {text!r} (want true or false)")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (want an integer)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (want >= 0)")
    return value


def _ipam(client: Any) -> Any:
    from tabby.ipam.allocator import IPAM

    return IPAM(client.ds)


def _ipam_errors() -> tuple[type[Exception], ...]:
    from tabby.ipam.allocator import IPAMError

    return (IPAMError,)


def _pct(part: int, whole: int) -> str:
    return f"{part} ({100 * part / whole:.0f}%)" if whole else str(part)


# -- show ----------------------------------------------------------------------------------


def _cmd_show(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        ipam = _ipam(client)
        if args.ip:
            return _show_ip(ipam, client, args)
        usage = ipam.usage()
        config = ipam.get_config().to_dict()
    if args.output != "table":
        data = dict(usage)
        if not args.show_blocks:
            data = {"pools": [{k: v for k, v in p.items() if k != "blocks"}
                              for p in usage["pools"]]}
        if args.show_configuration:
            data["configuration"] = config
        print_data(data, args.output)
        return 0
    if args.show_configuration:
        table = Table("PROPERTY", "VALUE")
        for key, value in config.items():
            table.add_row(key, str(value).lower() if isinstance(value, bool) else str(value))
        console.print(table)
        return 0
    table = Table("POOL", "CIDR", "SIZE", "IN USE", "FREE")
    for p in usage["pools"]:
        name = p["name"] + (" (disabled)" if p["disabled"] else "")
        table.add_row(name, p["cidr"], str(p["size"]), _pct(p["inUse"], p["size"]),
                      _pct(p["free"], p["size"]))
    console.print(table)
    if args.show_blocks:
        blocks = Table("BLOCK", "POOL", "NODE AFFINITY", "IN USE", "FREE")
        for p in usage["pools"]:
            for b in p["blocks"]:
                blocks.add_row(b["cidr"], p["name"], b["node"] or "-",
                               f"{b['inUse']}/{b['size']}", str(b["free"]))
        for b in usage["otherBlocks"]:
            blocks.add_row(b["cidr"], "(no pool)", b["node"] or "-",
                           f"{b['inUse']}/{b['size']}", str(b["free"]))
        console.print(blocks)
    return 0


def _show_ip(ipam: Any, client: Any, args: argparse.Namespace) -> int:
    try:
        found = ipam.lookup(args.ip)
    except _ipam_errors() as exc:
        raise CLIError(f"--ip: {exc}") from None
    if args.output != "table":
        print_data({"ip": args.ip, "allocation": found}, args.output)
        return 0
    if found is None:
        console.print(f"IP {args.ip} is not assigned", markup=False, highlight=False)
        return 0
    console.print(f"IP {found['ip']} is in use (block {found['block']}, node affinity "
                  f"{found['blockNode'] or 'none'})", markup=False, highlight=False)
    console.print(f"  handle: {found['handle']}", markup=False, highlight=False)
    for key, value in sorted((found.get("attrs") or {}).items()):
        console.print(f"  {key}: {value}", markup=False, highlight=False)
    return 0


# -- check / gc ----------------------------------------------------------------------------


def _report(client: Any, ipam: Any) -> dict[str, Any]:
    from tabby.ipam.check import check, endpoint_refs

    # Endpoints first: an ADD that completes in between then shows up as a (young) leak,
    # never as an endpoint whose address is unallocated.
    endpoints = endpoint_refs(client.list("WorkloadEndpoint"))
    nodes = {n.metadata.name for n in client.list("Node")}
    return check(ipam, endpoints, nodes)


def _cmd_check(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        report = _report(client, _ipam(client))
    problems = report["summary"]["problems"]
    if args.output != "table":
        print_data(report, args.output)
        return 1 if problems else 0
    s = report["summary"]
    out = console.print
    out(f"Checked {s['allocations']} allocated address(es) against {s['workloadEndpoints']} "
        f"workload endpoint(s) on {s['nodes']} node(s).", markup=False, highlight=False)
    for note in report["notes"]:
        out(f"Note: {note}", markup=False, highlight=False)
    if report["leakedAddresses"] or report["orphanedTunnelAddresses"]:
        table = Table("LEAKED IP", "HANDLE", "NODE", "AGE (s)", title="Allocated, not used")
        for r in report["leakedAddresses"] + report["orphanedTunnelAddresses"]:
            table.add_row(r["ip"], r["handle"], r["node"] or "-", str(r["ageSeconds"]))
        out(table)
    if report["unallocatedEndpointAddresses"]:
        table = Table("WORKLOAD ENDPOINT", "IP", "NODE", title="Used, not allocated")
        for r in report["unallocatedEndpointAddresses"]:
            table.add_row(r["workloadEndpoint"], r["ip"], r["node"] or "-")
        out(table)
    if report["orphanedAffinities"]:
        table = Table("NODE", "BLOCK", "IN USE", title="Blocks affine to deleted nodes")
        for r in report["orphanedAffinities"]:
            table.add_row(r["node"], r["block"], str(r["inUse"]))
        out(table)
    for line in report["pendingRepairs"]:
        out(f"Interrupted operation: {line}", markup=False, highlight=False)
    if problems:
        out(f"Found {problems} problem(s); `tabby ipam gc` releases leaks and affinities of "
            "deleted nodes.", markup=False, highlight=False)
        return 1
    out("No problems found.")
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from tabby.ipam.check import DEFAULT_GRACE_SECONDS, gc

    grace = DEFAULT_GRACE_SECONDS if args.grace_period is None else args.grace_period
    if grace < 0:
        raise CLIError(f"--grace-period: must be >= 0, got {grace}")
    with open_client(args) as client:
        ipam = _ipam(client)
        report = _report(client, ipam)
        actions = gc(ipam, report, grace_seconds=grace, dry_run=args.dry_run)
    if args.output != "table":
        print_data({"dryRun": args.dry_run, "actions": actions}, args.output)
        return 0
    prefix = "would " if args.dry_run else ""
    for line in actions:
        console.print(prefix + line, markup=False, highlight=False)
    if not actions:
        console.print("Nothing to collect.")
    return 0


# -- release / configure -------------------------------------------------------------------


def _cmd_release(args: argparse.Namespace) -> int:
    import ipaddress

    ips = []
    for text in args.ip:
        try:
            ips.append(ipaddress.ip_address(text))
        except ValueError:
            raise CLIError(f"--ip: invalid IP address {text!r}") from None
    with open_client(args) as client:
        ipam = _ipam(client)
        from tabby.ipam.check import endpoint_refs

        users = {ip: ep.name for ep in endpoint_refs(client.list("WorkloadEndpoint"))
                 for ip in map(ipaddress.ip_address, ep.ips) if ip in ips}
        holders = {ip: ipam.lookup(ip) for ip in ips}
        unreleased = set(ipam.release_ips(ips))
    failed = 0
    for ip in ips:
        if ip in unreleased:
            err_console.print(f"{ip}: not assigned, nothing released", markup=False,
                              highlight=False)
            failed += 1
            continue
        handle = (holders.get(ip) or {}).get("handle", "?")
        console.print(f"released {ip} (handle {handle})", markup=False, highlight=False)
        if ip in users:
            err_console.print(f"warning: {ip} is still used by WorkloadEndpoint {users[ip]}",
                              markup=False, highlight=False)
    return 1 if failed else 0


def _cmd_configure(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        ipam = _ipam(client)
        try:
            if args.strictaffinity is None and args.max_blocks_per_host is None and \
                    args.autoallocateblocks is None:
                cfg = ipam.get_config()
            else:
                cfg = ipam.set_config(strict_affinity=args.strictaffinity,
                                      max_blocks_per_host=args.max_blocks_per_host,
                                      auto_allocate_blocks=args.autoallocateblocks)
        except _ipam_errors() as exc:
            raise CLIError(str(exc)) from None
    data = cfg.to_dict()
    if args.output != "table":
        print_data(data, args.output)
        return 0
    for key, value in data.items():
        console.print(f"{key}: {str(value).lower() if isinstance(value, bool) else value}",
                      markup=False, highlight=False)
    return 0
