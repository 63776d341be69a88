"""`tabby node run` (the per-host agent) and `tabby node status` (agent + BGP sessions)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from typing import Any

from tabby.cli.common import CLIError, console, datastore_parent

IPIP_CHOICES = ("auto", "kernel", "bpf", "off")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} out of range 0-65535")
    return port


def _as_number(text: str) -> int:
    """"64512" or asdot "1.10" -> the AS number."""
    try:
        if "." in text:
            high, low = (int(x) for x in text.split("."))
            if not (0 <= high <= 65535 and 0 <= low <= 65535):
                raise ValueError
            value = high << 16 | low
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid AS number {text!r}") from None
    if not 1 <= value <= 4294967295:
        raise argparse.ArgumentTypeError(f"AS number {text!r} out of range 1-4294967295")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0 < value < 1e6:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r} seconds: must be more than 0")
    return value


TYPHA_TLS_FLAGS = ("--typha-cert", "--typha-key", "--typha-ca", "--typha-cn",
                   "--typha-uri-san")


def typha_options(args: argparse.Namespace) -> dict[str, Any]:
    """--typha and its options, checked before the agent starts: AgentConfig fields, or a
    CLIError naming the flag (Felix's rule: TLS needs cert, key and CA, and a CN or URI SAN
    to check Typha's identity against)."""
    tls: dict[str, str] = {flag: getattr(args, flag[2:].replace("-", "_"), None) or ""
                           for flag in TYPHA_TLS_FLAGS}
    if not args.typha:
        given = [flag for flag, value in tls.items() if value]
        if args.typha_fallback is not None:
            given.insert(0, "--typha-fallback")
        if given:
            raise CLIError(f"{given[0]}: only meaningful with --typha")
        return {}
    from tabby.typha import PeerIdentity, client_context, parse_addresses
    from tabby.typha.tls import TLSConfigError

    try:
        parse_addresses(args.typha)
    except ValueError as exc:
        raise CLIError(str(exc) if str(exc).startswith("--typha") else f"--typha: {exc}") \
            from None
    out: dict[str, Any] = {"typha": args.typha, "typha_fallback": args.typha_fallback}
    if not any(tls.values()):
        return out
    files = ("--typha-cert", "--typha-key", "--typha-ca")
    missing = [flag for flag in files if not tls[flag]]
    if missing:
        raise CLIError(f"{missing[0]}: Typha TLS needs {', '.join(files)} together")
    identity = PeerIdentity(tls["--typha-cn"] or None, tls["--typha-uri-san"] or None)
    if not identity.configured:
        raise CLIError("--typha-cn: Typha TLS needs --typha-cn or --typha-uri-san (which "
                       "server to trust)")
    try:
        ctx = client_context(tls["--typha-cert"], tls["--typha-key"], tls["--typha-ca"])
    except TLSConfigError as exc:  # its text names the shared --tls-* spelling
        raise CLIError(str(exc).replace("--tls-", "--typha-")) from None
    out.update(typha_ssl_context=ctx, typha_identity=identity)
    return out


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    node = sub.add_parser("node", help="the per-host agent and its status")
    node_sub = node.add_subparsers(dest="node_command", metavar="SUBCOMMAND")

    run = node_sub.add_parser(
        "run",
        parents=[datastore_parent()],
        help="run the node agent (policy, routes, VXLAN, BGP) on this host",
        description="Run the node agent in this host's network namespace: register the "
        "Node, follow the datastore, program nftables, routes and the VXLAN tunnel, run "
        "BIRD. Runs until SIGTERM/SIGINT, which leave the dataplane as programmed.",
    )
    run.add_argument("--name", default=None, help="node name (default: the host name)")
    run.add_argument("--health-host", default="127.0.0.1", help="health address (127.0.0.1)")
    run.add_argument("--health-port", type=_port, default=9099, metavar="N",
                     help="/liveness, /readiness and /status (default 9099; 0 = off)")
    run.add_argument("--metrics-host", default="127.0.0.1", help="metrics address (127.0.0.1)")
    run.add_argument("--metrics-port", type=_port, default=9091, metavar="N",
                     help="Prometheus /metrics (default 9091; 0 = off)")
    run.add_argument("--underlay-if", metavar="IF",
                     help="interface other nodes reach this one on (default: the one holding "
                          "the IPv4 default route)")
    run.add_argument("--bgp", action=argparse.BooleanOptionalAction, default=None,
                     help="run BIRD for BGP routes (default: on when bird is installed)")
    run.add_argument("--run-dir", help="BIRD's files (default /run/tabby/<node>)")
    run.add_argument("--typha", metavar="HOST:PORT[,...]",
                     help="follow the datastore through Typha instead of directly")
    typha = run.add_argument_group(
        "Typha", "fallback, and TLS (cert, key and CA together, plus a CN or URI SAN)")
    typha.add_argument("--typha-fallback", type=_seconds, metavar="SECONDS",
                       help="with no Typha for this long, follow the datastore directly "
                            "(and keep trying Typha); default: never")
    typha.add_argument("--typha-cert", metavar="PEM", help="this agent's client certificate")
    typha.add_argument("--typha-key", metavar="PEM", help="its private key")
    typha.add_argument("--typha-ca", metavar="PEM", help="CA that signs Typha's certificate")
    typha.add_argument("--typha-cn", metavar="CN",
                       help="Common Name Typha's certificate must have")
    typha.add_argument("--typha-uri-san", metavar="URI",
                       help="URI SAN Typha's certificate must have (either this or the CN)")
    run.add_argument("--as-number", type=_as_number, metavar="ASN",
                     help="this node's AS number (spec.bgp.asNumber; default: the cluster's)")
    run.add_argument("--ipip", choices=IPIP_CHOICES, default="auto",
                     help="IP-in-IP implementation (default auto: kernel module, else BPF)")
    run.add_argument("--allow-host-netns", action="store_true",
                     help="allow running in the machine's initial network namespace (a real "
                          "host); refused by default so a lab agent never touches the host")
    run.add_argument("--ip6", choices=("none", "autodetect"), default="none",
                     help="as calico/node's IP6: autodetect registers the underlay's first "
                          "global IPv6 address as the Node's bgp.ipv6Address (default none)")
    run.add_argument("--cni-server", action=argparse.BooleanOptionalAction, default=True,
                     help="serve tabby-cni invocations of this network namespace in-process "
                          "(the installed client falls back to the Python plugin without it)")
    run.add_argument("--stop-bgp-on-exit", action="store_true",
                     help="on exit, stop BIRD and withdraw routes (default: leave it running)")
    run.add_argument("--log-level", default="info",
                     choices=("debug", "info", "warning", "error"), help="log level (info)")
    run.set_defaults(func=run_agent)

    status = node_sub.add_parser(
        "status",
        help="this node's agent health and BGP sessions (like calicoctl node status)",
        description="Ask the local agent (its /status on --health-port) and BIRD (its control "
        "socket) how things are. Run it where the agent runs (ip netns exec NS ...).",
    )
    status.add_argument("--name", default=None, help="node name (default: the host name)")
    status.add_argument("--run-dir", help="BIRD's run directory (default /run/tabby/<node>)")
    status.add_argument("--health-port", type=_port, default=9099, metavar="N",
                        help="the agent's health port (default 9099)")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="output format")
    status.set_defaults(func=run_status)
    node.set_defaults(func=lambda args: node.print_help() or 1)


def _node_name(args: argparse.Namespace) -> str:
    name = args.name or socket.gethostname()
    from tabby.resources import kind_info

    why = kind_info("Node").cls.name_problem(name)
    if why:
        raise CLIError(f"--name: {why}")
    return name


def run_agent(args: argparse.Namespace) -> int:
    from tabby.agent.agent import Agent, AgentConfig, AgentError
    from tabby.agent.logs import setup_logging
    from tabby.datastore.url import ENV_VAR, default_url, parse_url

    name = _node_name(args)
    url = getattr(args, "datastore", None) or os.environ.get(ENV_VAR) or default_url()
    try:
        parse_url(url)
    except ValueError as exc:
        raise CLIError(f"--datastore: {exc}") from None
    typha = typha_options(args)
    setup_logging(args.log_level, node=name)
    cfg = AgentConfig(
        node_name=name, datastore_url=url, health_host=args.health_host,
        health_port=args.health_port, metrics_host=args.metrics_host,
        metrics_port=args.metrics_port, underlay_if=args.underlay_if, bgp=args.bgp,
        run_dir=args.run_dir, as_number=args.as_number, ipip=args.ipip,
        allow_host_netns=args.allow_host_netns, stop_bgp_on_exit=args.stop_bgp_on_exit,
        cni_server=args.cni_server, ip6=args.ip6, **typha,
    )
    agent = Agent(cfg)

    def on_signal(signum: int, _frame: object) -> None:
        agent.request_stop()  # no locks in a signal handler

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return agent.run()
    except AgentError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:  # e.g. the health port is taken
        raise CLIError(str(exc)) from None


def _agent_status(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=3) as resp:
            data = json.loads(resp.read())
            return data if isinstance(data, dict) else {"error": "unexpected answer"}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"error": f"agent not reachable on 127.0.0.1:{port}: {reason}"}


def run_status(args: argparse.Namespace) -> int:
    name = _node_name(args)
    agent = _agent_status(args.health_port)
    try:
        from tabby.bgp.status import collect_status, default_socket, print_status, status_json
    except ImportError:
        bgp = None
    else:
        # The agent knows where its BIRD listens (the lab gives each node its own run dir).
        agent_sock = (agent.get("bgp") or {}).get("socket")
        sock = (os.path.join(args.run_dir, "bird.ctl") if args.run_dir
                else agent_sock or default_socket(name))
        bgp = collect_status(sock)
    if args.output == "json":
        out: dict[str, Any] = status_json(bgp) if bgp is not None else {}
        out["agent"] = agent
        print(json.dumps(out, indent=2))
        return 0 if not agent.get("error") else 3
    if agent.get("error"):
        console.print(f"Tabby agent: {agent['error']}", markup=False, highlight=False)
    else:
        state = "ready" if agent.get("ready") else "NOT ready"
        console.print(f"Tabby agent on {agent.get('node')} is running and {state}.",
                      markup=False, highlight=False)
        for reason in agent.get("reasons") or []:
            console.print(f"  - {reason}", markup=False, highlight=False)
        for dp, st in sorted((agent.get("dataplanes") or {}).items()):
            problems = st.get("problems") or {}
            line = f"  {dp}: {st.get('applies', 0)} applies"
            if st.get("implementation"):  # IP-in-IP: kernel tunl0 or the BPF programs
                stats = st.get("stats") or {}
                line += (f", implementation {st['implementation']}"
                         f" ({'active' if stats.get('active') else 'idle'})")
            if st.get("failing"):
                line += f", FAILING: {st.get('last_error')}"
            if problems:
                line += f", {len(problems)} problem(s)"
            console.print(line, markup=False, highlight=False)
            for what, why in sorted(problems.items())[:10]:
                console.print(f"      {what}: {why}", markup=False, highlight=False)
    if bgp is not None:
        sys.stdout.flush()
        print()
        print_status(bgp)
    return 0 if not agent.get("error") else 3
