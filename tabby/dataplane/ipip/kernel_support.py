"""Which IP-in-IP implementation this kernel supports: "kernel" (the ipip module, tunl0)
or "bpf" (tc programs, no module needed).

The checks read files only, so `detect()` changes nothing: the module is loaded (or built
in) if /sys/module/ipip exists, or loadable if modules.dep / modules.builtin of the
running kernel lists ipip.ko. `probe_netns=True` adds the definitive test: create an
ipip link in a throwaway namespace. That may load the module, which also creates tunl0
in every namespace (the root one included), so it is opt-in.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

IMPLEMENTATIONS = ("kernel", "bpf")
SYS_MODULE = Path("/sys/module/ipip")


def module_loaded(sys_module: Path | None = None) -> bool:
    return (sys_module or SYS_MODULE).exists()


def module_available(modules_dir: Path | None = None) -> bool:
    """ipip.ko is listed for the running kernel (loadable on demand, or built in)."""
    base = modules_dir or Path("/lib/modules") / os.uname().release
    for name in ("modules.builtin", "modules.dep"):
        try:
            text = (base / name).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            path = line.split(":", 1)[0]
            if path.rsplit("/", 1)[-1].startswith("ipip.ko"):
                return True
    return False


def probe_in_netns() -> bool:
    """Try `ip link add type ipip` in a throwaway namespace (removed again)."""
    ns = f"tabby-ipipprobe-{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return False
    try:
        proc = subprocess.run(
            ["ip", "-n", ns, "link", "add", "tbprobe0", "type", "ipip", "remote", "any"],
            capture_output=True,
            timeout=10,
        )
        return proc.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def detect(*, probe_netns: bool = False) -> str:
    """"kernel" if the ipip module is there (or can be loaded), else "bpf"."""
    if module_loaded() or module_available():
        return "kernel"
    if probe_netns and probe_in_netns():
        return "kernel"
    return "bpf"


def why_no_kernel() -> str:
    """A one-line reason the kernel path cannot be used here (for skips and errors)."""
    return (
        f"the running kernel ({os.uname().release}) has no ipip module "
        f"({SYS_MODULE} absent, ipip.ko not in /lib/modules/{os.uname().release})"
    )
