"""Cases encrypted at rest, so that Explain can take a classification id instead of the case.

AES-256-GCM (cryptography's AESGCM) with a random 96-bit nonce per case and the
classification id as associated data, so a ciphertext cannot be moved to
another record. The key comes from TRIAGE_ENCRYPTION_KEY (32 bytes, base64);
without one, no case is stored. Each row names the key's fingerprint, so that
a rotated key can be told from a wrong one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

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


class CaseVault:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.fingerprint = hashlib.sha256(b"triage-case-key|" + key).hexdigest()[:16]

    def seal(self, classification_id: str, case: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of `case`, bound to `classification_id`."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, case, classification_id.encode())

    def open(self, classification_id: str, nonce: bytes, ciphertext: bytes) -> bytes | None:
        """The case, or None when this key did not seal it for this id (or it was altered)."""
        try:
            return self._aead.decrypt(nonce, ciphertext, classification_id.encode())
        except InvalidTag:
            return None
