"""The web tier's configuration: one typed class, read from TRIAGE_* variables.

TRIAGE_TARGET is shared with the `triage` command; every other setting is
TRIAGE_WEB_*. Defaults work on a laptop next to `make run`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TARGET = "127.0.0.1:50051"


class WebSettings(BaseSettings):
    """Configuration of `triage-web`, from environment variables prefixed TRIAGE_WEB_ (and TRIAGE_TARGET)."""

    model_config = SettingsConfigDict(env_prefix="TRIAGE_WEB_", extra="forbid", frozen=True, populate_by_name=True)

    target: str = Field(
        default=DEFAULT_TARGET,
        validation_alias="TRIAGE_TARGET",
        description="host:port of the gRPC server (TRIAGE_TARGET, as for the `triage` command).",
    )
    target_tls: bool = Field(default=False, description="Call the gRPC server over TLS (system roots).")
    target_ca_file: Path | None = Field(
        default=None, description="Call the gRPC server over TLS, trusting this PEM CA bundle."
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on; 0.0.0.0 or :: for remote browsers.")
    port: int = Field(
        default=8080, ge=0, le=65535, description="Port to listen on; 0 picks a free one (the URL is printed)."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="API key with the gateway role: the demo calls Classify and Explain with it, forwarding each "
        "visitor's address. Without it the demo page says it is unavailable.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="Encrypts and authenticates session cookies, which hold the admin's credential: at least 32 "
        "characters (openssl rand -base64 48), the same on every web replica. Unset: a random one per process "
        "(sessions end when it restarts).",
    )
    session_seconds: int = Field(
        default=8 * 3600, ge=60, le=7 * 24 * 3600, description="How long an admin session lasts after sign-in."
    )
    sign_in_rate_limit: str = Field(
        default="5/minute;30/hour",
        description="Sign-in attempts allowed per client address (limits notation), per web process.",
    )
    oidc_issuer: str | None = Field(
        default=None, description="OIDC issuer for admin sign-in (the issuer the gRPC server trusts)."
    )
    oidc_client_id: str | None = Field(default=None, description="The web tier's OIDC client id.")
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="OIDC client secret, for a confidential client; unset for a public client (PKCE)."
    )
    oidc_scopes: str = Field(
        default="openid profile email",
        description="Scopes asked for; add the one whose access token the gRPC server accepts (its audience).",
    )
    oidc_bearer_token: str = Field(
        default="access_token",
        pattern="^(access_token|id_token)$",
        description="Which token of the sign-in calls the gRPC server: access_token, or id_token when the "
        "server's TRIAGE_OIDC_AUDIENCE is this client's id.",
    )
    public_url: str | None = Field(
        default=None,
        description="The URL browsers use (https://triage.example.org), behind a proxy that rewrites Host: "
        "the OIDC redirect URI and the origin that forms must come from.",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Proxies whose X-Forwarded-For/-Proto are trusted, comma-separated (uvicorn's "
        "forwarded_allow_ips); empty trusts none, so the demo's limit is per connecting address.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to read responses cross-origin (JSON list); empty keeps CORS closed.",
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain; with tls_key, serve HTTPS.")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$", description="Log level.")

    @field_validator("sign_in_rate_limit")
    @classmethod
    def _parses(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as error:
            raise ValueError(f"not a rate limit such as 5/minute;30/hour: {error}") from None
        return value

    @field_validator("oidc_issuer", "public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> WebSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TRIAGE_WEB_TLS_CERT and TRIAGE_WEB_TLS_KEY go together")
        if (self.oidc_issuer is None) != (self.oidc_client_id is None):
            raise ValueError("OIDC sign-in needs TRIAGE_WEB_OIDC_ISSUER and TRIAGE_WEB_OIDC_CLIENT_ID together")
        return self

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str] = os.environ) -> list[str]:
        """TRIAGE_WEB_* variables that configure nothing (a typo such as TRIAGE_WEB_PROT)."""
        known = {f"TRIAGE_WEB_{name.upper()}" for name in cls.model_fields if name != "target"}
        return sorted(name for name in environ if name.startswith("TRIAGE_WEB_") and name not in known)
