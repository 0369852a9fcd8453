"""Settings refuse inconsistent or unparsable configuration at startup, naming the variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from interceptors.auth import peer_address
from server.calls import Role
from server.config import Settings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rate_limit_demo": "twenty a day"}, "rate_limit_demo"),
        ({"tls_cert": Path("server.pem")}, "TRIAGE_TLS_CERT and TRIAGE_TLS_KEY together"),
        ({"tls_client_ca": Path("ca.pem")}, "mutual TLS"),
        ({"oidc_issuer": "https://accounts.example.org"}, "TRIAGE_OIDC_AUDIENCE"),
        ({"api_key_reload_seconds": 30}, "api_key_reload_seconds"),
        ({"max_message_bytes": 10}, "max_message_bytes"),
    ],
)
def test_inconsistent_settings_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**values)


def test_rate_limits_by_role_come_from_the_settings() -> None:
    settings = Settings(rate_limit_service="10/second;1000/hour")

    assert settings.role_rate_limits()[Role.SERVICE] == "10/second;1000/hour"
    assert settings.role_rate_limits()[Role.DEMO] == "20/day"


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.7:5123", "10.0.0.7"),
        ("ipv6:[::1]:5123", "::1"),
        ("ipv6:[2001:db8::5]:443", "2001:db8::5"),
        ("unix:/run/triage.sock", "/run/triage.sock"),
    ],
)
def test_peer_addresses_are_read_from_grpc_peer_strings(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {line.split("|")[1].strip() for line in readme.splitlines() if line.startswith("| `TRIAGE_")}

    assert {f"`TRIAGE_{name.upper()}`" for name in Settings.model_fields} == rows
