"""The `latchkey` command line: certificates for new identities."""

from typer.testing import CliRunner

from devstack import certs
from ops.cli import app


def test_certs_init_then_issue_door_certificate(tmp_path, monkeypatch):
    monkeypatch.setenv("LATCHKEY_CERTS_DIR", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["certs", "init"]).exit_code == 0
    door = "5f0c1d4e-8a7b-4c2d-9e1f-0a1b2c3d4e5f"
    result = runner.invoke(app, ["certs", "issue", "door", door, "--days", "30"])
    assert result.exit_code == 0, result.output
    cert = (tmp_path / f"door-{door}.pem").read_bytes()
    assert certs.peer_identity(cert) == f"spiffe://latchkey/door/{door}"


def test_certs_issue_refuses_identities_no_server_accepts(tmp_path, monkeypatch):
    monkeypatch.setenv("LATCHKEY_CERTS_DIR", str(tmp_path))
    runner = CliRunner()
    runner.invoke(app, ["certs", "init"])
    for args, words in ((["door", "lobby-2"], "not a door id"), (["role", "superuser"], "no role 'superuser'"),
                        (["service", "billing"], "no service 'billing'")):
        result = runner.invoke(app, ["certs", "issue", *args])
        assert result.exit_code == 2 and words in result.output, result.output
        assert not (tmp_path / f"{args[0]}-{args[1]}.pem").exists()


def test_certs_issue_rejects_unknown_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("LATCHKEY_CERTS_DIR", str(tmp_path))
    runner = CliRunner()
    runner.invoke(app, ["certs", "init"])
    result = runner.invoke(app, ["certs", "issue", "robot", "r2"])
    assert result.exit_code != 0
    assert "identity kind" in result.output
