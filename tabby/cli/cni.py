"""`tabby cni install`: install the CNI plugins and a network configuration list."""

from __future__ import annotations

import argparse
import os

from tabby.cli.common import CLIError, console, datastore_parent


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cni = sub.add_parser("cni", help="CNI plugin installation")
    cni_sub = cni.add_subparsers(dest="cni_command", metavar="SUBCOMMAND")
    p = cni_sub.add_parser(
        "install",
        parents=[datastore_parent()],
        help="install tabby-cni and tabby-ipam and write a .conflist",
        description="Install the tabby-cni and tabby-ipam executables into --bin-dir and "
        "write <conf-dir>/10-<name>.conflist, as Calico's install-cni does. Safe to re-run: "
        "files are replaced atomically and only when they change.",
    )
    p.add_argument("--bin-dir", default="/opt/cni/bin", help="where runtimes look for plugins")
    p.add_argument("--conf-dir", default="/etc/cni/net.d", help="where runtimes read networks")
    p.add_argument("--nodename", help="node name for endpoints and IPAM (default: host name)")
    p.add_argument("--mtu", type=int, default=1500, help="MTU of both veth ends (default 1500)")
    p.add_argument("--name", default="tabby", help="network name (default tabby)")
    p.add_argument("--log-file", help="plugin log file (default: no log)")
    p.add_argument("--ipv6", action="store_true", help="also assign an IPv6 address")
    p.set_defaults(func=run_install)
    cni.set_defaults(func=lambda args: cni.print_help() or 1)


def run_install(args: argparse.Namespace) -> int:
    from tabby.cni.install import install
    from tabby.datastore.url import ENV_VAR, default_url, parse_url

    # The plugin runs with the runtime's environment, not ours: write the URL down.
    url = getattr(args, "datastore", None) or os.environ.get(ENV_VAR) or default_url()
    try:
        parse_url(url)
        result = install(
            bin_dir=args.bin_dir,
            conf_dir=args.conf_dir,
            datastore=url,
            name=args.name,
            nodename=args.nodename,
            mtu=args.mtu,
            log_file=args.log_file,
            ipv6=args.ipv6,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot install: {exc}") from None
    for path in result.written:
        console.print(f"wrote {path}", markup=False, highlight=False)
    for path in result.unchanged:
        console.print(f"unchanged {path}", markup=False, highlight=False)
    return 0
