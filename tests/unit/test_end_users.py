"""The forwarded end-user address: which network it counts by, when it is refused, and what is kept of it."""

from __future__ import annotations

import ipaddress

import pytest

from server.end_users import END_USER_ADDRESS_FIELD, EndUsers, end_user_network
from server.errors import InvalidArgument
from triage_client import RateLimit


def forwarded(*addresses: str) -> list[tuple[str, str]]:
    return [("authorization", "Bearer x"), *(("x-end-user-address", address) for address in addresses)]


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        (" 203.0.113.7 ", "203.0.113.7/32"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7/32"),  # a dual-stack socket's IPv4 client
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_an_address_counts_by_its_network(address: str, network: str) -> None:
    assert end_user_network(forwarded(address)) == ipaddress.ip_network(network)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (forwarded(), "REQUIRED"),
        (forwarded("203.0.113.7", "203.0.113.8"), "REPEATED"),
        (forwarded(""), "INVALID_ADDRESS"),
        (forwarded("203.0.113.256"), "INVALID_ADDRESS"),
        (forwarded("203.0.113.0/24"), "INVALID_ADDRESS"),
        (forwarded("[2001:db8::1]:443"), "INVALID_ADDRESS"),
        ([("x-end-user-address", b"\xcb\x00q\x07")], "INVALID_ADDRESS"),
    ],
)
def test_anything_but_one_address_is_refused_without_repeating_it(
    metadata: list[tuple[str, str | bytes]], reason: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        end_user_network(metadata)

    [violation] = refused.value.violations
    assert (violation.field, violation.reason) == (END_USER_ADDRESS_FIELD, reason)
    sent = [str(value) for key, value in metadata if key == "x-end-user-address" and value]
    assert not any(value in violation.description for value in sent)


def test_the_subject_is_a_keyed_hash_per_gateway_and_network() -> None:
    end_users = EndUsers(b"secret")
    one = end_users.subject("key:gateway-a", forwarded("2001:db8:1:2::1"))

    assert one == end_users.subject("key:gateway-a", forwarded("2001:db8:1:2:ffff::9"))
    assert one != end_users.subject("key:gateway-a", forwarded("2001:db8:1:3::1"))
    assert one != end_users.subject("key:gateway-b", forwarded("2001:db8:1:2::1"))
    assert one != EndUsers(b"another secret").subject("key:gateway-a", forwarded("2001:db8:1:2::1"))
    assert one.startswith("key:gateway-a/end-user:")
    assert "2001" not in one


def test_a_rate_limit_is_read_from_the_first_metadata_that_has_it() -> None:
    headers = [("x-ratelimit-limit", "20"), ("x-ratelimit-remaining", "3"), ("x-ratelimit-reset", "7")]

    assert RateLimit.from_metadata(headers) == RateLimit(limit=20, remaining=3, reset_seconds=7)
    assert RateLimit.from_metadata((), None, headers) == RateLimit(20, 3, 7)
    assert RateLimit.from_metadata(headers[:2]) is None
    assert RateLimit.from_metadata([*headers[:2], ("x-ratelimit-reset", "soon")]) is None
