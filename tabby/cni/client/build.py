"""Compile tabby_cni_client.c into `tabby-cni-client` next to it (gitignored).

    python -m tabby.cni.client.build [--force]

`make setup` runs it. `tabby cni install` installs the client as tabby-cni / tabby-ipam when
it is built (and the Python plugins beside them as <name>.py, which the client execs when
no agent serves); without a C compiler the Python plugins are installed under the plain
names and everything works as before, only slower per exec.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("tabby_cni_client.c")
BINARY = Path(__file__).with_name("tabby-cni-client")


class BuildError(RuntimeError):
    """The client could not be built; the message says why."""


def built() -> Path | None:
    """The client binary when it exists and is not older than its source."""
    if BINARY.is_file() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    return None


def build(force: bool = False) -> Path:
    if not force and built() is not None:
        return BINARY
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise BuildError("no C compiler (cc, gcc or clang) found")
    tmp = BINARY.with_name(f".{BINARY.name}.{os.getpid()}")
    cmd = [cc, "-O2", "-Wall", "-Werror", "-o", str(tmp), str(SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-800:]}")
    os.replace(tmp, BINARY)
    return BINARY


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    try:
        print(build(force=args.force))
    except BuildError as exc:
        print(f"tabby-cni client: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
