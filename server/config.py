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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.calls import Role
from server.case_vault import CaseVault, parse_key
from server.rate_limits import parse_limits
from server.secret import env_ring
from server.store.retention import Retention


class ProviderSettings(BaseModel):
    """An OpenAI-compatible provider besides the default one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    api_key: SecretStr | None = None


# The longest any retention may be: "keep them" without reaching dates before 1970.
_CENTURY_DAYS = 36_525


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
        description="The active server secret: keys API-key hashes, the audit chain and the hash of each case. "
        "Unset: the ring is read from secret_key_file, or generated there on first start. Set it (same value) "
        "on every replica.",
    )
    secret_keys_verify_only: SecretStr | None = Field(
        default=None,
        description="With secret_key: older (or next) server secrets, comma-separated, each exactly as it was "
        "set: they verify API keys and audit chains but key nothing new (docs/runbooks/key-rotation.md).",
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description="32 random bytes, base64 (openssl rand -base64 32): store each case encrypted "
        "(AES-256-GCM) so that Explain can take a classification id. Unset: no case is stored.",
    )
    encryption_keys_decrypt_only: SecretStr | None = Field(
        default=None,
        description="With encryption_key: older (or next) encryption keys, comma-separated base64: they open "
        "the stored cases they sealed but seal nothing new (docs/runbooks/key-rotation.md).",
    )
    secret_key_file: Path = Field(
        default=Path("triage-secret.key"),
        description="The server secret ring's file when secret_key is unset (mode 0600; generated on first start; "
        "changed by `triage-server secret`).",
    )
    workers: int = Field(
        default=1,
        ge=0,
        description="Server processes sharing the port (SO_REUSEPORT); 0 means one per CPU the container's "
        "CPU limit allows.",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="On SIGTERM, how long in-flight calls may take to finish."
    )
    danger_zone_policy: Literal["up_triage", "flag_only", "learned"] = Field(
        default="learned",
        description=(
            "ESI decision point D: raise danger-zone cases to ESI 2, keep ESI 3 and flag them, or raise them "
            "when the learned estimate of a critical outcome is high enough (the handbook's 'consider')."
        ),
    )
    audit_max_batch_records: int = Field(
        default=512, ge=1, description="Most audit records written in one transaction (group commit)."
    )
    audit_max_pending_records: int = Field(
        default=10_000,
        ge=1,
        description="Records waiting for the audit store before calls are refused with UNAVAILABLE.",
    )
    stored_case_retention_days: int = Field(
        default=30,
        ge=1,
        le=_CENTURY_DAYS,
        description="Stored (encrypted) cases are deleted this many days after classification (at most a century).",
    )
    usage_retention_days: int = Field(
        default=400,
        ge=1,
        le=_CENTURY_DAYS,
        description="Usage detail (per key, day, step and backend) is kept this many days (at most a century).",
    )
    audit_retention_days: int = Field(
        default=7 * 365 + 2,
        ge=1,
        le=_CENTURY_DAYS,
        description="Audit records are kept this many days (7 years by default, at most a century).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")

    # Identity
    api_key_reload_seconds: float = Field(
        default=2.0,
        gt=0,
        le=5,
        description="How often each process reloads API keys; a revoked key stops working within this time.",
    )
    anonymous_demo: bool = Field(
        default=False,
        description="Let callers without credentials in with the demo role, limited per client IP (a public demo).",
    )
    oidc_issuer: str | None = Field(default=None, description="OIDC issuer whose tokens are accepted (iss claim).")
    oidc_audience: str | None = Field(default=None, description="The aud claim OIDC tokens must carry.")
    oidc_jwks_url: str | None = Field(default=None, description="Where the issuer publishes its signing keys (JWKS).")
    oidc_role_claim: str = Field(
        default="triage_role", description="Token claim holding the role (a string or a list of strings)."
    )
    oidc_clock_skew_seconds: float = Field(default=60.0, ge=0, le=300, description="Leeway on exp, nbf and iat.")

    # Rate limits, as the `limits` library writes them; a key may carry its own.
    rate_limit_demo: str = Field(default="20/day", description="Default limit of the demo role (and anonymous IPs).")
    rate_limit_clinician: str = Field(default="120/minute", description="Default limit of the clinician role.")
    rate_limit_service: str = Field(default="100/second", description="Default limit of the service role.")
    rate_limit_admin: str = Field(default="10/second", description="Default limit of the admin role.")
    rate_limit_gateway: str = Field(
        default="20/day", description="Default limit of the gateway role, counted per end user (IPv6 per /64)."
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db to share rate-limit counts between processes; unset: in-process counts.",
    )

    global_monthly_budget_usd: float = Field(
        default=20.0,
        ge=0,
        description="Initial spending limit on model calls per calendar month (UTC); then set through AdminService.",
    )

    # Model backends
    openai_base_url: str = Field(
        default="https://api.openai.com/v1",
        description="The default provider `openai`: any OpenAI-compatible chat-completions endpoint.",
    )
    openai_api_key: SecretStr | None = Field(default=None, description="API key of the default provider.")
    openai_providers: dict[str, ProviderSettings] = Field(
        default_factory=dict,
        description='More providers side by side, as JSON: {"local": {"base_url": "http://ollama:11434/v1"}} '
        "makes backends named local:<model>.",
    )
    model_max_seconds: float = Field(
        default=10.0, gt=0, description="Longest a model call may take, even when the caller allows more."
    )
    model_max_output_tokens: int = Field(default=400, ge=16, description="Most tokens a model may answer with.")
    model_max_connections: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most HTTP connections open to each model provider; calls beyond wait.",
    )
    circuit_failure_threshold: int = Field(
        default=5, ge=1, description="Failed model calls in a row after which a backend's circuit opens."
    )
    circuit_open_seconds: float = Field(
        default=30.0, gt=0, description="How long an open circuit skips the backend before one trial call."
    )

    cache_ttl_seconds: float = Field(
        default=300.0, ge=0, description="How long a classification is reused for the same case; 0 turns the cache off."
    )
    cache_max_entries: int = Field(default=10_000, ge=0, description="Most classifications kept in process.")

    # Deadlines
    classify_default_deadline_seconds: float = Field(
        default=2.0, gt=0, description="Deadline of a Classify call that sets none."
    )
    explain_default_deadline_seconds: float = Field(
        default=30.0, gt=0, description="Deadline of an Explain call that sets none."
    )
    default_deadline_seconds: float = Field(
        default=10.0, gt=0, description="Deadline of any other call that sets none."
    )
    max_deadline_seconds: float = Field(default=60.0, gt=0, description="No call runs longer than this.")
    min_deadline_seconds: float = Field(
        default=0.01, ge=0, description="Calls arriving with less time left are refused with DEADLINE_EXCEEDED."
    )

    # Observability
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus metrics on this port; unset: no metrics endpoint."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address of the metrics endpoint.")
    metrics_budget_per_key: bool = Field(
        default=False,
        description='Also export each key\'s model budget (triage_budget_*_usd{scope="key",key_id=...}): '
        "a series per key with a budget, so off by default; the global budget is always exported.",
    )
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/gRPC collector (http://host:4317) to export traces to; unset: no tracing."
    )

    # Transport
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain; with tls_key, serve TLS only.")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle; when set, callers must present a certificate it signed (mTLS)."
    )
    max_message_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Requests larger than this are refused before they are parsed."
    )

    # Overload and supervision
    max_in_flight_calls: int = Field(
        default=5_000,
        ge=1,
        description="Calls one process works on at once; past it, calls are refused at once with UNAVAILABLE "
        "and RetryInfo (retryable) instead of queueing. Health checks are never refused.",
    )
    overload_retry_after_seconds: float = Field(
        default=1.0, gt=0, description="The retry delay (RetryInfo) sent with a call refused for overload."
    )
    worker_restart_max_backoff_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A worker that dies is started again after a delay doubling from 0.5 s up to this; "
        "the delay resets once a worker has served for a minute.",
    )
    audit_probe_seconds: float = Field(
        default=1.0,
        gt=0,
        description="While audit records cannot be committed (Classify and Explain NOT_SERVING), how often "
        "the audit store is probed to find it back.",
    )

    @field_validator("encryption_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_key(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _rings(self) -> Settings:
        """Both key rings parse, so that a bad one stops the start with its variable named."""
        if self.secret_keys_verify_only is not None and self.secret_key is None:
            raise ValueError(
                "TRIAGE_SECRET_KEYS_VERIFY_ONLY needs TRIAGE_SECRET_KEY (with the ring file, put them in the file)"
            )
        if self.secret_key is not None:
            verify_only = self.secret_keys_verify_only
            env_ring(self.secret_key.get_secret_value(), verify_only.get_secret_value() if verify_only else None)
        if self.encryption_keys_decrypt_only is not None and self.encryption_key is None:
            raise ValueError("TRIAGE_ENCRYPTION_KEYS_DECRYPT_ONLY needs TRIAGE_ENCRYPTION_KEY (the active key)")
        self.case_vault()
        return self

    def case_vault(self) -> CaseVault | None:
        """The encryption key ring; None when no case is to be stored."""
        if self.encryption_key is None:
            return None
        others = self.encryption_keys_decrypt_only
        return CaseVault.from_text(self.encryption_key.get_secret_value(), others.get_secret_value() if others else "")

    @field_validator(
        "rate_limit_demo", "rate_limit_clinician", "rate_limit_service", "rate_limit_admin", "rate_limit_gateway"
    )
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_limits(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set TRIAGE_TLS_CERT and TRIAGE_TLS_KEY together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("TRIAGE_TLS_CLIENT_CA (mutual TLS) needs TRIAGE_TLS_CERT and TRIAGE_TLS_KEY")
        oidc = (self.oidc_issuer, self.oidc_audience, self.oidc_jwks_url)
        if any(oidc) and not all(oidc):
            raise ValueError("OIDC needs TRIAGE_OIDC_ISSUER, TRIAGE_OIDC_AUDIENCE and TRIAGE_OIDC_JWKS_URL together")
        return self

    def providers(self) -> dict[str, tuple[str, str]]:
        """Every model provider by name: (base URL, API key)."""
        default = ("openai", self.openai_base_url, self.openai_api_key)
        named = [(name, p.base_url, p.api_key) for name, p in self.openai_providers.items()]
        return {name: (url, key.get_secret_value() if key else "") for name, url, key in (default, *named)}

    def retention(self) -> Retention:
        return Retention(self.stored_case_retention_days, self.usage_retention_days, self.audit_retention_days)

    def role_rate_limits(self) -> dict[Role, str]:
        return {role: getattr(self, f"rate_limit_{role.value}") for role in Role}

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str] = os.environ) -> list[str]:
        """TRIAGE_* variables that configure nothing here (the client's and the web tier's own are known)."""
        known = {f"TRIAGE_{name.upper()}" for name in cls.model_fields} | CLIENT_VARIABLES
        return sorted(
            name
            for name in environ
            if name.startswith("TRIAGE_") and not name.startswith(WEB_PREFIX) and name not in known
        )


# Read by the client and the `triage` command, not by the server.
CLIENT_VARIABLES = frozenset({"TRIAGE_TARGET", "TRIAGE_API_KEY"})
# The web tier's (clients/web), which checks them itself: one environment may configure both processes.
WEB_PREFIX = "TRIAGE_WEB_"
