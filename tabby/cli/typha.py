"""`tabby typha`: one datastore watch fanned out to many agents (Calico's Typha)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from tabby.cli.common import CLIError, datastore_parent

if TYPE_CHECKING:
    from tabby.typha.server import ServerConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "typha",
        parents=[datastore_parent()],
        help="run Typha: serve the datastore's state to many agents from one watch",
        description="Follow the datastore with one syncer and serve a snapshot, then every "
        "change, to agents started with `tabby node run --typha HOST:PORT`. Runs until "
        "SIGTERM/SIGINT.",
    )
    p.add_argument("--listen", default="0.0.0.0:5473", metavar="HOST:PORT",
                   help="address for agents (default 0.0.0.0:5473; [addr]:port for IPv6)")
    p.add_argument("--health-host", default="127.0.0.1", help="address of the health port")
    p.add_argument("--health-port", type=int, default=9098, metavar="N",
                   help="/liveness and /readiness on this port (default 9098; 0 = off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics port")
    p.add_argument("--metrics-port", type=int, default=0, metavar="N",
                   help="Prometheus /metrics on this port (default 0 = off; may equal "
                        "--health-port)")
    p.add_argument("--max-conns", type=int, default=1000, metavar="N",
                   help="connection limit; new connections over it are refused (default 1000)")
    p.add_argument("--server-name", help="name reported to clients (default: host name)")
    tls = p.add_argument_group("TLS (all of cert, key and CA, plus a client identity)")
    tls.add_argument("--tls-cert", metavar="PEM", help="server certificate")
    tls.add_argument("--tls-key", metavar="PEM", help="server private key")
    tls.add_argument("--tls-ca", metavar="PEM", help="CA that signs the clients' certificates")
    tls.add_argument("--client-cn", metavar="CN", help="required client certificate Common Name")
    tls.add_argument("--client-uri-san", metavar="URI",
                     help="required client certificate URI SAN (either this or the CN matches)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="log level (default info)")
    p.set_defaults(func=run)


def parse_listen(text: str) -> tuple[str, int]:
    """"HOST:PORT", ":PORT" or "[addr]:PORT" -> (host, port); errors name --listen."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise CLIError(f"--listen: bad address {text!r} (expected [addr]:port)")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise CLIError(f"--listen: bad address {text!r} (expected HOST:PORT)")
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise CLIError(f"--listen: bad port {port_text!r} in {text!r}")
    return host or "0.0.0.0", int(port_text)


def _check_port(name: str, value: int) -> None:
    if not 0 <= value < 65536:
        raise CLIError(f"{name}: bad port {value} (0-65535)")


def build_config(args: argparse.Namespace) -> ServerConfig:
    from tabby.typha.server import ServerConfig
    from tabby.typha.tls import PeerIdentity, TLSConfigError, check_tls_options, server_context

    host, port = parse_listen(args.listen)
    _check_port("--health-port", args.health_port)
    _check_port("--metrics-port", args.metrics_port)
    if args.max_conns < 0:
        raise CLIError(f"--max-conns: must be >= 0, got {args.max_conns}")
    identity = PeerIdentity(args.client_cn or None, args.client_uri_san or None)
    try:
        tls = check_tls_options(args.tls_cert, args.tls_key, args.tls_ca, identity, "typha")
        if tls and not identity.configured:
            raise TLSConfigError("typha: TLS needs --client-cn or --client-uri-san "
                                 "(which clients may connect)")
        ctx = server_context(args.tls_cert, args.tls_key, args.tls_ca) if tls else None
    except TLSConfigError as exc:
        raise CLIError(str(exc)) from None
    cfg = ServerConfig(host=host, port=port, max_conns=args.max_conns, ssl_context=ctx,
                       client_identity=identity)
    if args.server_name:
        cfg.server_name = args.server_name
    return cfg


def run(args: argparse.Namespace) -> int:
    from tabby.datastore import open_datastore
    from tabby.datastore.url import ENV_VAR, default_url, parse_url
    from tabby.typha.daemon import TyphaDaemon

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = getattr(args, "datastore", None) or os.environ.get(ENV_VAR) or default_url()
    try:
        parse_url(url)
    except ValueError as exc:
        raise CLIError(f"--datastore: {exc}") from None
    config = build_config(args)
    daemon = TyphaDaemon(
        lambda: open_datastore(url),
        config,
        health_host=args.health_host,
        health_port=args.health_port or None,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port or None,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await daemon.serve_forever(stop)

    try:
        asyncio.run(main())
    except OSError as exc:  # e.g. the port is taken
        raise CLIError(f"typha: cannot listen: {exc}") from None
    # An unreachable datastore is not fatal: the syncer retries, and Typha reports not ready.
    return 0
