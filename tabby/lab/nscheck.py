"""HTTP GETs to loopback ports inside many namespaces from one short-lived process.

    python -I -S nscheck.py NS:PORT:PATH [NS:PORT:PATH ...]   ->  JSON list on stdout

Each agent serves its health on 127.0.0.1 of its own node namespace. Rather than one
`ip netns exec` per node per poll, this process creates one socket inside each namespace
(setns(2) on its only thread, then back: a socket keeps the namespace it was created in),
then does all the requests in parallel. Result per target: {"status": 200, "body": "..."}
or {"status": null, "error": "..."}. Standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
TIMEOUT = 1.0


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _socket_in(netns: str, own: int) -> socket.socket:
    if "/" in netns or netns in ("", ".", ".."):
        raise ValueError(f"invalid namespace name {netns!r}")
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(fd)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(own)
    finally:
        os.close(fd)


def _get(sock: socket.socket, port: int, path: str, out: dict[str, object]) -> None:
    try:
        with sock:
            sock.settimeout(TIMEOUT)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            data = b""
            while len(data) < 1 << 20:
                chunk = sock.recv(8192)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/") else b""
        out["status"] = int(status) if status.isdigit() else None
        out["body"] = body.decode(errors="replace")
    except OSError as exc:
        out["status"] = None
        out["error"] = f"{type(exc).__name__}: {exc}"


def main(argv: list[str]) -> int:
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    results: list[dict[str, object]] = []
    threads = []
    for target in argv:
        netns, port, path = target.split(":", 2)
        out: dict[str, object] = {"target": target}
        results.append(out)
        try:
            sock = _socket_in(netns, own)
        except (OSError, ValueError) as exc:
            out.update(status=None, error=f"{type(exc).__name__}: {exc}")
            continue
        t = threading.Thread(target=_get, args=(sock, int(port), path, out), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(TIMEOUT * 3)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
