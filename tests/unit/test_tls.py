"""gRPC over TLS and mTLS from settings, with certificates made for the test.

What operators rely on: with a certificate configured the server speaks TLS only,
a client verifies it against the configured CA, and with a client CA configured a
caller without a certificate signed by it is refused. A wrong file is named at start.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.core.errors import ConfigError
from strata.core.rpc import RpcServer, channel
from strata.core.rpc.tls import channel_credentials, server_credentials
from strata.core.settings import AuthSettings, TlsSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
BOUND = 10.0
"""Bound on one call: a guard against hanging, not a timing check."""
TOKENS = {"ops-token": {"principal": "ops", "roles": ["admin"]}}
CLIENT = AuthSettings(tokens=TOKENS, client_token="ops-token")


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


class Authority:
    """A certificate authority made for the test; it signs server and client certificates."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = self._builder(self.name, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        self.cert = folder / f"{name}.pem"
        self.cert.write_bytes(_pem(cert.sign(self.key, hashes.SHA256())))

    def issue(self, name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = self._builder(subject, key.public_key())
        if server:
            addresses = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName(name)]
            builder = builder.add_extension(x509.SubjectAlternativeName(addresses), critical=False)
        issued = Issued(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        issued.cert.write_bytes(_pem(builder.sign(self.key, hashes.SHA256())))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Pki:
    ca: Authority
    stranger: Authority
    """A CA nobody trusts."""
    server: Issued
    client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = Authority(folder, "strata-test-ca"), Authority(folder, "stranger-ca")
    return Pki(
        ca, stranger, ca.issue("localhost", server=True), ca.issue("ci-client", server=False)
    )


async def _serve(tls: TlsSettings) -> AsyncIterator[str]:
    server = RpcServer([], AuthSettings(tokens=TOKENS), credentials=server_credentials(tls))
    port = await server.start("127.0.0.1", 0)
    await server.set_serving(True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture(scope="module")
async def tls_server(pki: Pki) -> AsyncIterator[str]:
    async for address in _serve(TlsSettings(cert_file=pki.server.cert, key_file=pki.server.key)):
        yield address


@pytest.fixture(scope="module")
async def mtls_server(pki: Pki) -> AsyncIterator[str]:
    tls = TlsSettings(
        cert_file=pki.server.cert, key_file=pki.server.key, client_ca_file=pki.ca.cert
    )
    async for address in _serve(tls):
        yield address


async def _health(ch: grpc.aio.Channel) -> int:
    async with ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=BOUND
        )
    status: int = reply.status
    return status


def _tls_channel(address: str, tls: TlsSettings) -> grpc.aio.Channel:
    return channel(address, CLIENT, credentials=channel_credentials(tls))


async def _refused(ch: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(ch)
    code: grpc.StatusCode = caught.value.code()
    return code


async def test_a_tls_server_answers_a_client_that_trusts_its_ca(tls_server: str, pki: Pki) -> None:
    assert await _health(_tls_channel(tls_server, TlsSettings(ca_file=pki.ca.cert))) == SERVING


async def test_a_tls_server_refuses_a_plain_text_client(tls_server: str) -> None:
    assert await _refused(channel(tls_server, CLIENT)) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_refuses_a_server_its_ca_did_not_sign(tls_server: str, pki: Pki) -> None:
    ch = _tls_channel(tls_server, TlsSettings(ca_file=pki.stranger.cert))
    assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_answers_a_client_with_a_certificate_from_the_client_ca(
    mtls_server: str, pki: Pki
) -> None:
    tls = TlsSettings(
        ca_file=pki.ca.cert, client_cert_file=pki.client.cert, client_key_file=pki.client.key
    )
    assert await _health(_tls_channel(mtls_server, tls)) == SERVING


async def test_mtls_refuses_a_client_without_a_certificate(mtls_server: str, pki: Pki) -> None:
    ch = _tls_channel(mtls_server, TlsSettings(ca_file=pki.ca.cert))
    assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_certificate_from_another_ca(mtls_server: str, pki: Pki) -> None:
    outsider = pki.stranger.issue("outsider", server=False)
    tls = TlsSettings(
        ca_file=pki.ca.cert, client_cert_file=outsider.cert, client_key_file=outsider.key
    )
    assert await _refused(_tls_channel(mtls_server, tls)) == grpc.StatusCode.UNAVAILABLE


def test_nothing_configured_means_plain_text() -> None:
    assert server_credentials(TlsSettings()) is None
    assert channel_credentials(TlsSettings()) is None


def test_a_missing_file_is_named_with_its_variable_and_path(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.key"
    with pytest.raises(ConfigError) as caught:
        server_credentials(TlsSettings(cert_file=pki.server.cert, key_file=missing))
    assert str(caught.value).startswith(f"STRATA_TLS_KEY_FILE={str(missing)!r}: cannot read it")


def test_a_file_that_is_not_pem_is_named(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "ca.der"
    garbage.write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(ConfigError, match=r"STRATA_TLS_CA_FILE=.*: not a PEM file"):
        channel_credentials(TlsSettings(ca_file=garbage))


def test_a_certificate_without_its_key_names_the_missing_variable(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="STRATA_TLS_KEY_FILE is not set"):
        server_credentials(TlsSettings(cert_file=pki.server.cert))


def test_a_client_ca_without_a_server_certificate_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="STRATA_TLS_CLIENT_CA_FILE is set but"):
        server_credentials(TlsSettings(client_ca_file=pki.ca.cert))


def test_a_client_certificate_without_a_ca_to_verify_servers_is_refused(pki: Pki) -> None:
    tls = TlsSettings(client_cert_file=pki.client.cert, client_key_file=pki.client.key)
    with pytest.raises(
        ConfigError, match="STRATA_TLS_CLIENT_CERT_FILE is set but STRATA_TLS_CA_FILE"
    ):
        channel_credentials(tls)
