"""Compile bpf/ipip.c into bpf/ipip.o (next to the source, gitignored).

    python -m tabby.dataplane.ipip.build [--force] [--output PATH]

Needs Debian's clang (the BPF target), libbpf-dev (bpf_helpers.h) and the kernel UAPI
headers (linux-libc-dev). `-g` is not optional: libbpf reads the map definitions from
the object's BTF. Rebuilds only when the source is newer than the object, unless --force.
At run time `TABBY_IPIP_BPF_OBJECT` may point at another object file.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from tabby.dataplane.ipip.paths import DEFAULT_OBJECT, SOURCE, object_path

__all__ = ["BuildError", "build", "compile_command", "main", "object_path", "up_to_date"]


class BuildError(RuntimeError):
    """The BPF object could not be built; the message says what is missing."""


def _multiarch_include() -> list[str]:
    # <linux/bpf.h> pulls in <asm/types.h>, which Debian keeps under the multiarch dir;
    # with -target bpf clang does not look there by itself.
    machine = platform.machine()
    triplet = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine)
    candidates = [Path(f"/usr/include/{triplet}")] if triplet else []
    return [f"-I{p}" for p in candidates if (p / "asm").is_dir()]


def compile_command(source: Path = SOURCE, output: Path = DEFAULT_OBJECT) -> list[str]:
    clang = shutil.which("clang") or "clang"
    return [
        clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
        *_multiarch_include(), "-c", str(source), "-o", str(output),
    ]


def up_to_date(output: Path = DEFAULT_OBJECT, source: Path = SOURCE) -> bool:
    return output.is_file() and output.stat().st_mtime >= source.stat().st_mtime


def build(output: Path | None = None, *, force: bool = False) -> Path:
    """Compile the object if it is missing or older than the source; return its path."""
    out = Path(output) if output is not None else DEFAULT_OBJECT
    if not force and up_to_date(out):
        return out
    if shutil.which("clang") is None:
        raise BuildError("clang not found: install Debian's clang, llvm and libbpf-dev")
    if not Path("/usr/include/bpf/bpf_helpers.h").is_file():
        raise BuildError("bpf/bpf_helpers.h not found: install Debian's libbpf-dev")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    proc = subprocess.run(
        compile_command(SOURCE, tmp), capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"clang failed on {SOURCE}: {proc.stderr.strip()[-2000:]}")
    os.replace(tmp, out)  # readers never see a half-written object
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--output", type=Path, default=None, help=f"default {DEFAULT_OBJECT}")
    args = ap.parse_args(argv)
    try:
        path = build(args.output, force=args.force)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
