"""BIRD control-socket client and `tabby node status` parsing/printing, against a fake BIRD."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabby.bgp import birdctl
from tabby.bgp.status import (
    STATUS_FILE,
    collect_status,
    default_socket,
    parse_protocols,
    print_status,
    status_json,
)

# What BIRD 2.0.12 sends for `show protocols all` (trimmed), line codes included; "|"
# stands for the single space of a blank continuation line and of the final "0000 ".
PROTOCOLS = """\
2002-Name       Proto      Table      State  Since         Info
1002-device1    Device     ---        up     2026-01-02 10:00:00.001
1006-
1002-tabby_kernel4 Kernel     master4    up     2026-01-02 10:00:00.001
1006-  Channel ipv4
     State:          UP
     Routes:         1 imported, 3 exported, 1 preferred
|
1002-Mesh_172_31_0_11 BGP        ---        up     2026-01-02 10:00:01.123  Established
1006-  Description:    node-to-node mesh; node n2
   BGP state:          Established
     Neighbor address: 172.31.0.11
     Neighbor AS:      64512
     Local AS:         64512
   Channel ipv4
     State:          UP
     Routes:         2 imported, 1 exported, 2 preferred
|
1002-Node_172_31_1_10 BGP        ---        up     2026-01-02 10:00:02.500  Established
1006-  Description:    route reflector client; BGPPeer rr; node n3
   BGP state:          Established
     Neighbor address: 172.31.1.10
     Neighbor AS:      64512
     Local AS:         64512
|
1002-Global_192_0_2_1_port_1790 BGP        ---        start  2026-01-02 10:00:00.001  Active        Socket: Connection refused
1006-  Description:    global; BGPPeer tor
   BGP state:          Active
     Neighbor address: 192.0.2.1
     Neighbor AS:      65000
     Local AS:         64512
     Last error:       Socket: Connection refused
|
1002-Mesh_fd00__2 BGP        ---        start  2026-01-02 10:00:00.001  Connect
1006-  BGP state:          Connect
     Neighbor address: fd00::2
     Neighbor AS:      64512
     Local AS:         64512
|
0000|
""".replace("|", " ")

SHOW_STATUS = """\
1000-BIRD 2.0.12
1011-Router ID is 172.31.0.10
 Hostname is vm
1011-Current server time is 2026-01-02 10:00:05.000
0013 Daemon is up and running
"""


class FakeBird:
    """A unix socket that answers like BIRD's control socket."""

    def __init__(self, path: Path, answers: dict[str, str]) -> None:
        self.path = path
        self.answers = answers
        self.commands: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                f.write(b"0001 BIRD 2.0.12 ready.\n")
                f.flush()
                cmd = f.readline().decode().strip()
                self.commands.append(cmd)
                f.write(self.answers.get(cmd, "9001 syntax error, unexpected CF_SYM_UNDEFINED\n")
                        .encode())
                f.flush()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_bird(tmp_path: Path) -> Iterator[FakeBird]:
    bird = FakeBird(tmp_path / "bird.ctl", {"show protocols all": PROTOCOLS,
                                             "show status": SHOW_STATUS})
    yield bird
    bird.close()


def test_command_reads_replies_and_continuations(fake_bird: FakeBird) -> None:
    replies = birdctl.command(fake_bird.path, "show status")
    assert [r.code for r in replies] == [1000, 1011, 1011, 1011, 13]
    assert replies[2].text == "Hostname is vm"


def test_command_error_code_raises(fake_bird: FakeBird) -> None:
    with pytest.raises(birdctl.BirdControlError, match="syntax error"):
        birdctl.command(fake_bird.path, "show nonsense")


def test_command_without_socket(tmp_path: Path) -> None:
    with pytest.raises(birdctl.BirdControlError, match="bird.ctl"):
        birdctl.command(tmp_path / "bird.ctl", "show status")


def test_parse_protocols(fake_bird: FakeBird) -> None:
    protocols = parse_protocols(birdctl.command(fake_bird.path, "show protocols all"))
    assert [p.name for p in protocols] == [
        "device1", "tabby_kernel4", "Mesh_172_31_0_11", "Node_172_31_1_10",
        "Global_192_0_2_1_port_1790", "Mesh_fd00__2",
    ]
    mesh = protocols[2]
    assert (mesh.state, mesh.since, mesh.info) == ("up", "2026-01-02 10:00:01.123", "Established")
    assert mesh.routes == {"ipv4": {"imported": 2, "exported": 1, "preferred": 2}}
    assert protocols[4].info == "Active        Socket: Connection refused"


def test_collect_status(fake_bird: FakeBird, tmp_path: Path) -> None:
    (tmp_path / STATUS_FILE).write_text(json.dumps({
        "node": "n1", "last_error": None,
        "issues": [{"severity": "error", "source": 'BGPPeer "x"', "message": "ignored: bad"}],
    }))
    st = collect_status(fake_bird.path)
    assert st.running and st.router_id == "172.31.0.10" and st.version == "BIRD 2.0.12"
    assert [(p.address, p.peer_type, p.established) for p in st.peers] == [
        ("172.31.0.11", "node-to-node mesh", True),
        ("172.31.1.10", "route reflector client", True),
        ("192.0.2.1", "global", False),
        ("fd00::2", "node-to-node mesh", False),  # no description: type from the name
    ]
    tor = st.peer("192.0.2.1")
    assert tor is not None and tor.info == "Active Socket: Connection refused"
    assert tor.last_error == "Socket: Connection refused"
    assert st.peers[0].routes_imported == 2
    assert st.issues[0]["source"] == 'BGPPeer "x"'
    assert st.controller == {"node": "n1", "last_error": None}


def test_collect_status_when_bird_is_down(tmp_path: Path) -> None:
    st = collect_status(tmp_path / "bird.ctl")
    assert not st.running and st.peers == []
    assert "BIRD is not running" in (st.error or "")
    out = io.StringIO()
    print_status(st, file=out)
    assert "BIRD is not running" in out.getvalue()


def test_print_status_table_and_json(fake_bird: FakeBird) -> None:
    st = collect_status(fake_bird.path)
    out = io.StringIO()
    print_status(st, file=out)
    text = out.getvalue()
    assert "IPv4 BGP status" in text and "IPv6 BGP status" in text
    assert "| 172.31.0.11  | node-to-node mesh      | up    | 2026-01-02 10:00:01.123 |" in text
    assert "route reflector client" in text
    out = io.StringIO()
    print_status(st, output="json", file=out)
    data = json.loads(out.getvalue())
    assert data == status_json(st)
    assert data["peers"][0]["established"] is True
    with pytest.raises(ValueError, match="output"):
        print_status(st, output="yaml", file=io.StringIO())


def test_default_socket() -> None:
    assert default_socket("node-1") == "/run/tabby/node-1/bird.ctl"


def test_command_survives_a_bird_dying_mid_reply(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "bird.ctl"))
    server.listen(1)

    def greet_and_reset() -> None:
        conn, _ = server.accept()
        conn.sendall(b"0001 BIRD 2.0.12 ready.\n1002-half a line")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # linger 0: RST

    t = threading.Thread(target=greet_and_reset)
    t.start()
    with pytest.raises(birdctl.BirdControlError):
        birdctl.command(tmp_path / "bird.ctl", "show protocols all")
    t.join()
    server.close()
    assert not collect_status(tmp_path / "bird.ctl").running
