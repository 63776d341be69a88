"""Delegation to another IPAM plugin, as the spec describes it: find the executable named by
`ipam.type` in CNI_PATH, run it with our environment and our stdin, read its result."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from tabby.cni import spec
from tabby.cni.spec import CNIError


def find_plugin(name: str, path: list[str]) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise CNIError(spec.ERR_INVALID_CONFIG, f"ipam.type: invalid plugin name {name!r}")
    for d in path:
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(
        spec.ERR_INVALID_CONFIG,
        f"ipam.type: plugin {name!r} not found in CNI_PATH ({':'.join(path) or 'empty'})",
    )


def delegate(
    plugin: str, command: str, conf: dict[str, Any], env: spec.Env
) -> dict[str, Any] | None:
    """Run `plugin` for `command`; its result (ADD) or None. Its error becomes ours."""
    exe = find_plugin(plugin, env.path)
    child_env = {**os.environ, **env.environ}  # the runtime's CNI_* (also when served)
    child_env["CNI_COMMAND"] = command
    try:
        proc = subprocess.run(
            [exe],
            input=json.dumps(conf).encode(),
            capture_output=True,
            env=child_env,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CNIError(spec.ERR_IO, f"ipam plugin {plugin}: {exc}") from None
    out = proc.stdout.strip()
    parsed: Any = None
    if out:
        try:
            parsed = json.loads(out)
        except ValueError:
            raise CNIError(
                spec.ERR_DECODE, f"ipam plugin {plugin}: {command} printed invalid JSON"
            ) from None
    if proc.returncode != 0:
        if isinstance(parsed, dict) and "code" in parsed:
            raise CNIError(
                int(parsed.get("code") or spec.ERR_INTERNAL),
                f"ipam plugin {plugin}: {parsed.get('msg', '')}",
                str(parsed.get("details", "")),
            )
        err = proc.stderr.decode(errors="replace").strip()
        raise CNIError(
            spec.ERR_INTERNAL, f"ipam plugin {plugin}: {command} failed (exit {proc.returncode})",
            err[-2000:],
        )
    return parsed if isinstance(parsed, dict) else None
