"""Cases encrypted at rest, so that Explain can take a classification id instead of the case.

AES-256-GCM (cryptography's AESGCM) with a random 96-bit nonce per case and the
classification id as associated data, so a ciphertext cannot be moved to
another record. The keys form a ring: TRIAGE_ENCRYPTION_KEY (32 bytes,
base64) seals new cases, TRIAGE_ENCRYPTION_KEYS_DECRYPT_ONLY only opens the
cases they sealed; without an active key, no case is stored. Each row names
its key's fingerprint, which picks the key that opens it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12
KEY_BYTES = 32


def parse_key(text: str) -> bytes:
    """The key from its base64 (standard or URL-safe) text; ValueError when it is not 32 bytes."""
    try:
        key = base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), altchars=b"-_", validate=False)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError("must be 32 random bytes in base64, e.g. from `openssl rand -base64 32`")
    return key


def fingerprint(key: bytes) -> str:
    """The key's public id, stored with each case it seals (it does not reveal the key)."""
    return hashlib.sha256(b"triage-case-key|" + key).hexdigest()[:16]


class CaseVault:
    """Seals with the active key; opens with whichever key of the ring sealed the case."""

    def __init__(self, active: bytes, decrypt_only: Sequence[bytes] = ()) -> None:
        self.fingerprint = fingerprint(active)
        self._keys = {fingerprint(key): AESGCM(key) for key in (active, *decrypt_only)}
        if len(self._keys) != 1 + len(decrypt_only):
            raise ValueError("an encryption key is in the ring twice")

    @classmethod
    def from_text(cls, active: str, decrypt_only: str = "") -> CaseVault:
        """The ring of the active key and comma-separated others, all base64; ValueError naming the bad one."""
        try:
            key = parse_key(active)
        except ValueError as error:
            raise ValueError(f"TRIAGE_ENCRYPTION_KEY {error}") from None
        others = []
        for position, text in enumerate(decrypt_only.split(",") if decrypt_only else [], 1):
            try:
                others.append(parse_key(text))
            except ValueError as error:
                raise ValueError(f"TRIAGE_ENCRYPTION_KEYS_DECRYPT_ONLY entry {position} {error}") from None
        return cls(key, others)

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """Every key's fingerprint, the active one first."""
        return tuple(self._keys)

    def seal(self, classification_id: str, case: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of `case` under the active key, bound to `classification_id`."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce, self._keys[self.fingerprint].encrypt(nonce, case, classification_id.encode())

    def open(self, key_fingerprint: str, classification_id: str, nonce: bytes, ciphertext: bytes) -> bytes | None:
        """The case, or None when no key of the ring has that fingerprint or it was altered."""
        aead = self._keys.get(key_fingerprint)
        if aead is None:
            return None
        try:
            return aead.decrypt(nonce, ciphertext, classification_id.encode())
        except InvalidTag:
            return None
