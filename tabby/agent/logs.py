"""Structured logs: one line per record, `key=value` pairs after the message.

    log.info("dataplane applied", extra=ctx(dataplane="nft", mode="delta", seconds=0.004))
    -> 2024-05-01T10:00:00.123Z level=info logger=tabby.agent msg="dataplane applied"
       node=n1 dataplane=nft mode=delta seconds=0.004

Fields given once to `setup_logging(node=...)` appear on every line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error", "critical")


def ctx(**fields: Any) -> dict[str, Any]:
    """`extra=` argument carrying key=value context for one record."""
    return {"ctx": fields}


def _value(v: Any) -> str:
    if isinstance(v, float):
        text = f"{v:.6g}"
    else:
        text = str(v)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KVFormatter(logging.Formatter):
    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            self.formatTime(record),
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_value(record.getMessage())}",
        ]
        fields = {**self.static, **(getattr(record, "ctx", None) or {})}
        parts.extend(f"{k}={_value(v)}" for k, v in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", stream: TextIO | None = None, **static: Any) -> None:
    """Configure the root logger for a daemon: structured lines on stderr."""
    if level.lower() not in LEVELS:
        raise ValueError(f"--log-level: unknown level {level!r} (use {', '.join(LEVELS)})")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KVFormatter(static))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pyroute2 is chatty at debug level and its warnings are ours to report.
    logging.getLogger("pyroute2").setLevel(max(logging.WARNING, root.level))
