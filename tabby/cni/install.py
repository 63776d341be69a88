"""`tabby cni install`: put tabby-cni and tabby-ipam where runtimes look, and a .conflist.

When the C client is built (tabby/cni/client/, by `make setup`), tabby-cni and tabby-ipam
are that client, which hands each invocation to the node agent's CNI server
(tabby/cni/server.py), and the Python plugins go beside them as tabby-cni.py and
tabby-ipam.py for the client to exec when no agent serves. Without the client, the Python
plugins are installed under the plain names.

The Python plugins are small scripts whose shebang runs this installation's interpreter
with `-IS` (isolated, no `site`) and which put the project and its site-packages on sys.path
themselves. A runtime may exec a plugin with an almost empty environment (no PATH, no
VIRTUAL_ENV), and `site` with the editable-install hook costs ~20 ms per exec, a third of
the ADD budget. Every file is written atomically and only when its content changes, so the
command can run again at any time (as Calico's install-cni container does).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGINS = {"tabby-cni": "tabby.cni.plugin", "tabby-ipam": "tabby.cni.ipam_plugin"}
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
CONF_VERSION = "1.0.0"  # what older runtimes read; newer ones pick from cniVersions
CONF_VERSIONS = ["1.0.0", "1.1.0"]


@dataclass
class InstallResult:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def project_paths() -> list[str]:
    """Directories the wrapper needs on sys.path: the one holding the `tabby` package (an
    editable checkout or site-packages) and this interpreter's site-packages."""
    import tabby

    pkg_parent = str(Path(tabby.__file__).resolve().parent.parent)
    purelib = sysconfig.get_paths()["purelib"]
    out = [pkg_parent]
    if purelib != pkg_parent:
        out.append(purelib)
    return out


def wrapper_script(module: str, python: str | None = None, paths: list[str] | None = None) -> str:
    python = python or sys.executable
    paths = project_paths() if paths is None else paths
    if len(python) + 5 > 250 or " " in python:
        raise ValueError(f"python: interpreter path {python!r} cannot go in a #! line")
    return (
        f"#!{python} -IS\n"
        f"# Installed by `tabby cni install`: runs {module} (CNI plugin) from this Python.\n"
        "import sys\n"
        f"sys.path += {paths!r}\n"
        f"from {module} import main\n"
        "sys.exit(main())\n"
    )


def conflist(
    name: str,
    datastore: str,
    nodename: str | None = None,
    mtu: int = 1500,
    log_file: str | None = None,
    ipv6: bool = False,
) -> dict[str, Any]:
    plugin: dict[str, Any] = {"type": "tabby-cni", "datastore": datastore, "mtu": mtu}
    if nodename:
        plugin["nodename"] = nodename
    if log_file:
        plugin["log_file"] = log_file
        plugin["log_level"] = "info"
    plugin["ipam"] = {"type": "tabby-ipam", "assign_ipv4": True, "assign_ipv6": ipv6}
    # Runtimes pass `--ip` / `--mac` (podman, containerd) in runtimeConfig only to plugins
    # that declare these capabilities.
    plugin["capabilities"] = {"ips": True, "mac": True}
    return {
        "name": name,
        "cniVersion": CONF_VERSION,
        "cniVersions": CONF_VERSIONS,
        "plugins": [plugin],
    }


def _client_binary() -> bytes | None:
    """The built C client (`make setup` builds it), or None: then the Python plugins are
    installed under the plain names."""
    from tabby.cni.client.build import built

    path = built()
    return path.read_bytes() if path is not None else None


def _write_if_changed(path: Path, content: str | bytes, mode: int, result: InstallResult) -> None:
    data = content.encode() if isinstance(content, str) else content
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            result.unchanged.append(str(path))
            return
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)  # a runtime never sees a half-written plugin or config
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    result.written.append(str(path))


def check_network_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name or ""):
        raise ValueError(f"--name: invalid network name {name!r} (alphanumerics, '_', '.', '-')")
    return name


def install(
    *,
    bin_dir: str = DEFAULT_BIN_DIR,
    conf_dir: str = DEFAULT_CONF_DIR,
    datastore: str,
    name: str = "tabby",
    nodename: str | None = None,
    mtu: int = 1500,
    log_file: str | None = None,
    ipv6: bool = False,
    python: str | None = None,
    use_client: bool = True,
) -> InstallResult:
    check_network_name(name)
    if not 68 <= mtu <= 65535:
        raise ValueError(f"--mtu: {mtu} out of range 68-65535")
    result = InstallResult()
    client = _client_binary() if use_client else None
    for exe, module in PLUGINS.items():
        script = wrapper_script(module, python)
        if client is None:
            _write_if_changed(Path(bin_dir) / exe, script, 0o755, result)
            continue
        # The C client under the plugin's name; the Python plugin beside it is what the
        # client execs when no node agent serves this network namespace.
        _write_if_changed(Path(bin_dir) / f"{exe}.py", script, 0o755, result)
        _write_if_changed(Path(bin_dir) / exe, client, 0o755, result)
    conf = conflist(name, datastore, nodename, mtu, log_file, ipv6)
    text = json.dumps(conf, indent=2) + "\n"
    _write_if_changed(Path(conf_dir) / f"10-{name}.conflist", text, 0o644, result)
    return result
