"""`tabby policy explain|matrix`: the reference evaluator over the datastore contents."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table
from rich.text import Text

from tabby.cli.common import (
    CLIError,
    console,
    datastore_parent,
    err_console,
    open_client,
    print_data,
)


def register(sub: argparse._SubParsersAction) -> None:
    parent = datastore_parent()
    group = sub.add_parser("policy", help="explain and tabulate policy decisions")
    verbs = group.add_subparsers(dest="policy_command", metavar="COMMAND")
    group.set_defaults(func=lambda args: _usage(group))

    p = verbs.add_parser(
        "explain", parents=[parent],
        help="the verdict for one flow and the rules that decided it",
        description="SRC/DST: namespace/name of a WorkloadEndpoint, a HostEndpoint name, or an "
                    "IP address (a bare IP evaluates no policy of its own). A HostEndpoint "
                    "stands for its host's own traffic through it (failsafe ports, untracked, "
                    "preDNAT and normal policy). An address outside the cluster to or from a "
                    "workload crosses the workload node's host endpoint when it has exactly "
                    "one (its applyOnForward, preDNAT and untracked policy).")
    p.add_argument("--from", dest="src", required=True, metavar="SRC")
    p.add_argument("--to", dest="dst", required=True, metavar="DST")
    _flow_flags(p)
    p.add_argument("--src-port", type=int, metavar="N", help="source port (default: unknown)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_explain)

    p = verbs.add_parser(
        "matrix", parents=[parent],
        help="allow/deny between every pair of workload endpoints",
        description="Every workload endpoint to every other one (not itself), keyed by "
                    "namespace/name. Default: all namespaces.")
    _flow_flags(p)
    ns = p.add_mutually_exclusive_group()
    ns.add_argument("-n", "--namespace", help="only endpoints of this namespace")
    ns.add_argument("-A", "--all-namespaces", action="store_true",
                    help="endpoints of every namespace (the default)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_matrix)


def _flow_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", default="TCP",
                   help="TCP, UDP, SCTP, ICMP, ICMPv6, UDPLite or a number (default TCP)")
    p.add_argument("--port", type=int, metavar="N", help="destination port (matrix: default 80)")
    p.add_argument("--ip-version", type=int, choices=(4, 6),
                   help="address family (default: from the IPs given, else 4)")
    p.add_argument("--icmp-type", type=int, metavar="T")
    p.add_argument("--icmp-code", type=int, metavar="C")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def load_policy_set(args: argparse.Namespace) -> Any:
    from tabby.policy.model import PolicySet

    with open_client(args) as client:
        resources, _ = client.snapshot()
    ps = PolicySet.from_resources(resources)
    for warning in ps.warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False)
    return ps


def _cmd_explain(args: argparse.Namespace) -> int:
    from tabby.policy.errors import PolicyError
    from tabby.policy.evaluate import evaluate, make_flow

    ps = load_policy_set(args)
    try:
        flow = make_flow(ps, args.src, args.dst, protocol=args.protocol, port=args.port,
                         src_port=args.src_port, icmp_type=args.icmp_type,
                         icmp_code=args.icmp_code, ip_version=args.ip_version)
    except PolicyError as exc:
        raise CLIError(str(exc)) from None
    verdict = evaluate(ps, flow)
    if args.output == "json":
        print_data(verdict.to_json(), "json")
    else:
        _print_explain(verdict.to_json())
    return 0


def _styled(verdict: str) -> Text:
    return Text(verdict, style="bold green" if verdict == "Allow" else "bold red")


TRAFFIC = {"fromHost": "from a host", "toHost": "to a host", "forwarded": "forwarded",
           "workloadToHost": "a workload to its own host",
           "local": "a host to its own workload or itself"}
STAGES = {"failsafe": "failsafe", "untracked": "untracked (doNotTrack)", "preDNAT": "preDNAT",
          "forward": "forward (applyOnForward)", "endpointToHost": "endpoint to host",
          "local": "local"}


def _print_explain(data: dict[str, Any]) -> None:
    f = data["flow"]
    head = Text(f"{f['protocol']} ")
    head.append(f"{f['from']}" + (f" ({f['srcIP']})" if "srcIP" in f and f["from"] != f["srcIP"]
                                  else ""))
    head.append(" -> ")
    head.append(f"{f['to']}" + (f" ({f['dstIP']})" if "dstIP" in f and f["to"] != f["dstIP"]
                                else ""))
    if "port" in f:
        head.append(f" port {f['port']}")
    if "icmpType" in f:
        head.append(f" icmp type {f['icmpType']}" +
                    (f" code {f['icmpCode']}" if "icmpCode" in f else ""))
    head.append(": ")
    head.append_text(_styled(data["verdict"]))
    console.print(head)
    traffic = data.get("traffic", "endpoints")
    if traffic != "endpoints":
        kinds = " + ".join(TRAFFIC.get(t, t) for t in traffic.split("+"))
        vias = [f"in through {f['viaIn']}" if "viaIn" in f else "",
                f"out through {f['viaOut']}" if "viaOut" in f else ""]
        extra = ", ".join(v for v in vias if v)
        console.print(Text(f"  traffic: {kinds}" + (f" ({extra})" if extra else "")))
    sides = [("egress", data["egress"])]
    sides += [("forward", side) for side in data.get("forward", ())]
    sides.append(("ingress", data["ingress"]))
    for direction, side in sides:
        who = side["endpoint"] or side["ip"]
        if direction == "forward":
            line = Text(f"  forwarded {side['direction'].lower()} through host endpoint {who}: ")
        else:
            line = Text(f"  {direction} of {who}: ")
        line.append_text(_styled(side["verdict"]))
        console.print(line)
        for step in side["steps"]:
            console.print(Text("    " + _describe_step(step)))
        decider = side["decider"]
        console.print(Text("    decided by: " + _describe_decider(decider), style="bold"))


def _where(step: dict[str, Any]) -> str:
    if "profile" in step:
        return f"profile {step['profile']}"
    if "policy" in step:
        return f"tier {step['tier']} policy {step['policy']}"
    return f"tier {step.get('tier')}"


def _stage(item: dict[str, Any]) -> str:
    stage = item.get("stage")
    return f"{STAGES.get(stage, stage)}: " if stage else ""


def _describe_step(step: dict[str, Any]) -> str:
    action = step["action"]
    if not any(k in step for k in ("tier", "policy", "profile")):
        # A stage outside policy (failsafe, skip, DefaultEndpointToHostAction, local).
        text = f"{_stage(step)}{action}"
        return text + (f" ({step['note']})" if step.get("note") else "")
    where = _where(step)
    if "rule" in step:
        text = f"{where} rule {step['rule']}: {action}"
    elif action == "NoMatch":
        text = f"{where}: no rule matched"
    elif action == "EndOfTier":
        text = f"{where}: end of tier"
    else:
        text = f"{where}: {action}"
    return _stage(step) + text + (f" ({step['note']})" if step.get("note") else "")


def _describe_decider(decider: dict[str, Any]) -> str:
    if "failsafe" in decider:
        return f"failsafe {decider['failsafe']}"
    if "rule" in decider:
        return _describe_step(decider)
    if "tier" in decider:
        return f"{_stage(decider)}tier {decider['tier']}: {decider['default']}"
    return f"{_stage(decider)}{decider.get('default')}"


def _family(endpoints: list[Any]) -> int:
    """IPv4 unless the endpoints only have IPv6 addresses."""
    if any(ep.ip(4) for ep in endpoints) or not any(ep.ip(6) for ep in endpoints):
        return 4
    return 6


def _cmd_matrix(args: argparse.Namespace) -> int:
    from tabby.policy.errors import PolicyError
    from tabby.policy.matrix import reachability
    from tabby.policy.rules import PORT_PROTOCOLS, protocol_number

    try:
        proto = protocol_number(args.protocol, "--protocol")
    except PolicyError as exc:
        raise CLIError(str(exc)) from None
    if proto in PORT_PROTOCOLS and args.port is None:
        args.port = 80  # as `tabby lab probe`, so the two compare without flags
    if proto not in PORT_PROTOCOLS and args.port is not None:
        raise CLIError(f"--port: protocol {args.protocol} has no ports")
    if args.port is not None and not 0 < args.port < 65536:
        raise CLIError(f"--port: invalid port {args.port} (1-65535)")
    if (args.icmp_type is not None or args.icmp_code is not None) and proto not in (1, 58):
        raise CLIError("--icmp-type/--icmp-code: need protocol ICMP or ICMPv6")
    ps = load_policy_set(args)
    endpoints = ps.workload_endpoints(None if args.all_namespaces else args.namespace)
    result = reachability(ps, endpoints, protocol=proto, port=args.port,
                          icmp_type=args.icmp_type, icmp_code=args.icmp_code,
                          ip_version=args.ip_version or _family(endpoints))
    if args.output == "json":
        print_data({src: {dst: "Allow" if ok else "Deny" for dst, ok in row.items()}
                    for src, row in result.items()}, "json")
        return 0
    if not endpoints:
        where = f"namespace {args.namespace!r}" if args.namespace else "the datastore"
        console.print(f"no workload endpoints in {where}", markup=False)
        return 0
    keys = [ep.key for ep in endpoints]
    table = Table(title=f"{args.protocol.upper()}"
                  + (f" port {args.port}" if args.port is not None else "")
                  + " (rows: from, columns: to)", show_lines=False)
    table.add_column("from \\ to", style="bold")
    for k in keys:
        table.add_column(k, justify="center")
    for src in keys:
        cells: list[Text] = []
        for dst in keys:
            if src == dst:
                cells.append(Text("-", style="dim"))
            elif result[src][dst]:
                cells.append(Text("Allow", style="green"))
            else:
                cells.append(Text("Deny", style="bold red"))
        table.add_row(src, *cells)
    console.print(table)
    allowed = sum(ok for row in result.values() for ok in row.values())
    total = sum(len(row) for row in result.values())
    console.print(f"{allowed} of {total} pairs allowed", markup=False)
    return 0
