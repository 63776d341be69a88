"""Typha over TLS: a client certificate from the CA with the right CN or URI SAN is required;
anyone else gets nothing - not a byte of the cluster's state. Certificates are made with the
`openssl` command for each test module run."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tabby.datastore import open_datastore
from tabby.typha import protocol as p
from tabby.typha.client import TyphaClient
from tabby.typha.daemon import TyphaDaemon
from tabby.typha.server import ServerConfig
from tabby.typha.testing import Consumer, datastore_state, mixed_writes, wait_for
from tabby.typha.tls import (
    PeerIdentity,
    TLSConfigError,
    check_tls_options,
    client_context,
    server_context,
)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

CLIENT_CN = "typha-client"
CLIENT_URI = "spiffe://tabby.test/ns/kube-system/sa/tabby-node"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _leaf(d: Path, name: str, cn: str, ca: str, uri: str | None = None) -> tuple[str, str]:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName=URI:{uri}\n" if uri else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", str(ext), cwd=d)
    return str(d / f"{name}.crt"), str(d / f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                 "-subj", f"/CN=tabby-test-{ca}", cwd=d)
    return {
        "ca": str(d / "ca.crt"),
        "server": _leaf(d, "server", "typha-server", "ca"),
        "client": _leaf(d, "client", CLIENT_CN, "ca"),
        "uri-client": _leaf(d, "uri-client", "whoever", "ca", uri=CLIENT_URI),
        "intruder": _leaf(d, "intruder", "intruder", "ca"),
        "foreign": _leaf(d, "foreign", CLIENT_CN, "other-ca"),
    }


async def _tls_daemon(url: str, pki: dict[str, Any], identity: PeerIdentity) -> TyphaDaemon:
    cert, key = pki["server"]
    cfg = ServerConfig(port=0, ssl_context=server_context(cert, key, pki["ca"]),
                       client_identity=identity, handshake_timeout=2.0)
    daemon = TyphaDaemon(lambda: open_datastore(url), cfg)
    await daemon.start()
    return daemon


async def _gets_nothing(port: int, ctx: ssl.SSLContext | None) -> bytes:
    """Connect (TLS or not), say hello, and return every byte of application data received
    before the server ends the connection."""
    data = b""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.write(p.encode(p.Hello("nosy", p.PROTOCOL_VERSION)))
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                data += chunk
        writer.close()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass  # refused during or right after the handshake
    return data


def test_only_the_right_client_certificate_gets_the_state(tmp_path: Path, pki: dict) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 100, seed=1)
            truth = datastore_state(ds)
        daemon = await _tls_daemon(url, pki, PeerIdentity(common_name=CLIENT_CN))
        port = daemon.server.port
        good = Consumer("good")
        client = TyphaClient(
            [("127.0.0.1", port)], good, client_name="good",
            ssl_context=client_context(*pki["client"], pki["ca"]),
            server_identity=PeerIdentity(common_name="typha-server"),
        )
        task = asyncio.create_task(client.run())
        assert await wait_for(lambda: good.view == truth and good.in_syncs == 1, 20)

        # Right CA, wrong CN; a certificate from another CA; no certificate; no TLS at all.
        intruder = client_context(*pki["intruder"], pki["ca"])
        foreign = client_context(*pki["foreign"], pki["ca"])
        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anonymous.check_hostname = False
        anonymous.load_verify_locations(pki["ca"])
        for ctx in (intruder, foreign, anonymous, None):
            assert await _gets_nothing(port, ctx) == b""
        assert daemon.server.stats.disconnects["tls-identity"] == 1  # the other two fail earlier
        assert len(daemon.server.connections) == 1
        # A TyphaClient with the wrong certificate never gets a single update.
        bad = Consumer("bad")
        bad_client = TyphaClient([("127.0.0.1", port)], bad, client_name="bad",
                                 ssl_context=intruder, backoff_max=0.2)
        bad_task = asyncio.create_task(bad_client.run())
        assert await wait_for(lambda: bad_client.status.errors >= 3, 20)
        assert bad.updates == 0 and bad.in_syncs == 0
        for c in (client, bad_client):
            c.stop()
        await asyncio.gather(task, bad_task, return_exceptions=True)
        await daemon.stop()

    asyncio.run(main())


def test_uri_san_identity_and_the_client_checking_the_server(tmp_path: Path, pki: dict) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 30, seed=2)
            truth = datastore_state(ds)
        daemon = await _tls_daemon(url, pki, PeerIdentity(uri_san=CLIENT_URI))
        addr = [("127.0.0.1", daemon.server.port)]
        ok = Consumer("uri")
        wary = Consumer("wary")
        clients = [
            TyphaClient(addr, ok, ssl_context=client_context(*pki["uri-client"], pki["ca"])),
            # This one expects a different server identity and must refuse to listen.
            TyphaClient(addr, wary, ssl_context=client_context(*pki["uri-client"], pki["ca"]),
                        server_identity=PeerIdentity(common_name="some-other-typha"),
                        backoff_max=0.2),
        ]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        assert await wait_for(lambda: ok.view == truth, 20)
        assert await wait_for(lambda: clients[1].status.errors >= 2, 20)
        assert wary.updates == 0
        assert "server identity" in (clients[1].status.last_error or "")
        # The CN client is not allowed when only the URI SAN is configured.
        assert await _gets_nothing(daemon.server.port,
                                   client_context(*pki["client"], pki["ca"])) == b""
        for c in clients:
            c.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await daemon.stop()

    asyncio.run(main())


def test_tls_option_errors_name_the_option(tmp_path: Path, pki: dict) -> None:
    none = PeerIdentity()
    assert check_tls_options(None, None, None, none, "typha") is False
    with pytest.raises(TLSConfigError, match="--tls-key, --tls-ca"):
        check_tls_options("c.pem", None, None, none, "typha")
    with pytest.raises(TLSConfigError, match="needs --tls-cert"):
        check_tls_options(None, None, None, PeerIdentity(common_name="x"), "typha")
    with pytest.raises(TLSConfigError, match="--tls-cert '/nope.pem'"):
        server_context("/nope.pem", pki["server"][1], pki["ca"])
    with pytest.raises(TLSConfigError, match="--tls-ca"):
        server_context(*pki["server"], str(tmp_path / "missing-ca.pem"))
