"""Entrypoint: TLS for both listeners from the same settings — a certificate chain and its key,
and with a client CA, client certificates required (mTLS) on gRPC and HTTP alike."""

from __future__ import annotations

import ssl

import grpc

from turnstream.config import Settings


def grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the gRPC port, with client certificates required when a client CA is set."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def http_tls(settings: Settings) -> ssl.SSLContext | None:
    """The same TLS (and mTLS) for the HTTP port."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
