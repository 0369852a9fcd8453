"""Key rings: parsing, and bad rings refused at start with the variable or file line named, never a secret."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from server.case_vault import CaseVault
from server.config import Settings
from server.secret import KeyRingError, SecretRing, load_secret_ring, parse_ring_file, secret_id, write_ring_file

OLD, NEW = b"a" * 64, b"b" * 64
RING_FILE = Path("triage-secret.key")


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_an_older_releases_single_secret_is_a_ring_of_one_with_a_derived_id() -> None:
    ring = parse_ring_file(OLD.decode() + "\n", RING_FILE)

    assert ring.active == OLD
    assert ring.verify_only == ()
    assert ring.active_id == secret_id(OLD) != secret_id(NEW)
    assert len(ring.active_id) == 8


def test_a_ring_file_round_trips_private(tmp_path: Path) -> None:
    path = tmp_path / "ring.key"
    write_ring_file(path, SecretRing(NEW, (OLD,)))

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret_ring(Settings(secret_key_file=path)) == SecretRing(NEW, (OLD,))
    assert OLD.decode() not in repr(parse_ring_file(path.read_text(), path))


def test_activating_and_retiring_move_secrets_between_states() -> None:
    ring = SecretRing(OLD, (NEW,)).with_active(secret_id(NEW))
    assert ring == SecretRing(NEW, (OLD,))
    assert ring.without(secret_id(OLD)) == SecretRing(NEW)
    with pytest.raises(KeyRingError, match="is the active one"):
        ring.without(secret_id(NEW))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"active {OLD.decode()}\nactive {NEW.decode()}\n", "has 2 active secrets"),
        (f"verify {OLD.decode()}\n", "has 0 active secrets"),
        (f"active {OLD.decode()}\nretired {NEW.decode()}\n", "line 2: expected"),
        (f"active {OLD.decode()}\n{NEW.decode()}\n", "line 2: expected"),
        (f"active {OLD.decode()}\nverify {OLD.decode()}\n", "in the ring twice"),
        ("# only a comment\n", "has 0 active secrets"),
    ],
)
def test_a_bad_ring_file_is_refused_naming_the_file_and_not_the_secret(text: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message) as raised:
        parse_ring_file(text, RING_FILE)
    assert str(RING_FILE) in str(raised.value)
    assert OLD.decode() not in str(raised.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"secret_keys_verify_only": "old"}, "TRIAGE_SECRET_KEYS_VERIFY_ONLY needs TRIAGE_SECRET_KEY"),
        ({"secret_key": "new", "secret_keys_verify_only": "old,,older"}, "empty entry"),
        ({"secret_key": "new", "secret_keys_verify_only": "old,new"}, "in the ring twice"),
        ({"encryption_keys_decrypt_only": _key()}, "needs TRIAGE_ENCRYPTION_KEY"),
        ({"encryption_key": _key(), "encryption_keys_decrypt_only": f"{_key()},short"}, "entry 2 must be 32"),
    ],
)
def test_bad_rings_in_the_environment_are_refused_at_start(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**values)


def test_the_same_encryption_key_twice_is_refused() -> None:
    key = _key()
    with pytest.raises(ValidationError, match="in the ring twice"):
        Settings(encryption_key=key, encryption_keys_decrypt_only=key)  # type: ignore[arg-type]


def test_the_vault_seals_with_the_active_key_and_opens_with_the_one_that_sealed() -> None:
    old, new = _key(), _key()
    before = CaseVault.from_text(old)
    nonce, sealed = before.seal("01ARZ3NDEKTSV4RRFFQ69G5FAV", b"case")
    after = Settings(encryption_key=new, encryption_keys_decrypt_only=old).case_vault()  # type: ignore[arg-type]
    assert after is not None

    assert after.fingerprint != before.fingerprint
    assert after.open(before.fingerprint, "01ARZ3NDEKTSV4RRFFQ69G5FAV", nonce, sealed) == b"case"
    nonce, resealed = after.seal("01ARZ3NDEKTSV4RRFFQ69G5FAV", b"case")
    # Sealed under the new key: the old ring alone cannot open it.
    assert before.open(after.fingerprint, "01ARZ3NDEKTSV4RRFFQ69G5FAV", nonce, resealed) is None
