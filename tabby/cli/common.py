"""What every verb group shares: datastore opening, errors, output formats."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from rich.console import Console

# A pipe gets whole table rows, not rows cut to 80 columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 400)
err_console = Console(stderr=True, soft_wrap=True)


class CLIError(Exception):
    """A one-line, user-facing failure. code 1 = bad input/conflict, 2 = datastore unreachable."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_output_flag(parser: argparse.ArgumentParser, choices: tuple[str, ...], default: str) -> None:
    parser.add_argument("-o", "--output", choices=choices, default=default, help="output format")


def print_data(data: Any, fmt: str) -> None:
    """Machine output: exact JSON or YAML on stdout."""
    if fmt == "json":
        print(json.dumps(data, indent=2, sort_keys=False))
    elif fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())
    else:
        raise ValueError(f"unknown output format {fmt!r}")


@contextmanager
def open_client(args: argparse.Namespace) -> Iterator[Any]:
    """Open the datastore named by --datastore / TABBY_DATASTORE as a ResourceClient."""
    from tabby.datastore import Unavailable, open_datastore
    from tabby.datastore.client import ResourceClient

    try:
        ds = open_datastore(getattr(args, "datastore", None))
    except ValueError as exc:
        raise CLIError(f"--datastore: {exc}") from None
    except Unavailable as exc:
        raise CLIError(f"datastore unreachable: {exc}", code=2) from None
    try:
        yield ResourceClient(ds)
    except Unavailable as exc:
        raise CLIError(f"datastore unreachable: {exc}", code=2) from None
    finally:
        ds.close()


def datastore_parent() -> argparse.ArgumentParser:
    """A parent parser so `--datastore` also works after the verb (`tabby get ippool --datastore ...`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--datastore", metavar="URL", default=argparse.SUPPRESS,
                        help="datastore URL (overrides $TABBY_DATASTORE)")
    return parent
