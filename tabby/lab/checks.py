"""What a lab needs from the machine, checked before anything is made: one clear message
per problem, saying what to do."""

from __future__ import annotations

import os
import shutil
import subprocess

from tabby.lab.state import LabError

# Executables and the Debian packages that provide them.
BASE_TOOLS = {"ip": "iproute2", "nft": "nftables", "bird": "bird2", "birdc": "bird2"}
ETCD_TOOLS = {"etcd": "etcd-server"}


def missing_tools(datastore: str = "sqlite") -> dict[str, str]:
    """{executable: Debian package} of what is not on PATH."""
    tools = dict(BASE_TOOLS)
    if datastore == "etcd":
        tools.update(ETCD_TOOLS)
    # Debian puts bird and ip in /usr/sbin, which a non-login PATH may lack.
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return {exe: pkg for exe, pkg in tools.items() if shutil.which(exe, path=path) is None}


def check_system(datastore: str = "sqlite") -> None:
    """Raise LabError when not root or a system dependency is missing."""
    if os.geteuid() != 0:
        raise LabError(
            "the lab creates network namespaces and needs root: run it with sudo "
            "(`sudo make demo`, `sudo .venv/bin/tabby lab up`)"
        )
    missing = missing_tools(datastore)
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        raise LabError(
            f"missing {', '.join(sorted(missing))}: install the Debian packages with "
            f"`apt-get install {pkgs}` (or run `make setup`)"
        )
    ip = shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "ip"
    probe = subprocess.run([ip, "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise LabError(f"`ip netns` does not work here: {probe.stderr.strip()}")


def ipip_unsupported_reason(build: bool = True) -> str | None:
    """Why `--encap ipip*` cannot work on this machine, or None if it can.

    The agent uses the kernel's ipip module (tunl0) where it exists, and tc BPF programs
    where it does not (`tabby.dataplane.ipip`); those need their compiled object, which is
    built here when missing and `build` (clang, libbpf-dev)."""
    prefix = "--encap ipip: this kernel has no ipip module"
    try:
        from tabby.dataplane.ipip import kernel_support, paths
    except ImportError:
        return f"{prefix} and this build of the agent has no BPF IP-in-IP; use --encap vxlan"
    if kernel_support.detect() == "kernel" or paths.object_path().is_file():
        return None
    if not build:
        return f"{prefix} and the BPF object that replaces it is not built ({paths.object_path()})"
    from tabby.dataplane.ipip.build import BuildError
    from tabby.dataplane.ipip.build import build as build_object

    try:
        build_object(paths.object_path())
    except (BuildError, OSError) as exc:
        return (
            f"{prefix} and the BPF encapsulation that replaces it could not be built: {exc}; "
            "use --encap vxlan"
        )
    return None
