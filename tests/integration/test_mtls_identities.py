"""Identities at the TLS edge: expired, revoked, foreign and rotated certificates."""

from __future__ import annotations

import datetime as dt
import shutil

import grpc
import pytest
from latchkey.access.v1 import access_pb2, access_pb2_grpc

from devstack import certs
from latchkit import server
from latchkit.revocation import RevocationList
from latchkit.settings import ServerSettings, TlsSettings


class _Revision(access_pb2_grpc.AccessServiceServicer):
    async def GetViewRevision(self, request, context):
        return access_pb2.GetViewRevisionResponse(applied_revision=42)


def _register(srv):
    access_pb2_grpc.add_AccessServiceServicer_to_server(_Revision(), srv)
    return ("latchkey.access.v1.AccessService",)


def _creds(ca: bytes, tls: TlsSettings) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(ca, tls.key_file.read_bytes(), tls.cert_file.read_bytes())


async def _call(port: int, creds: grpc.ChannelCredentials):
    async with grpc.aio.secure_channel(f"localhost:{port}", creds) as ch:
        return await access_pb2_grpc.AccessServiceStub(ch).GetViewRevision(
            access_pb2.GetViewRevisionRequest(), timeout=5
        )


@pytest.fixture
async def served(tmp_path, monkeypatch):
    """A server whose certificate files live in a private directory we can rotate."""
    home = tmp_path / "pki"
    certs.ensure_dev_certs(home)
    monkeypatch.setenv("LATCHKEY_REVOKED_SERIALS_FILE", str(home / "revoked.txt"))
    tls = TlsSettings(home / "ca.pem", home / "access.pem", home / "access-key.pem")
    settings = ServerSettings("127.0.0.1", 0, 0, 0.2, 64 * 1024, tls)
    running = await server.start(settings, server.ServiceSpec(name="probe", register=_register))
    yield running, home
    await running.stop(0.2)


async def test_valid_identity_is_served(served):
    running, home = served
    admin = TlsSettings(home / "ca.pem", home / "admin.pem", home / "admin-key.pem")
    reply = await _call(running.port, _creds(admin.ca_file.read_bytes(), admin))
    assert reply.applied_revision == 42


async def test_expired_certificate_is_refused(served):
    running, home = served
    # A certificate that was valid for one day, ten days ago.
    issued = certs.issue(
        home, home, "role", "admin", days=1, file_stem="expired",
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10),
    )
    creds = _creds((home / "ca.pem").read_bytes(), TlsSettings(home / "ca.pem", issued.cert_file, issued.key_file))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(running.port, creds)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_revoked_certificate_is_refused_without_restart(served):
    running, home = served
    issued = certs.issue(home, home, "role", "admin", file_stem="soon-revoked")
    tls = TlsSettings(home / "ca.pem", issued.cert_file, issued.key_file)
    creds = _creds(tls.ca_file.read_bytes(), tls)
    # Served before revocation...
    assert (await _call(running.port, creds)).applied_revision == 42
    # ...refused as unauthenticated once its serial is on the list.
    RevocationList(home / "revoked.txt").revoke(issued.cert_file.read_bytes(), "lost laptop")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(running.port, creds)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_rotated_server_certificate_is_used_without_restart(served, tmp_path):
    running, home = served
    # A new CA whose certificates the server does not know yet.
    new_ca = tmp_path / "new-ca"
    certs.create_ca(new_ca, common_name="Rotated CA")
    client = certs.issue(new_ca, new_ca, "role", "admin")
    client_tls = TlsSettings(new_ca / "ca.pem", client.cert_file, client.key_file)
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(running.port, _creds(client_tls.ca_file.read_bytes(), client_tls))
    # Rotate the server in place: trust both CAs, present a certificate from the new one.
    server_cert = certs.issue(new_ca, new_ca, "service", "access")
    (home / "ca.pem").write_bytes((home / "ca.pem").read_bytes() + (new_ca / "ca.pem").read_bytes())
    shutil.copy(server_cert.key_file, home / "access-key.pem")
    shutil.copy(server_cert.cert_file, home / "access.pem")
    # The next connection sees the rotated files.
    reply = await _call(running.port, _creds(client_tls.ca_file.read_bytes(), client_tls))
    assert reply.applied_revision == 42
