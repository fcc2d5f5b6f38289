"""gRPC credentials from :class:`~strata.core.settings.TlsSettings`: TLS and mTLS, or plain text.

The PEM files are read once, when a process starts: a missing, unreadable or
non-PEM file is a :class:`~strata.core.errors.ConfigError` naming the variable and
the path, instead of a handshake that fails later with no hint of which file.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from strata.core.errors import ConfigError
from strata.core.settings import TlsSettings

_PREFIX = "STRATA_TLS_"


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """TLS for a server (mTLS when ``client_ca_file`` is set); None means plain text."""
    if tls.cert_file is None and tls.key_file is None:
        if tls.client_ca_file is not None:
            raise ConfigError(
                f"{_PREFIX}CLIENT_CA_FILE is set but {_PREFIX}CERT_FILE and {_PREFIX}KEY_FILE "
                "are not: client certificates are checked only on a TLS server"
            )
        return None
    pair = (_pem(tls, "key_file"), _pem(tls, "cert_file"))
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=_pem(tls, "client_ca_file"), require_client_auth=True
    )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials | None:
    """TLS for a client that verifies servers by ``ca_file``; None means plain text."""
    presents = tls.client_cert_file is not None or tls.client_key_file is not None
    if tls.ca_file is None:
        if presents:
            which = "CLIENT_CERT_FILE" if tls.client_cert_file else "CLIENT_KEY_FILE"
            raise ConfigError(
                f"{_PREFIX}{which} is set but {_PREFIX}CA_FILE is not: "
                "set the CA bundle that signed the servers' certificates"
            )
        return None
    root = _pem(tls, "ca_file")
    if not presents:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=_pem(tls, "client_key_file"),
        certificate_chain=_pem(tls, "client_cert_file"),
    )


def _pem(tls: TlsSettings, field: str) -> bytes:
    """The content of the PEM file in ``field``, which must be set and readable."""
    variable = _PREFIX + field.upper()
    path: Path | None = getattr(tls, field)
    if path is None:
        raise ConfigError(f"{variable} is not set: it is needed with the other TLS files")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}={str(path)!r}: cannot read it: {exc.strerror}") from None
    if b"-----BEGIN " not in content:
        raise ConfigError(f"{variable}={str(path)!r}: not a PEM file (no '-----BEGIN' line)")
    return content
