"""The frame every Tabby CNI executable runs in (the role of libcni's `skel`).

Read stdin, validate the CNI_* environment, answer VERSION, parse the configuration, call
the command handler, print its result converted to the requested spec version; any failure
becomes the spec's error result on stdout with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import sys

from tabby.cni import spec
from tabby.cni.spec import CNIError

# `typing` costs ~3 ms per plugin exec; annotations are strings (PEP 563), so it is
# needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Handler = Callable[[spec.Env, dict[str, Any]], dict[str, Any] | None]


def _declared_version(data: bytes) -> str:
    """The config's cniVersion for error results, when it is one we speak."""
    try:
        v = json.loads(data).get("cniVersion")
    except (ValueError, AttributeError):
        return spec.LATEST
    return v if v in spec.SUPPORTED_VERSIONS else spec.LATEST


def run(handler: Handler, environ: dict[str, str] | None = None, data: bytes | None = None,
        out: Any = None) -> int:
    """One invocation: `environ` and `data` default to this process's environment and stdin,
    `out` to stdout (the node agent's CNI server passes the client's)."""
    version = spec.LATEST
    try:
        if data is None:
            data = b""
            command = (environ if environ is not None else os.environ).get("CNI_COMMAND")
            if command != "VERSION" or not sys.stdin.isatty():
                data = spec.read_stdin()
        version = _declared_version(data)
        env = spec.Env(environ)
        if env.command == "VERSION":
            spec.emit(spec.version_result(version if data.strip() else None), out)
            return 0
        conf = spec.load_config(data, env.command)
        version = conf["cniVersion"]
        result = handler(env, conf)
        if result is not None:
            spec.emit(spec.convert_result(result, version), out)
        return 0
    except CNIError as exc:
        spec.emit(exc.to_result(version), out)
        return 1
    except Exception as exc:  # noqa: BLE001 - the runtime must get a spec error, not a traceback
        import traceback

        details = "".join(traceback.format_exception(exc)).strip()[-2000:]
        err = CNIError(spec.ERR_INTERNAL, f"internal error: {type(exc).__name__}: {exc}", details)
        spec.emit(err.to_result(version), out)
        return 1


def run_and_exit(handler: Handler) -> int:
    """run(), then leave at once: the result is out, every write is committed and the
    commands have closed their datastore, so the interpreter's teardown (module and object
    cleanup) is work for nothing. The close itself is deliberate: the last connection to
    close checkpoints and removes the sqlite WAL; leaving it to grow (~75 KB per ADD) makes
    every later exec that finds no other connection open rebuild the WAL index from it
    (~0.6 ms of CPU per MB, measured), more than the checkpoint costs."""
    code = run(handler)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
