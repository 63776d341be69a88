"""A client for BIRD's control socket (what `birdc` speaks), without spawning birdc.

The protocol is line based: BIRD greets with `0001 BIRD x.y ready.`; every reply line is a
4-digit code followed by `-` (more lines follow) or ` ` (last line), or a continuation line
that starts with a space and belongs to the previous code. Codes 0xxx end a command
successfully, 8xxx/9xxx are errors (e.g. `8002` parse error, `9001` syntax error).
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path


class BirdControlError(RuntimeError):
    """The socket could not be reached, or BIRD answered with an error code."""


@dataclass(frozen=True)
class Reply:
    code: int
    text: str


def _code(line: str) -> tuple[int, str, bool] | None:
    """(code, text, last) for a coded line, None for a continuation line."""
    if len(line) >= 5 and line[:4].isdigit() and line[4] in "- ":
        return int(line[:4]), line[5:], line[4] == " "
    if len(line) == 4 and line.isdigit():  # a final line whose trailing space was lost
        return int(line), "", True
    return None


def command(socket_path: str | Path, cmd: str, timeout: float = 10.0) -> list[Reply]:
    """Run one CLI command (e.g. "show protocols all") and return its reply lines.

    Raises BirdControlError when the socket is absent or refuses, on a timeout, and when
    the final code is an error (8xxx/9xxx): the message is BIRD's own text."""
    path = str(socket_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise BirdControlError(f"BIRD control socket {path}: {exc.strerror or exc}") from None
        stream = sock.makefile("rb")
        try:
            greeting = stream.readline().decode(errors="replace")
            if not greeting.startswith("0001"):
                raise BirdControlError(f"BIRD control socket {path}: unexpected {greeting!r}")
            sock.sendall(cmd.encode() + b"\n")
            replies: list[Reply] = []
            code = 0
            while True:
                raw = stream.readline()
                if not raw:
                    raise BirdControlError(f"BIRD control socket {path}: closed mid-reply")
                line = raw.decode(errors="replace").rstrip("\n")
                parsed = _code(line)
                if parsed is None:
                    replies.append(Reply(code, line[1:] if line.startswith(" ") else line))
                    continue
                code, text, last = parsed
                replies.append(Reply(code, text))
                if last:
                    break
        except TimeoutError:
            raise BirdControlError(f"BIRD control socket {path}: no answer to {cmd!r}") from None
        except OSError as exc:  # BIRD died mid-command (reset, broken pipe)
            raise BirdControlError(f"BIRD control socket {path}: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                stream.close()
    finally:
        sock.close()
    if code >= 8000:
        msg = "; ".join(r.text.strip() for r in replies if r.code >= 8000 and r.text.strip())
        raise BirdControlError(f"BIRD: {cmd}: {msg or f'error {code}'}")
    return replies


def text(replies: list[Reply]) -> str:
    return "\n".join(r.text for r in replies)
