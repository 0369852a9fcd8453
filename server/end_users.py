"""The end user a gateway calls for: the forwarded address, checked, and kept only as a keyed hash.

A gateway (a web tier holding a gateway-role API key) calls on behalf of the
people it serves and sends each one's address in the request metadata
`x-end-user-address`; its rate limit is counted per end user. The address is
personal data, so it is reduced to its network (the IPv4 address; the IPv6
/64, which one subscriber usually holds whole, so that no one gets a fresh
limit per address of their own) and to an HMAC of that network with the
gateway's subject, under a key derived from the server secret: counts in
memory or Redis name no one, and two gateways never share one. The address is
never logged, and the error for a bad one does not repeat it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable

from server.errors import InvalidArgument, field_violation

END_USER_ADDRESS_HEADER = "x-end-user-address"
# A bad or missing address is reported as a violation of this field.
END_USER_ADDRESS_FIELD = f"metadata.{END_USER_ADDRESS_HEADER}"
IPV6_PREFIX_LENGTH = 64
# 128 bits of HMAC: no two end users collide in practice; the full digest would only make keys longer.
_DIGEST_BYTES = 16

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EndUsers:
    """Turns a gateway call's forwarded address into the subject its rate limit is counted under."""

    def __init__(self, secret: bytes) -> None:
        # A key of its own, derived from the server secret, so that these hashes are unlike any other.
        self._key = hmac.digest(secret, b"triage-end-user-rate-limit", hashlib.sha256)

    def subject(self, gateway_subject: str, metadata: Iterable[tuple[str, str | bytes]]) -> str:
        """`gateway_subject` and a keyed hash of the end user's network; InvalidArgument without one valid address."""
        network = end_user_network(metadata)
        digest = hmac.digest(self._key, f"{gateway_subject}|{network}".encode(), hashlib.sha256)
        return f"{gateway_subject}/end-user:{digest[:_DIGEST_BYTES].hex()}"


def end_user_network(metadata: Iterable[tuple[str, str | bytes]]) -> Network:
    """The network the forwarded address is counted by; InvalidArgument unless exactly one valid address is sent."""
    values = [value for key, value in metadata if key == END_USER_ADDRESS_HEADER]
    if not values:
        raise _invalid("is required from a gateway: the address of the end user the call is made for", "REQUIRED")
    if len(values) > 1:
        raise _invalid("must be sent once, with one address", "REPEATED")
    value = values[0]
    try:
        # A zone (fe80::1%eth0) names the gateway's own interface, not the end user: dropped.
        address = ipaddress.ip_address(value.partition("%")[0].strip() if isinstance(value, str) else "")
    except ValueError:
        # The value is not repeated: whatever was sent may be personal data.
        raise _invalid(
            "must be one IPv4 or IPv6 address, such as 203.0.113.7 or 2001:db8::7", "INVALID_ADDRESS"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:203.0.113.7, as a dual-stack socket reports an IPv4 client
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv4Network(address)
    return ipaddress.IPv6Network((address, IPV6_PREFIX_LENGTH), strict=False)


def _invalid(description: str, reason: str) -> InvalidArgument:
    return InvalidArgument([field_violation(END_USER_ADDRESS_FIELD, description, reason)])
