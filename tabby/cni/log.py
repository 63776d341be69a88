"""A few lines per invocation to an optional log file (`log_file`, `log_level` in the config).

Not the `logging` package: it costs several milliseconds to import on every container ADD,
and the plugin writes at most a handful of lines. stdout belongs to the CNI result and
stderr to the runtime's own log, so without `log_file` nothing is written at all.
"""

from __future__ import annotations

import os
import time

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Log:
    def __init__(self, path: str | None = None, level: str = "info", context: str = "") -> None:
        self.path = path
        self.level = LEVELS.get(level, 20)
        self.context = context
        self.start = time.monotonic()

    def _write(self, level: str, msg: str) -> None:
        if not self.path or LEVELS[level] < self.level:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        ms = (time.monotonic() - self.start) * 1000
        line = f"{stamp}Z {level.upper()} [{os.getpid()}] {self.context}{msg} (+{ms:.0f} ms)\n"
        try:
            with open(self.path, "a") as f:
                f.write(line)
        except OSError:
            pass  # logging must never fail an ADD

    def debug(self, msg: str) -> None:
        self._write("debug", msg)

    def info(self, msg: str) -> None:
        self._write("info", msg)

    def warning(self, msg: str) -> None:
        self._write("warning", msg)

    def error(self, msg: str) -> None:
        self._write("error", msg)
