"""TLS termination: the generated CA, the handshake, the minimum version, and client certificates."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.tls import ensure_certificates, issue, make_ca, server_context


def test_dev_certificates_are_made_once_with_private_keys(tmp_path: Path) -> None:
    """The local CA and server certificate are made on first use, keys 0600, and reused after."""
    settings = Settings.load(None, state_dir=tmp_path)
    paths = ensure_certificates(settings)
    assert paths.ca_cert is not None
    for key in (paths.key, tmp_path / "tls" / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    before = paths.cert.read_bytes()
    assert ensure_certificates(settings).cert.read_bytes() == before
    # a new hostname re-issues the server certificate from the same CA
    ensure_certificates(Settings.load(None, state_dir=tmp_path, tls={"hostnames": ["gw.example"]}))
    assert paths.cert.read_bytes() != before


def test_missing_configured_certificate_fails_fast(tmp_path: Path) -> None:
    """A configured certificate that does not exist is a configuration error naming it."""
    settings = Settings.load(None, tls={"cert_file": tmp_path / "no.pem", "key_file": tmp_path / "no-key.pem"})
    with pytest.raises(ConfigError, match=r"no\.pem"):
        ensure_certificates(settings)


async def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10)
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    return str(version)


async def test_handshake_and_minimum_version(live) -> None:
    """Clients that verify the CA connect; a TLS 1.2-only client is refused when the floor is 1.3."""
    server = live(tls={"min_version": "1.3"})
    ctx = server.ssl_context()
    assert await _handshake(server.port, ctx) == "TLSv1.3"
    old = server.ssl_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionResetError)):  # the server alerts, or just resets
        await _handshake(server.port, old)


async def test_default_floor_is_tls12(live) -> None:
    """With the default settings a TLS 1.2 client is served."""
    server = live()
    ctx = server.ssl_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(server.port, ctx) == "TLSv1.2"
    async with server.client() as c:
        assert (await c.get("/healthz")).status_code == 200


async def test_mutual_tls(live, tmp_path: Path) -> None:
    """With client_auth required, a client certificate from the configured CA is accepted, none refused."""
    clients = tmp_path / "clients"
    ca_cert, ca_key = make_ca(clients)
    issue(ca_cert, ca_key, clients / "svc.pem", clients / "svc-key.pem", (), client=True, common_name="svc-a")
    server = live(tls={"client_auth": "required", "client_ca_file": ca_cert})
    ctx = server.ssl_context()
    ctx.load_cert_chain(clients / "svc.pem", clients / "svc-key.pem")
    async with httpx.AsyncClient(verify=ctx, base_url=server.url) as c:
        assert (await c.get("/healthz")).status_code == 200
    async with server.client() as c:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await c.get("/healthz")
    # a certificate from another CA is refused too
    other = tmp_path / "other"
    o_cert, o_key = make_ca(other)
    issue(o_cert, o_key, other / "x.pem", other / "x-key.pem", (), client=True, common_name="intruder")
    bad = server.ssl_context()
    bad.load_cert_chain(other / "x.pem", other / "x-key.pem")
    async with httpx.AsyncClient(verify=bad, base_url=server.url) as c:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await c.get("/healthz")


def test_bad_client_ca_is_a_config_error(tmp_path: Path) -> None:
    """An unreadable client CA bundle fails at start with the setting's name."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    settings = Settings.load(None, state_dir=tmp_path, tls={"client_auth": "required", "client_ca_file": bad})
    with pytest.raises(ConfigError, match="client_ca_file"):
        server_context(settings.tls, ensure_certificates(settings))


async def test_plain_http_only_when_configured(live) -> None:
    """tls.enabled=false serves plain HTTP (for a mesh that terminates TLS)."""
    server = live(tls={"enabled": False})
    assert server.url.startswith("http://")
    async with httpx.AsyncClient(base_url=server.url) as c:
        assert (await c.get("/healthz")).status_code == 200
