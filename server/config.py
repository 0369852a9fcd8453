"""The server's configuration: one typed class, read from TRIAGE_* variables.

Every setting has a default that works on a laptop (`make run`); units are in
the names. TRIAGE_* variables that are no setting (a typo such as TRIAGE_PROT)
are reported at startup by `unknown_variables`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of `triage-server`, from environment variables prefixed TRIAGE_."""

    model_config = SettingsConfigDict(env_prefix="TRIAGE_", extra="forbid", frozen=True)

    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on; 0.0.0.0 or [::] to accept remote callers.",
    )
    port: int = Field(default=50051, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    database_url: str = Field(
        default="sqlite:///triage.db",
        description="SQLAlchemy URL of the audit store: a SQLite file (default, in the working directory) "
        "or postgresql://user:pass@host/db.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Server secret keying the audit hash of each case. Unset: read from secret_key_file, "
        "or generated there on first start. Set it (same value) on every replica.",
    )
    secret_key_file: Path = Field(
        default=Path("triage-secret.key"), description="Where the generated server secret is kept (mode 0600)."
    )
    workers: int = Field(
        default=1,
        ge=0,
        description="Server processes sharing the port (SO_REUSEPORT); 0 means one per CPU core.",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="On SIGTERM, how long in-flight calls may take to finish."
    )
    danger_zone_policy: Literal["up_triage", "flag_only"] = Field(
        default="up_triage",
        description="ESI decision point D: raise danger-zone cases to ESI 2, or keep ESI 3 and flag them.",
    )
    audit_max_batch_records: int = Field(
        default=512, ge=1, description="Most audit records written in one transaction (group commit)."
    )
    audit_max_pending_records: int = Field(
        default=10_000,
        ge=1,
        description="Records waiting for the audit store before calls are refused with UNAVAILABLE.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str] = os.environ) -> list[str]:
        """TRIAGE_* variables that configure nothing here (the client's own are known)."""
        known = {f"TRIAGE_{name.upper()}" for name in cls.model_fields} | CLIENT_VARIABLES
        return sorted(name for name in environ if name.startswith("TRIAGE_") and name not in known)


# Read by the client and the `triage` command, not by the server.
CLIENT_VARIABLES = frozenset({"TRIAGE_TARGET", "TRIAGE_API_KEY"})
