"""A small ctypes binding to the system libbpf (`libbpf.so.1`): open and load an object
file, get program and map file descriptors, read and write map elements.

Why ctypes on libbpf rather than exec'ing `bpftool` / `tc`: map updates are one syscall
each (no process per change), and the loaded programs are attached by file descriptor
over netlink (pyroute2), which works in any network namespace without `ip netns exec`
and without pinning anything under /sys/fs/bpf (which `ip netns exec` hides by
remounting /sys). libbpf does the ELF/BTF work (map creation, relocations) that we
should not redo. Only libbpf's stable 1.x C API is used; `libbpf1` is a dependency of
Debian's iproute2, so it is present wherever `tc` is.

Every error is a `BpfError` whose message names the object, the call and the errno.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_OBJ_NAME_LEN = 16

# enum bpf_map_type values we look at
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}


class BpfError(OSError):
    """A libbpf / bpf() call failed; the message names what and why."""


class _MapInfo(ctypes.Structure):
    # The head of struct bpf_map_info (linux/bpf.h); the kernel fills what fits.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class _ProgInfo(ctypes.Structure):
    # The head of struct bpf_prog_info, up to and including `name`.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


LIBBPF_WARN, LIBBPF_INFO = 0, 1
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log_lock = threading.Lock()
_log_lines: list[str] | None = None  # collecting libbpf's messages during a load


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _on_print(level: int, fmt: bytes, args: int) -> int:
    # libbpf hands us printf(fmt, va_list): render it with libc's vsnprintf. On x86-64 and
    # arm64 a va_list argument travels as a pointer, which is what c_void_p passes on.
    buf = ctypes.create_string_buffer(4096)
    _libc().vsnprintf(buf, ctypes.c_size_t(len(buf)), fmt, ctypes.c_void_p(args))
    text = buf.value.decode(errors="replace").rstrip("\n")
    if _log_lines is not None and level <= LIBBPF_INFO:  # debug chatter is not kept
        _log_lines.extend(text.splitlines())
    elif level == LIBBPF_WARN:
        log.warning("%s", text)
    return 0


_print_cb = _PRINT_FN(_on_print)  # kept alive for as long as libbpf may call it


@cache
def lib() -> ctypes.CDLL:
    """The loaded libbpf, with argument types declared. Raises BpfError if absent."""
    name = os.environ.get("TABBY_LIBBPF") or "libbpf.so.1"
    try:
        so = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BpfError(
            errno.ENOENT, f"libbpf: cannot load {name} ({exc}); install Debian's libbpf1"
        ) from None
    vp, c_int, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    sigs: dict[str, tuple[type | None, list[type]]] = {
        "bpf_object__open_file": (vp, [c_char_p, vp]),
        "bpf_object__load": (c_int, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, c_char_p]),
        "bpf_object__find_map_by_name": (vp, [vp, c_char_p]),
        "bpf_program__fd": (c_int, [vp]),
        "bpf_map__fd": (c_int, [vp]),
        "bpf_map_update_elem": (c_int, [c_int, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (c_int, [c_int, vp, vp]),
        "bpf_map_delete_elem": (c_int, [c_int, vp]),
        "bpf_map_get_next_key": (c_int, [c_int, vp, vp]),
        "bpf_obj_get_info_by_fd": (c_int, [c_int, vp, ctypes.POINTER(ctypes.c_uint32)]),
        "bpf_prog_get_fd_by_id": (c_int, [ctypes.c_uint32]),
        "bpf_map_get_fd_by_id": (c_int, [ctypes.c_uint32]),
        "libbpf_num_possible_cpus": (c_int, []),
        "libbpf_set_print": (vp, [_PRINT_FN]),
    }
    for fn, (restype, argtypes) in sigs.items():
        f = getattr(so, fn)
        f.restype, f.argtypes = restype, argtypes
    so.libbpf_set_print(_print_cb)
    return so


def _err(what: str, rc: int | None = None) -> BpfError:
    code = ctypes.get_errno() or (-rc if rc is not None and rc < 0 else 0) or errno.EIO
    return BpfError(code, f"{what}: {os.strerror(code)}")


@cache
def num_possible_cpus() -> int:
    n = int(lib().libbpf_num_possible_cpus())
    if n <= 0:
        raise BpfError(-n or errno.EIO, "libbpf_num_possible_cpus failed")
    return n


def map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    if rc:
        raise _err(f"bpf map fd {fd}: get info", rc)
    return info


def prog_info(fd: int) -> tuple[int, str, list[int]]:
    """(id, name, map ids) of the program behind `fd`."""
    ids = (ctypes.c_uint32 * 64)()
    info = _ProgInfo()
    info.nr_map_ids = len(ids)
    info.map_ids = ctypes.addressof(ids)
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    if rc:
        raise _err(f"bpf prog fd {fd}: get info", rc)
    n = min(info.nr_map_ids, len(ids))
    return int(info.id), info.name.decode(errors="replace"), [int(ids[i]) for i in range(n)]


def map_fd_by_id(map_id: int) -> int:
    """A new fd for map `map_id` (close it with os.close)."""
    fd = int(lib().bpf_map_get_fd_by_id(map_id))
    if fd < 0:
        raise _err(f"bpf map id {map_id}: get fd", fd)
    return fd


def prog_fd_by_id(prog_id: int) -> int:
    fd = int(lib().bpf_prog_get_fd_by_id(prog_id))
    if fd < 0:
        raise _err(f"bpf prog id {prog_id}: get fd", fd)
    return fd


class BpfMap:
    """One map, by file descriptor. Keys and values are raw bytes of the map's sizes;
    per-CPU maps take/return `num_possible_cpus()` values of `value_size` (each padded to
    8 bytes, as the kernel lays them out)."""

    def __init__(self, fd: int, name: str = "", *, owned: bool = False) -> None:
        self.fd = fd
        info = map_info(fd)
        self.name = name or info.name.decode(errors="replace")
        self.id = int(info.id)
        self.type = int(info.type)
        self.key_size = int(info.key_size)
        self.value_size = int(info.value_size)
        self.max_entries = int(info.max_entries)
        self.percpu = self.type in PERCPU_TYPES
        self._owned = owned
        if self.percpu:
            self.buffer_size = ((self.value_size + 7) // 8) * 8 * num_possible_cpus()
        else:
            self.buffer_size = self.value_size

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise ValueError(f"key: {len(key)} bytes for map {self.name} (needs {self.key_size})")
        return ctypes.create_string_buffer(bytes(key), self.key_size)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.buffer_size:
            raise ValueError(
                f"value: {len(value)} bytes for map {self.name} (needs {self.buffer_size})"
            )
        k = self._key(key)
        v = ctypes.create_string_buffer(bytes(value), self.buffer_size)
        ctypes.set_errno(0)
        rc = lib().bpf_map_update_elem(self.fd, k, v, flags)
        if rc:
            raise _err(f"bpf map {self.name}: update {key.hex()}", rc)

    def lookup(self, key: bytes) -> bytes | None:
        k = self._key(key)
        v = ctypes.create_string_buffer(self.buffer_size)
        ctypes.set_errno(0)
        rc = lib().bpf_map_lookup_elem(self.fd, k, v)
        if rc:
            if ctypes.get_errno() == errno.ENOENT or rc == -errno.ENOENT:
                return None
            raise _err(f"bpf map {self.name}: lookup {key.hex()}", rc)
        return v.raw

    def delete(self, key: bytes) -> bool:
        """Delete `key`; False if it was not there."""
        k = self._key(key)
        ctypes.set_errno(0)
        rc = lib().bpf_map_delete_elem(self.fd, k)
        if rc:
            if ctypes.get_errno() == errno.ENOENT or rc == -errno.ENOENT:
                return False
            raise _err(f"bpf map {self.name}: delete {key.hex()}", rc)
        return True

    def keys(self) -> Iterator[bytes]:
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ctypes.set_errno(0)
            rc = lib().bpf_map_get_next_key(self.fd, cur, nxt)
            if rc:
                if ctypes.get_errno() == errno.ENOENT or rc == -errno.ENOENT:
                    return
                raise _err(f"bpf map {self.name}: next key", rc)
            yield nxt.raw
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class BpfObject:
    """A loaded object file: its programs and maps live until `close()` (or longer, while
    something such as a tc filter still holds them)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if not Path(self.path).is_file():
            raise BpfError(errno.ENOENT, f"bpf object {self.path}: not found")
        so = lib()
        global _log_lines
        with _log_lock:
            _log_lines = []
            try:
                ctypes.set_errno(0)
                obj = so.bpf_object__open_file(self.path.encode(), None)
                if not obj:
                    raise _err(f"bpf object {self.path}: open")
                rc = so.bpf_object__load(obj)
                if rc:
                    err = _err(f"bpf object {self.path}: load", rc)
                    so.bpf_object__close(obj)
                    lines = [ln.strip() for ln in _log_lines if ln.strip()]
                    tail = " | ".join(lines[-12:])
                    raise BpfError(err.errno, f"{err.strerror}: {tail}" if tail else err.strerror)
            finally:
                _log_lines = None
        self._obj: int | None = obj

    def _handle(self) -> int:
        if self._obj is None:
            raise BpfError(errno.EBADF, f"bpf object {self.path}: closed")
        return self._obj

    def program_fd(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._handle(), name.encode())
        if not prog:
            raise BpfError(errno.ENOENT, f"bpf object {self.path}: no program {name!r}")
        fd = int(lib().bpf_program__fd(prog))
        if fd < 0:
            raise BpfError(-fd, f"bpf object {self.path}: program {name!r} has no fd")
        return fd

    def map(self, name: str) -> BpfMap:
        m = lib().bpf_object__find_map_by_name(self._handle(), name.encode())
        if not m:
            raise BpfError(errno.ENOENT, f"bpf object {self.path}: no map {name!r}")
        fd = int(lib().bpf_map__fd(m))
        if fd < 0:
            raise BpfError(-fd, f"bpf object {self.path}: map {name!r} has no fd")
        return BpfMap(fd, name)

    def close(self) -> None:
        """Release our fds (the object's maps and programs stay while attached)."""
        if self._obj is not None:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing to report to
            pass
