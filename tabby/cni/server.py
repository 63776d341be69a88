"""The node agent's CNI server: runs tabby-cni / tabby-ipam invocations in-process.

The runtime execs the small C client (tabby/cni/client/), which forwards its plugin name,
CNI_* / TABBY_* environment and stdin over the abstract unix socket "@tabby-cni" of its
network namespace; the server runs exactly what the exec'd Python plugin would run
(`skel.run` with the plugin's handler) and answers with the plugin's stdout and exit code.
That saves the interpreter start-up and imports of every exec (~25 of ~36 ms of CPU per
ADD), which is what queues when a node starts many containers at once.

An abstract socket belongs to a network namespace and disappears with its process, so
there is no file to clean up after a crash and each node namespace of a lab reaches its own
agent. It has no file permissions either, so both ends check the other with SO_PEERCRED:
the server answers only peers with its own uid (root: the plugin creates links and
routes), and the client talks only to a root server (anyone could bind the name first and
would otherwise see the request, datastore credentials included, and forge the answer).

    server = CNIServer(); server.start(); ...; server.stop()
    python -m tabby.cni.server            # standalone, until SIGTERM (tests, debugging)
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from tabby.cni import spec

SOCKET_NAME = "tabby-cni"
MAGIC = b"TBC1"
MAX_FRAME = 16 << 20
MAX_CONCURRENT = 16  # more would only queue on the GIL; the client waits on its socket
READ_TIMEOUT = 10.0  # to receive a whole request (the client sends it at once)
SEND_TIMEOUT = 30.0
STOP_GRACE = 10.0


def _handlers() -> dict[str, Callable[..., Any]]:
    from tabby.cni import ipam_plugin, plugin

    return {"tabby-cni": plugin.handle_command, "tabby-ipam": ipam_plugin.handle_command}


class ProtocolError(ValueError):
    pass


def _read_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ProtocolError(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _frame(conn: socket.socket, what: str) -> bytes:
    (n,) = struct.unpack("!I", _read_exact(conn, 4))
    if n > MAX_FRAME:
        raise ProtocolError(f"{what}: frame of {n} bytes is over {MAX_FRAME}")
    return _read_exact(conn, n)


def read_request(conn: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """(plugin name, environment, stdin) of one client request."""
    if _read_exact(conn, 4) != MAGIC:
        raise ProtocolError("not a tabby-cni client (bad magic)")
    name = _frame(conn, "plugin name").decode()
    env: dict[str, str] = {}
    for entry in _frame(conn, "environment").split(b"\0"):
        if entry:
            key, _, value = entry.decode(errors="surrogateescape").partition("=")
            if key.startswith(("CNI_", "TABBY_")):
                env[key] = value
    return name, env, _frame(conn, "stdin")


def encode_answer(code: int, out: bytes) -> bytes:
    return struct.pack("!II", code & 0xFFFFFFFF, len(out)) + out


def serve_one(name: str, env: dict[str, str], data: bytes) -> tuple[int, bytes]:
    """Run one invocation as the exec'd plugin would: (exit code, stdout)."""
    from tabby.cni import skel

    handler = _handlers().get(name)
    out = io.StringIO()
    if handler is None:
        err = spec.CNIError(spec.ERR_INTERNAL, f"tabby-cni server: unknown plugin {name!r}")
        spec.emit(err.to_result(spec.LATEST), out)
        return 1, out.getvalue().encode()
    code = skel.run(handler, env, data, out)
    return code, out.getvalue().encode()


class CNIServer:
    """Accepts client connections on the abstract socket and serves each in a thread.

    A request must arrive within READ_TIMEOUT (a wedged client holds nothing); at most
    MAX_CONCURRENT run at once; invocations for one container run one at a time, in
    arrival order, so a DEL sent after a runtime gave up on an ADD never overtakes it."""

    def __init__(self, name: str = SOCKET_NAME, log: Callable[[str], None] | None = None,
                 on_served: Callable[[str, str, int, float], None] | None = None) -> None:
        self.name = name
        self.log = log or (lambda msg: None)
        self.on_served = on_served  # (plugin, command, exit code, seconds), e.g. metrics
        self.served = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._stopping = threading.Event()
        self._state = threading.Condition()
        self._active = 0  # connections being handled
        self._containers: dict[str, list[Any]] = {}  # container id -> [lock, users]

    def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + self.name)
        except OSError as exc:
            sock.close()
            raise OSError(f"CNI server: cannot bind @{self.name}: {exc} "
                          "(another agent in this network namespace?)") from None
        sock.listen(128)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="cni-server", daemon=True)
        self._thread.start()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop accepting, then wait up to `grace` seconds for invocations in flight (a
        half-wired container is repaired by the runtime's DEL and retry, but why cause one)."""
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._state:
            self._state.wait_for(lambda: self._active == 0, grace)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            try:
                with self._state:
                    self._active += 1
                threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()
            except Exception as exc:  # e.g. no thread to be had: this client, not the server
                self._done()
                conn.close()
                self.log(f"could not serve a connection: {exc}")

    def _done(self) -> None:
        with self._state:
            self._active -= 1
            self._state.notify_all()

    @contextlib.contextmanager
    def _container(self, cid: str) -> Iterator[None]:
        """One invocation at a time per container (FIFO enough: a lock per id)."""
        if not cid:
            yield
            return
        with self._state:
            entry = self._containers.setdefault(cid, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._state:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._containers[cid]

    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            with conn:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                        struct.calcsize("3i"))
                pid, uid, _ = struct.unpack("3i", creds)
                if uid != os.getuid():
                    self.log(f"refused a client of uid {uid} (pid {pid})")
                    return  # closing without an answer: the client reports "try again"
                conn.settimeout(READ_TIMEOUT)
                try:
                    name, env, data = read_request(conn)
                except (ProtocolError, UnicodeDecodeError, TimeoutError) as exc:
                    self.log(f"bad request from pid {pid}: {exc or 'no request in time'}")
                    return
                conn.settimeout(SEND_TIMEOUT)
                command = env.get("CNI_COMMAND", "?")
                cid = env.get("CNI_CONTAINERID", "")
                with self._slots, self._container(cid):
                    t0 = time.perf_counter()
                    code, out = serve_one(name, env, data)
                    seconds = time.perf_counter() - t0
                self.served += 1
                self.log(f"{name} {command} {cid} -> exit {code} in {seconds * 1000:.1f} ms")
                if self.on_served is not None:
                    self.on_served(name, command, code, seconds)
                conn.sendall(encode_answer(code, out))
        except OSError as exc:
            self.log(f"connection failed: {exc}")
        finally:
            self._done()


def main() -> int:
    server = CNIServer(log=lambda msg: print(msg, flush=True))
    server.start()
    print(f"serving @{server.name}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
