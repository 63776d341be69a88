"""Health and Prometheus metrics over a tiny HTTP/1.0 server on the event loop.

Hand-written on purpose: three GET routes, `Connection: close`, no keep-alive, no client
library. Metrics are rendered in the Prometheus text exposition format (version 0.0.4).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Labels = Mapping[str, str]
Route = Callable[[], tuple[int, str, bytes]]  # () -> (status, content type, body)

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


@dataclass(slots=True)
class MetricFamily:
    name: str
    type: str  # counter | gauge
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


def render_metrics(families: Iterable[MetricFamily]) -> bytes:
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            if labels:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
                lines.append(f"{fam.name}{{{text}}} {_fmt_value(value)}")
            else:
                lines.append(f"{fam.name} {_fmt_value(value)}")
    return ("\n".join(lines) + "\n").encode()


def text_route(check: Callable[[], tuple[bool, str]]) -> Route:
    """A health route: 200 with the detail when check() is true, else 503."""

    def route() -> tuple[int, str, bytes]:
        ok, detail = check()
        return (200 if ok else 503), "text/plain; charset=utf-8", (detail + "\n").encode()

    return route


class HttpEndpoint:
    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        self.host = host
        self.port = port
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                request = await reader.readline()
                while True:  # skip headers up to the blank line
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                status, ctype, body = 405, "text/plain", b"bad request\n"
            elif parts[0] not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            else:
                route = self.routes.get(parts[1].split("?", 1)[0])
                if route is None:
                    status, ctype, body = 404, "text/plain", b"not found\n"
                else:
                    status, ctype, body = route()
            length = len(body)
            if parts and parts[0] == "HEAD":
                body = b""
            head = (
                f"HTTP/1.0 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug in a route must not take the endpoint down
            log.exception("http endpoint: request failed")
        finally:
            writer.close()
