"""The server secret as a key ring: the active secret keys new API-key hashes and audit chains, the others only verify.

The ring is TRIAGE_SECRET_KEY (active) with TRIAGE_SECRET_KEYS_VERIFY_ONLY, or
the ring file TRIAGE_SECRET_KEY_FILE (generated, mode 0600, on first use). A
secret's id is derived from its value, so that an older release's single
secret is a ring of one with nothing to configure, and two processes can
never give one id to different secrets. Processes read the ring when they
start (docs/runbooks/key-rotation.md gives the rollout order).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.config import Settings

_SECRET_BYTES = 32
ACTIVE, VERIFY = "active", "verify"
_FILE_HEADER = (
    "# The server secret ring of triage-server: keep it private (mode 0600) and backed up apart from the data.\n"
    '# One secret a line: "active <secret>" keys new API-key hashes and audit chains (one line only);\n'
    '# "verify <secret>" only verifies. Change it with `triage-server secret rotate|activate|retire`.\n'
)


class KeyRingError(ValueError):
    """A key ring that cannot be used; the message says what to fix and never shows a secret."""


def secret_id(value: bytes) -> str:
    """The short public id of a secret (a fingerprint: it does not reveal the secret)."""
    return hashlib.sha256(b"triage-secret-id|" + value).hexdigest()[:8]


def new_secret() -> bytes:
    return secrets.token_hex(_SECRET_BYTES).encode()


@dataclass(frozen=True, slots=True, repr=False)
class SecretRing:
    """The active secret and the verify-only ones; ids are derived from the values."""

    active: bytes
    verify_only: tuple[bytes, ...] = ()
    # (id, secret) of each, the active one first: derived once, since every API key checked reads them.
    _entries: tuple[tuple[str, bytes], ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        values = (self.active, *self.verify_only)
        if any(not value.strip() for value in values):
            raise KeyRingError("a server secret is empty")
        entries = tuple((secret_id(value), value) for value in values)
        if len(dict(entries)) != len(values):
            raise KeyRingError("a server secret is in the ring twice (or two share an id: generate another)")
        object.__setattr__(self, "_entries", entries)

    def __repr__(self) -> str:
        return f"SecretRing(active={self.active_id}, verify_only={[id_ for id_, _ in self._entries[1:]]})"

    @property
    def active_id(self) -> str:
        return self._entries[0][0]

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        """(id, secret) of every secret, the active one first."""
        return iter(self._entries)

    def get(self, key_id: str) -> bytes | None:
        return next((value for id_, value in self if id_ == key_id), None)

    def with_active(self, key_id: str) -> SecretRing:
        """The ring with `key_id` active and the active one verify-only."""
        chosen = self.get(key_id)
        if chosen is None:
            raise KeyRingError(f"no server secret {key_id} in the ring")
        return SecretRing(chosen, tuple(value for _, value in self if value != chosen))

    def without(self, key_id: str) -> SecretRing:
        if key_id == self.active_id:
            raise KeyRingError(f"server secret {key_id} is the active one: activate another before retiring it")
        if self.get(key_id) is None:
            raise KeyRingError(f"no server secret {key_id} in the ring")
        return SecretRing(self.active, tuple(value for id_, value in self._entries[1:] if id_ != key_id))


def env_ring(active: str, verify_only: str | None) -> SecretRing:
    """The ring of TRIAGE_SECRET_KEY and the comma-separated TRIAGE_SECRET_KEYS_VERIFY_ONLY."""
    others = verify_only.split(",") if verify_only is not None else []
    if any(not value.strip() for value in others):
        raise KeyRingError("TRIAGE_SECRET_KEYS_VERIFY_ONLY has an empty entry: separate secrets with single commas")
    # Exactly as given, like TRIAGE_SECRET_KEY: a secret that came with a newline keeps it.
    return SecretRing(active.encode(), tuple(value.encode() for value in others))


def parse_ring_file(text: str, path: Path) -> SecretRing:
    """The ring in `path`'s text: state and secret lines, or an older release's single secret."""
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, words) for number, words in lines if words and not words[0].startswith("#")]
    if len(lines) == 1 and len(lines[0][1]) == 1:
        return SecretRing(lines[0][1][0].encode())
    active: list[bytes] = []
    verify_only: list[bytes] = []
    for number, words in lines:
        if len(words) != 2 or words[0] not in (ACTIVE, VERIFY):
            raise KeyRingError(f'{path} line {number}: expected "active <secret>" or "verify <secret>"')
        (active if words[0] == ACTIVE else verify_only).append(words[1].encode())
    if len(active) != 1:
        raise KeyRingError(f"{path} has {len(active)} active secrets; exactly one must be active")
    try:
        return SecretRing(active[0], tuple(verify_only))
    except KeyRingError as error:
        raise KeyRingError(f"{path}: {error}") from None


def ring_file(settings: Settings) -> Path | None:
    """The ring file `triage-server secret` edits; None when the ring is in the environment."""
    return None if settings.secret_key is not None else settings.secret_key_file


def load_secret_ring(settings: Settings) -> SecretRing:
    """The configured ring, else the one in secret_key_file, created (0600) with one secret on first use."""
    if settings.secret_key is not None:
        verify_only = settings.secret_keys_verify_only
        return env_ring(settings.secret_key.get_secret_value(), verify_only.get_secret_value() if verify_only else None)
    path = settings.secret_key_file
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        # O_EXCL: when two processes start at once, one creates and both read it.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    # One bare secret, as older releases write it: a rollback to one still reads the file.
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(new_secret() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return _read(path)


def write_ring_file(path: Path, ring: SecretRing) -> None:
    """Replaces the ring file atomically (a reader sees the old ring or the new one), mode 0600."""
    lines = [f"{ACTIVE if value == ring.active else VERIFY} {value.decode()}\n" for _, value in ring]
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(_FILE_HEADER + "".join(lines))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read(path: Path) -> SecretRing:
    text = path.read_text()
    if not text.strip():
        raise KeyRingError(f"{path} is empty; delete it to generate a new secret")
    return parse_ring_file(text, path)
