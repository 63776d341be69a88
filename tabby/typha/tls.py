"""TLS for Typha, the way Calico does it: both sides present certificates signed by a shared
CA, and each side also checks WHO the peer is, by the certificate's Common Name or a URI
Subject Alternative Name (Typha's ClientCN/ClientURISAN; the agent's TyphaCN/TyphaURISAN).
When both a CN and a URI SAN are configured, matching either one is enough.

Host names are not checked (Typha is addressed by IP, and the identity check above is what
matters), so `check_hostname` is off on the client side.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class TLSConfigError(ValueError):
    """A TLS option is missing or unusable; the message names the option."""


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What the peer certificate must carry; empty = any certificate from the CA."""

    common_name: str | None = None
    uri_san: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.common_name or self.uri_san)

    def check(self, cert: Mapping[str, Any] | None) -> str | None:
        """None when the certificate is acceptable, else why not (for the log)."""
        if not cert:
            return "no peer certificate"
        if not self.configured:
            return None
        cns = peer_common_names(cert)
        uris = peer_uri_sans(cert)
        if self.common_name and self.common_name in cns:
            return None
        if self.uri_san and self.uri_san in uris:
            return None
        wanted = " or ".join(
            w for w in (self.common_name and f"CN={self.common_name}",
                        self.uri_san and f"URI SAN {self.uri_san}") if w
        )  # fmt: skip
        return f"certificate (CN {sorted(cns) or '-'}, URI SANs {sorted(uris) or '-'}) is not {wanted}"


def peer_common_names(cert: Mapping[str, Any]) -> set[str]:
    out = set()
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                out.add(value)
    return out


def peer_uri_sans(cert: Mapping[str, Any]) -> set[str]:
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"}


def _load(ctx: ssl.SSLContext, cert: str, key: str, ca: str, what: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"{what} --tls-cert {cert!r} / --tls-key {key!r}: {exc}") from None
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"{what} --tls-ca {ca!r}: {exc}") from None


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS 1.2+ server context that REQUIRES a client certificate signed by `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, cert, key, ca, "typha")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS 1.2+ client context presenting `cert` and verifying the server against `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # identity is checked by PeerIdentity, not by host name
    _load(ctx, cert, key, ca, "typha client")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def check_tls_options(
    cert: str | None, key: str | None, ca: str | None, identity: PeerIdentity, side: str
) -> bool:
    """True when TLS is configured; raises TLSConfigError for a half-configured set."""
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        if identity.configured:
            raise TLSConfigError(f"{side}: a CN/URI SAN check needs --tls-cert, --tls-key, --tls-ca")
        return False
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise TLSConfigError(f"{side}: TLS needs {', '.join(missing)} as well")
    return True
