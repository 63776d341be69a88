"""The process side of `tabby.lab.probe`: run inside a namespace with `ip netns exec`.

    probe_agent.py serve --name NAME [--tcp P,...] [--udp P,...] [--watch-stdin]
    probe_agent.py probe  < {"probes": [{"dst": ip, "proto": "tcp", "port": 80, "timeout": 1}]}

Standard library only, and started with `python -I -S`, so it costs ~20 ms to start. One
`probe` process per source namespace runs all that source's probes in parallel threads and
prints one JSON result per probe, in order. Outcomes:

    ok          reached (TCP connected, UDP echo answered, ICMP echo reply)
    refused     reached, nothing listening (TCP RST, ICMP port unreachable for UDP)
    timeout     no answer in time: dropped on the way (policy DROP, blackhole route)
    unreachable ICMP destination unreachable / no route / TTL exceeded
    denied      the local kernel refused to send (EPERM/EACCES: an output-hook reject)
    error       anything else (detail says what)
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MAGIC = b"tabby-probe"
REPLY = b"tabby-probe-ok"
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
_DENIED = {errno.EPERM, errno.EACCES}


def _family(dst: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in dst else socket.AF_INET


def _os_outcome(exc: OSError) -> tuple[str, str]:
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout", "timed out"
    if exc.errno in _UNREACHABLE:
        return "unreachable", os.strerror(exc.errno)
    if exc.errno in _DENIED:
        return "denied", os.strerror(exc.errno)
    return "error", f"{type(exc).__name__}: {exc}"


def _peer_name(reply: bytes) -> str | None:
    if not reply.startswith(REPLY + b" "):
        return None
    parts = reply[len(REPLY) + 1 :].split()
    return parts[0].decode(errors="replace") if parts else None


# --- client -------------------------------------------------------------------------------


def probe_tcp(dst: str, port: int, timeout: float) -> dict[str, Any]:
    with socket.socket(_family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
        except OSError as exc:
            outcome, detail = _os_outcome(exc)
            return {"outcome": outcome, "detail": detail}
        # Connected means reached. Read the server's name if it is one of our servers;
        # any other listener (BGP, etcd) still counts as reached.
        peer = None
        try:
            s.sendall(MAGIC + b"\n")
            peer = _peer_name(s.recv(256))
        except OSError:
            pass
        return {"outcome": "ok", "detail": "connected", "peer": peer}


def probe_udp(dst: str, port: int, timeout: float) -> dict[str, Any]:
    nonce = b"%016x" % random.getrandbits(64)
    deadline = time.monotonic() + timeout
    with socket.socket(_family(dst), socket.SOCK_DGRAM) as s:
        try:
            s.connect((dst, port))
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return {"outcome": "timeout", "detail": "no reply"}
                s.send(MAGIC + b" " + nonce + b"\n")
                # Resend a few times inside the budget: one lost datagram is not a drop.
                s.settimeout(min(left, max(timeout / 3, 0.1)))
                try:
                    while True:
                        data = s.recv(512)
                        if nonce in data:
                            return {"outcome": "ok", "detail": "echo", "peer": _peer_name(data)}
                except TimeoutError:
                    continue
        except OSError as exc:
            outcome, detail = _os_outcome(exc)
            return {"outcome": outcome, "detail": detail}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def probe_icmp(dst: str, timeout: float) -> dict[str, Any]:
    v6 = ":" in dst
    ident = random.getrandbits(16)
    seq = random.getrandbits(16)
    payload = b"%016x" % random.getrandbits(64)
    echo_req, echo_rep = (128, 129) if v6 else (8, 0)
    unreach = (1, 3) if v6 else (3, 11)
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    header = struct.pack("!BBHHH", echo_req, 0, 0, ident, seq)
    if not v6:  # the kernel fills in the ICMPv6 checksum (it covers a pseudo-header)
        header = struct.pack("!BBHHH", echo_req, 0, _checksum(header + payload), ident, seq)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(_family(dst), socket.SOCK_RAW, proto) as s:
            s.sendto(header + payload, (dst, 0))
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return {"outcome": "timeout", "detail": "no echo reply"}
                s.settimeout(left)
                try:
                    data, addr = s.recvfrom(2048)
                except TimeoutError:
                    continue
                msg = data if v6 else data[(data[0] & 0x0F) * 4 :]
                if len(msg) < 8:
                    continue
                mtype, code, _, rid, rseq = struct.unpack("!BBHHH", msg[:8])
                if mtype == echo_rep and rid == ident and rseq == seq and payload in msg:
                    if socket.inet_pton(_family(dst), addr[0]) == socket.inet_pton(
                        _family(dst), dst
                    ):
                        return {"outcome": "ok", "detail": "echo reply"}
                if mtype in unreach and _embedded_echo_id(msg, v6) == (ident, seq):
                    kind = (
                        "time exceeded" if (mtype == 11 and not v6) else "destination unreachable"
                    )
                    return {
                        "outcome": "unreachable",
                        "detail": f"icmp {kind} code {code} from {addr[0]}",
                    }
    except OSError as exc:
        outcome, detail = _os_outcome(exc)
        return {"outcome": outcome, "detail": detail}


def _embedded_echo_id(msg: bytes, v6: bool) -> tuple[int, int] | None:
    """(id, seq) of the echo request quoted inside an ICMP error, if it is one."""
    inner = msg[8:]
    if v6:
        if len(inner) < 48 or inner[6] != socket.IPPROTO_ICMPV6:
            return None
        icmp = inner[40:]
    else:
        if len(inner) < 28 or inner[9] != socket.IPPROTO_ICMP:
            return None
        icmp = inner[(inner[0] & 0x0F) * 4 :]
    if len(icmp) < 8:
        return None
    _, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
    return rid, rseq


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    start = time.monotonic()
    proto = spec["proto"]
    try:
        if proto == "tcp":
            res = probe_tcp(spec["dst"], int(spec["port"]), float(spec["timeout"]))
        elif proto == "udp":
            res = probe_udp(spec["dst"], int(spec["port"]), float(spec["timeout"]))
        elif proto == "icmp":
            res = probe_icmp(spec["dst"], float(spec["timeout"]))
        else:
            res = {"outcome": "error", "detail": f"unknown protocol {proto!r}"}
    except Exception as exc:  # a bad probe must not lose the others' results
        res = {"outcome": "error", "detail": f"{type(exc).__name__}: {exc}"}
    res["elapsed"] = round(time.monotonic() - start, 4)
    return res


def cmd_probe() -> int:
    specs = json.load(sys.stdin)["probes"]
    if not specs:
        print("[]")
        return 0
    with ThreadPoolExecutor(max_workers=min(len(specs), 256)) as pool:
        results = list(pool.map(run_one, specs))
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


# --- server -------------------------------------------------------------------------------


def _listeners(kind: int, port: int) -> list[socket.socket]:
    """IPv4 and (when the namespace has it) IPv6 sockets on `port`."""
    socks = []
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, port))
        except OSError:
            s.close()
            if fam == socket.AF_INET:
                raise
            continue
        if kind == socket.SOCK_STREAM:
            s.listen(256)
        elif fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        socks.append(s)
    return socks


def _tcp_conn(conn: socket.socket, reply: bytes) -> None:
    with conn:
        conn.settimeout(2.0)
        try:
            first = conn.recv(256).split(b"\n")[0][:64]
            conn.sendall(reply + b" " + first + b"\n")
        except OSError:
            pass


def _tcp_loop(sock: socket.socket, reply: bytes) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        threading.Thread(target=_tcp_conn, args=(conn, reply), daemon=True).start()


def _udp_loop(sock: socket.socket, reply: bytes) -> None:
    v6 = sock.family == socket.AF_INET6
    while True:
        try:
            data, anc, _, addr = sock.recvmsg(512, 256)
        except OSError:
            continue
        # Answer from the address the request was sent to: on a multi-address node the
        # kernel's own pick could differ and the client's connected socket would drop it.
        cmsg = []
        for level, ctype, cdata in anc:
            if not v6 and level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
                cmsg = [(level, IP_PKTINFO, struct.pack("=i4s4s", 0, cdata[8:12], b"\0" * 4))]
            elif v6 and level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO:
                cmsg = [(level, IPV6_PKTINFO, cdata[:16] + struct.pack("=I", 0))]
        with_nonce = data.split(b"\n")[0][:64]
        try:
            sock.sendmsg([reply + b" " + with_nonce + b"\n"], cmsg, 0, addr)
        except OSError:
            pass


def cmd_serve(name: str, tcp: list[int], udp: list[int], watch_stdin: bool) -> int:
    reply = REPLY + b" " + name.encode()
    threads = []
    for port in tcp:
        for s in _listeners(socket.SOCK_STREAM, port):
            threads.append(threading.Thread(target=_tcp_loop, args=(s, reply), daemon=True))
    for port in udp:
        for s in _listeners(socket.SOCK_DGRAM, port):
            threads.append(threading.Thread(target=_udp_loop, args=(s, reply), daemon=True))
    for t in threads:
        t.start()
    print(f"READY {os.getpid()}", flush=True)
    if watch_stdin:
        # Exit when the parent goes away (its end of our stdin closes), even on a crash.
        while sys.stdin.buffer.read(4096):
            pass
        return 0
    threading.Event().wait()
    return 0


def _ports(text: str) -> list[int]:
    ports = [int(p) for p in text.split(",") if p]
    for p in ports:
        if not 1 <= p <= 65535:
            raise argparse.ArgumentTypeError(f"port {p} out of range 1-65535")
    return ports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="probe_agent")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--name", default=socket.gethostname())
    sv.add_argument("--tcp", type=_ports, default=[])
    sv.add_argument("--udp", type=_ports, default=[])
    sv.add_argument("--watch-stdin", action="store_true")
    sub.add_parser("probe")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return cmd_serve(args.name, args.tcp, args.udp, args.watch_stdin)
    return cmd_probe()


if __name__ == "__main__":
    sys.exit(main())
