"""The agent's HTTP endpoints: /liveness, /readiness, /status (JSON) and /metrics (text).

A small threaded HTTP server per port, bound to loopback by default (the node namespace's
own loopback when the agent runs inside it). Handlers only read snapshots the main loop
publishes, so a slow scrape never blocks the dataplane.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, dict[str, Any]]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class EndpointServer:
    """Serves `routes` {path: handler} where a handler returns (status, content type, body)."""

    def __init__(self, host: str, port: int,
                 routes: dict[str, Callable[[], tuple[int, str, bytes]]], name: str) -> None:
        self.routes = routes
        self.name = name
        server_routes = routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0].rstrip("/") or "/"
                handler = server_routes.get(path)
                if handler is None:
                    status, ctype = 404, "application/json"
                    body = json.dumps({"error": f"no such path {path!r}",
                                       "paths": sorted(server_routes)}).encode()
                else:
                    try:
                        status, ctype, body = handler()
                    except Exception as exc:  # report, never kill the server thread
                        log.exception("%s: handler for %s failed", name, path)
                        status, ctype = 500, "application/json"
                        body = json.dumps({"error": str(exc)}).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s: %s", name, format % args)

        try:
            self.httpd = _Server((host, port), Handler)
        except OSError as exc:
            raise OSError(f"{name}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=name, daemon=True)

    def start(self) -> EndpointServer:
        self._thread.start()
        log.info("%s listening on http://%s:%d", self.name, self.host, self.port)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


def _json(ok: bool, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return (200 if ok else 503), "application/json", json.dumps(body, sort_keys=True).encode()


def health_server(host: str, port: int, liveness: Probe, readiness: Probe,
                  status: Callable[[], dict[str, Any]]) -> EndpointServer:
    def live() -> tuple[int, str, bytes]:
        ok, body = liveness()
        return _json(ok, {"live": ok, **body})

    def ready() -> tuple[int, str, bytes]:
        ok, body = readiness()
        return _json(ok, {"ready": ok, **body})

    def full() -> tuple[int, str, bytes]:
        return _json(True, status())

    return EndpointServer(host, port, {"/liveness": live, "/readiness": ready,
                                       "/status": full}, "health")


def metrics_server(host: str, port: int, render: Callable[[], str]) -> EndpointServer:
    def metrics() -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", render().encode()

    return EndpointServer(host, port, {"/metrics": metrics}, "metrics")
