"""The `latchkey` command line: certificates for new identities."""

from typer.testing import CliRunner

from latchkit import certs
from latchkit.cli import app


def test_certs_init_then_issue_door_certificate(tmp_path, monkeypatch):
    monkeypatch.setenv("LATCHKEY_CERTS_DIR", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["certs", "init"]).exit_code == 0
    result = runner.invoke(app, ["certs", "issue", "door", "lobby-2", "--days", "30"])
    assert result.exit_code == 0, result.output
    cert = (tmp_path / "door-lobby-2.pem").read_bytes()
    assert certs.peer_identity(cert) == "spiffe://latchkey/door/lobby-2"


def test_certs_issue_rejects_unknown_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("LATCHKEY_CERTS_DIR", str(tmp_path))
    runner = CliRunner()
    runner.invoke(app, ["certs", "init"])
    result = runner.invoke(app, ["certs", "issue", "robot", "r2"])
    assert result.exit_code != 0
    assert "identity kind" in result.output
