"""mTLS credentials for servers and clients.

Servers require a client certificate signed by the configured CA and re-read
their own certificate, key and CA bundle when the files change on disk, so a
rotated certificate is picked up without a restart.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from latchkit.settings import TlsSettings


class MissingCertificateError(FileNotFoundError):
    """A configured certificate or key file does not exist."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise MissingCertificateError(
            f"TLS file {path} not found; run `make certs` (or `latchkey certs init`)"
        ) from exc


class _ReloadingConfig:
    """Builds a server certificate configuration, rebuilt when any file's mtime changes.

    gRPC calls the fetcher on every new client connection; a stat of three
    files is cheap next to a TLS handshake.
    """

    def __init__(self, tls: TlsSettings) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._stamp = self._mtimes()
        self.current = self._build()

    def _mtimes(self) -> tuple[float, ...]:
        return tuple(
            p.stat().st_mtime_ns if p.exists() else 0
            for p in (self._tls.ca_file, self._tls.cert_file, self._tls.key_file)
        )

    def _build(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(_read(self._tls.key_file), _read(self._tls.cert_file))],
            root_certificates=_read(self._tls.ca_file),
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._mtimes()
        if stamp == self._stamp:
            return None
        with self._lock:
            try:
                config = self._build()
            except (OSError, ValueError):
                # A half-written file during rotation: keep serving the old pair.
                return None
            self._stamp, self.current = stamp, config
            return config


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    config = _ReloadingConfig(tls)
    return grpc.dynamic_ssl_server_credentials(
        config.current, config.fetch, require_client_authentication=True
    )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


def secure_channel(target: str, tls: TlsSettings, options: list | None = None) -> grpc.aio.Channel:
    """An asyncio mTLS channel; the peer must present a certificate for `localhost` or its IP."""
    return grpc.aio.secure_channel(target, channel_credentials(tls), options=options or [])
