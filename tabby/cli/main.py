"""The `tabby` command: calicoctl's verbs, one module per verb group."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from tabby.cli.common import CLIError, err_console

# Each module exposes register(subparsers) and sets `func` on its parsers; func(args) -> int.
VERB_MODULES = (
    "tabby.cli.resources",
    "tabby.cli.policy",
    "tabby.cli.ipam",
    "tabby.cli.cni",
    "tabby.cli.node",
    "tabby.cli.typha",
    "tabby.cli.lab",
)


class OneLineParser(argparse.ArgumentParser):
    """Flag errors as one line and exit 1 (bad input), keeping exit 2 for "unreachable"."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="tabby", description="Calico-style networking and network policy."
    )
    parser.add_argument(
        "--datastore",
        metavar="URL",
        help="sqlite:///path/tabby.db or etcd://host:port[,host:port] "
        "(default: $TABBY_DATASTORE, else a per-user sqlite file)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # verb group not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.code
    except BrokenPipeError:  # `tabby get ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
