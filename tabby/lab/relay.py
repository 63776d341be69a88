"""A TCP relay that makes one loopback service appear on loopback inside other namespaces.

    python -I -S relay.py --target 127.0.0.1:PORT --port PORT --netns NS1,NS2,...

The lab's etcd listens on 127.0.0.1 of the namespace `tabby lab up` ran in, so the CLI
there reaches it directly; the agents and the CNI plugin run inside node namespaces,
whose loopback is their own. This one process opens a listening socket on 127.0.0.1:PORT
inside each node namespace (a socket stays in the namespace it was created in) and
forwards every connection to the target, so one datastore URL works everywhere.

It enters each namespace with setns(2) on its single thread *before* starting any other
thread, and returns to its own namespace before connecting anywhere: nothing is ever
bound or sent outside loopback. Standard library only; started with `python -I -S`.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in(netns: str, port: int, own: int) -> socket.socket:
    """A socket listening on 127.0.0.1:port inside namespace `netns`."""
    if "/" in netns or netns in ("", ".", ".."):
        raise ValueError(f"netns: invalid namespace name {netns!r}")
    fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
    try:
        _setns(fd)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(128)
        finally:
            _setns(own)
    finally:
        os.close(fd)
    return s


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # Half-close so the other direction can finish (HTTP long polls, watch streams).
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def _serve_conn(conn: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=5)
    except OSError:
        conn.close()
        return
    upstream.settimeout(None)
    for s in (conn, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
    back.start()
    _pump(conn, upstream)
    back.join()
    conn.close()
    upstream.close()


def _accept_loop(sock: socket.socket, target: tuple[str, int]) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        threading.Thread(target=_serve_conn, args=(conn, target), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="relay")
    ap.add_argument("--target", required=True, help="host:port to forward to (loopback)")
    ap.add_argument("--port", type=int, required=True, help="port to listen on in each netns")
    ap.add_argument("--netns", required=True, help="comma-separated namespace names")
    args = ap.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        ap.error(f"--target: {args.target!r} is not a loopback address")
    target = (host, int(port))
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    socks = [listen_in(ns, args.port, own) for ns in args.netns.split(",") if ns]
    os.close(own)
    for s in socks:
        threading.Thread(target=_accept_loop, args=(s, target), daemon=True).start()
    print(f"READY {os.getpid()}", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
