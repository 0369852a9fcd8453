"""The server secret: configured, or generated once and kept in a private file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from server.config import Settings

_SECRET_BYTES = 32


def load_server_secret(settings: Settings) -> bytes:
    """The configured secret, else the one in secret_key_file, created (0600) on first use."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
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
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(_SECRET_BYTES) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return _read(path)


def _read(path: Path) -> bytes:
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"{path} is empty; delete it to generate a new secret")
    return value.encode()
