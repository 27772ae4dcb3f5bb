"""SDK: the gRPC channel every SDK call uses, with reconnect settings that suit it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

# The channel's own reconnect backoff defaults to 1 s growing to 120 s: after a server restart
# that would hold every retry back for minutes. Keep it in step with the SDK's backoff.
DEFAULT_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 5_000,
}


# Sent on Append: this client reopens a stream turned away (REBALANCE) on a new connection, so
# a `serve --workers N` process holding more streams than another may turn it away.
REBALANCE_HEADER = "turnstream-rebalance"


def own_connection(extra: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """`extra` plus a subchannel pool of the channel's own. By default grpc shares one TCP
    connection among every channel of a process with the same target and options; a stream
    turned away must come back on a connection of its own (a new source port, a new hash)."""
    return [*(extra or ()), ("grpc.use_local_subchannel_pool", 1)]


def channel_options(extra: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """The SDK's defaults, overridden by the caller's options."""
    return list({**DEFAULT_CHANNEL_OPTIONS, **dict(extra or ())}.items())


def channel_for(
    target: str,
    options: Sequence[tuple[str, Any]] | None,
    credentials: grpc.ChannelCredentials | None,
) -> grpc.aio.Channel:
    merged = channel_options(options)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=merged)
    return grpc.aio.secure_channel(target, credentials, options=merged)


def tls_credentials(
    root_certificates: bytes | str | Path | None = None,
    *,
    client_certificate: bytes | str | Path | None = None,
    client_key: bytes | str | Path | None = None,
) -> grpc.ChannelCredentials:
    """Credentials for a server with TLS: `root_certificates` (PEM, bytes or a file) verifies
    it (None: the system's roots); a client certificate and its key answer mTLS. Pass the
    result as `credentials=` to StreamWriter, Client or SyncClient."""
    if (client_certificate is None) != (client_key is None):
        raise ValueError("client_certificate and client_key go together: mTLS needs both")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(root_certificates),
        private_key=_pem(client_key),
        certificate_chain=_pem(client_certificate),
    )


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()
