"""Skips (or, where CI requires them, fails) the long-run tests when a real component is missing."""

from __future__ import annotations

import os
import shutil

import pytest

# The variable that makes each component compulsory (.ci/run sets them all).
_REQUIRED_BY = {
    "ghz": "TEST_REQUIRE_GHZ",
    "redis-server": "TEST_REQUIRE_REDIS",
    "nginx": "TEST_REQUIRE_NGINX",
    "go": "TEST_REQUIRE_GO",
    "protoc-gen-go": "TEST_REQUIRE_GO",
    "protoc-gen-go-grpc": "TEST_REQUIRE_GO",
    "promtool": "TEST_REQUIRE_PROMTOOL",
    "chromium": "TEST_REQUIRE_BROWSER",
    "chromedriver": "TEST_REQUIRE_BROWSER",
}


def require(*tools: str, postgres: bool = False) -> None:
    """Each tool on PATH (nginx also in /usr/sbin), and TEST_POSTGRES_URL set if `postgres`."""
    for tool in tools:
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            if os.environ.get(_REQUIRED_BY[tool]):
                pytest.fail(f"{tool} is not installed but {_REQUIRED_BY[tool]} is set")
            pytest.skip(f"{tool} is not installed: .ci/run installs it")
    if postgres and not os.environ.get("TEST_POSTGRES_URL"):
        if os.environ.get("TEST_REQUIRE_POSTGRES"):
            pytest.fail("TEST_POSTGRES_URL is not set but TEST_REQUIRE_POSTGRES is")
        pytest.skip("no PostgreSQL server: set TEST_POSTGRES_URL (.ci/run does)")
