"""Unlock's precomputed HMAC gives the same bytes as the one permissions stores."""

import hmac

import pytest

from latchkit.secret_hash import SecretHasher, hash_secret


@pytest.mark.parametrize("key", [b"k" * 32, bytes(range(64)), bytes(range(200)), b"\xff" * 65, b"short"])
@pytest.mark.parametrize("kind,secret", [(1, "abcdef0123456789"), (2, "1234"), (3, b"\x00\xff" * 100), (1, "ünïcode")])
def test_the_hasher_matches_hash_secret_and_hmac(key, kind, secret):
    data = secret.encode() if isinstance(secret, str) else secret
    expected = hmac.new(key, kind.to_bytes(2, "big") + data, "sha256").digest()
    assert hash_secret(key, kind, secret) == expected
    hasher = SecretHasher(key)
    assert hasher.hash(kind, secret) == expected
    assert hasher.hash(kind, secret) == expected  # the keyed states are copied, not consumed


def test_kinds_and_keys_separate_equal_secrets():
    hasher = SecretHasher(b"k" * 32)
    assert hasher.hash(1, "1234") != hasher.hash(2, "1234")
    assert SecretHasher(b"j" * 32).hash(1, "1234") != hasher.hash(1, "1234")
