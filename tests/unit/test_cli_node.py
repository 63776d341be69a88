"""`tabby node run` flag checks that happen before the agent starts: --typha addresses,
--typha-fallback and the Typha TLS flags, each refused with one line naming the flag (and
exit code 1), and the options that reach AgentConfig when they are right."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tabby.cli.common import CLIError
from tabby.cli.main import build_parser, main
from tabby.cli.node import typha_options
from tabby.typha import PeerIdentity

DS = ["--datastore", "sqlite:///nonexistent-dir/never-opened.db"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([*DS, "node", "run", "--name", "n1", *argv])
    return rc, capsys.readouterr().err


def parse(*argv: str) -> Any:
    return build_parser().parse_args([*DS, "node", "run", "--name", "n1", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    (["--typha", "10.0.0.5:99999"], "error: --typha: bad port '99999' in '10.0.0.5:99999'"),
    (["--typha", "10.0.0.5:5473,,"], "error: --typha: empty address in"),
    (["--typha", "fd00::1:5473"], "error: --typha: IPv6 address 'fd00::1:5473' must be in "
                                  "brackets"),
    (["--typha-fallback", "5"], "error: --typha-fallback: only meaningful with --typha"),
    (["--typha-ca", "ca.pem"], "error: --typha-ca: only meaningful with --typha"),
    (["--typha", "t:5473", "--typha-cert", "c.pem", "--typha-key", "k.pem"],
     "error: --typha-ca: Typha TLS needs --typha-cert, --typha-key, --typha-ca together"),
    (["--typha", "t:5473", "--typha-cn", "typha"],
     "error: --typha-cert: Typha TLS needs --typha-cert, --typha-key, --typha-ca together"),
    (["--typha", "t:5473", "--typha-cert", "c", "--typha-key", "k", "--typha-ca", "a"],
     "error: --typha-cn: Typha TLS needs --typha-cn or --typha-uri-san"),
    (["--typha", "t:5473", "--typha-cert", "/nonexistent/c.pem", "--typha-key",
      "/nonexistent/k.pem", "--typha-ca", "/nonexistent/ca.pem", "--typha-cn", "typha"],
     "error: typha client --typha-cert '/nonexistent/c.pem' / --typha-key"),
])
def test_bad_typha_flags_are_one_line_errors(
        capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    rc, err = run(capsys, *argv)
    assert rc == 1
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_bad_fallback_seconds(capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--typha", "t:5473", "--typha-fallback", value)
    err = capsys.readouterr().err
    assert exc.value.code == 1 and len(err.strip().splitlines()) == 1, err
    assert "argument --typha-fallback: " in err and repr(value) in err


def test_no_typha_no_options() -> None:
    assert typha_options(parse()) == {}


def test_plain_typha_with_fallback() -> None:
    got = typha_options(parse("--typha", "10.0.0.5:5473,[fd00::5]:5473",
                              "--typha-fallback", "2.5"))
    assert got == {"typha": "10.0.0.5:5473,[fd00::5]:5473", "typha_fallback": 2.5}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_options_build_a_client_context(tmp_path: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=tabby-test-ca", cwd=tmp_path)
    _openssl("req", *ec, "-keyout", "agent.key", "-out", "agent.csr", "-subj", "/CN=agent",
             cwd=tmp_path)
    _openssl("x509", "-req", "-in", "agent.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "agent.crt", "-days", "2", cwd=tmp_path)
    got = typha_options(parse(
        "--typha", "10.0.0.5:5473", "--typha-cert", str(tmp_path / "agent.crt"),
        "--typha-key", str(tmp_path / "agent.key"), "--typha-ca", str(tmp_path / "ca.crt"),
        "--typha-uri-san", "spiffe://tabby.test/typha"))
    ctx = got["typha_ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert got["typha_identity"] == PeerIdentity(None, "spiffe://tabby.test/typha")
    # A key that does not belong to the certificate: one line naming our flags.
    _openssl("req", *ec, "-keyout", "other.key", "-out", "other.csr", "-subj", "/CN=x",
             cwd=tmp_path)
    with pytest.raises(CLIError, match="--typha-cert .* / --typha-key .*other.key"):
        typha_options(parse(
            "--typha", "10.0.0.5:5473", "--typha-cert", str(tmp_path / "agent.crt"),
            "--typha-key", str(tmp_path / "other.key"), "--typha-ca", str(tmp_path / "ca.crt"),
            "--typha-cn", "typha"))


def test_status_asks_bird_where_the_agent_says(monkeypatch, capsys) -> None:
    """`node status` reads BIRD on the socket the running agent reports (a lab node's run
    dir is not the default), and shows the IP-in-IP implementation."""
    import tabby.bgp.status as bgp_status
    import tabby.cli.node as node_cli

    agent = {"node": "n1", "ready": True,
             "bgp": {"enabled": True, "socket": "/tmp/lab-x/n1/bird.ctl"},
             "dataplanes": {"ipip": {"applies": 1, "implementation": "bpf",
                                     "stats": {"active": True}}}}
    monkeypatch.setattr(node_cli, "_agent_status", lambda port: agent)
    asked: list[str] = []
    monkeypatch.setattr(bgp_status, "collect_status", asked.append)  # returns None: no BIRD
    assert main(["node", "status", "--name", "n1"]) == 0
    assert asked == ["/tmp/lab-x/n1/bird.ctl"]
    assert "implementation bpf (active)" in capsys.readouterr().out
