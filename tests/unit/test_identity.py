from devstack import certs
from latchkit.identity import Principal


def test_parse_known_kinds():
    p = Principal.parse("spiffe://latchkey/door/front-1")
    assert (p.kind, p.name) == ("door", "front-1")
    assert Principal.parse("spiffe://latchkey/role/admin").kind == "role"


def test_parse_rejects_foreign_or_malformed():
    assert Principal.parse("spiffe://other/role/admin") is None
    assert Principal.parse("spiffe://latchkey/robot/x") is None
    assert Principal.parse("spiffe://latchkey/door/") is None
    assert Principal.parse("spiffe://latchkey/door/a/b") is None


def test_issued_certificate_carries_uri_san(tmp_path):
    certs.create_ca(tmp_path)
    issued = certs.issue(tmp_path, tmp_path, "door", "lobby")
    assert certs.peer_identity(issued.cert_file.read_bytes()) == "spiffe://latchkey/door/lobby"
    assert (issued.key_file.stat().st_mode & 0o777) == 0o600
