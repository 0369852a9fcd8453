"""API keys: their format, their issue, and checking a presented key.

A key reads `tri_<key id>_<secret>`: the prefix lets secret scanners find
leaked keys, the key id (a ULID) finds the record without revealing anything,
and the secret is 256 random bits. The database holds only an HMAC-SHA256 of
the whole key under the server secret, compared in constant time, so a copy
of the database does not let anyone call the service. Each hash names its
secret's id: a key hashed under a verify-only secret of the ring still works,
and is rewritten under the active secret the first time it does.

Each process keeps the keys in memory and reloads them every few seconds, so
a key revoked anywhere stops working everywhere within the reload interval,
and no call waits for the database unless it presents a key id not seen yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.rpc import error_details_pb2

from server.calls import Principal, Role
from server.errors import field_violation
from server.ids import new_id
from server.rate_limits import rate_limit_problem
from server.refresh import Refresher
from server.secret import SecretRing, secret_id
from server.store.api_keys import ApiKeyStore
from server.store.models import ApiKeyRecord

log = logging.getLogger("triage.keys")

KEY_PREFIX = "tri_"
MAX_KEY_NAME_CHARACTERS = 200
_KEY = re.compile(r"^tri_([0-9A-HJKMNP-TV-Z]{26})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key: its record, and the secret, shown once and never again."""

    record: ApiKeyRecord
    secret: str


def issue_key(
    store: ApiKeyStore,
    server_secret: bytes,
    *,
    name: str,
    role: Role,
    rate_limit: str = "",
    expires_in: timedelta | None = None,
    monthly_budget_usd_micros: int = 0,
    refuse_over_budget: bool = False,
) -> IssuedKey:
    """Creates a key in the store (synchronously) and returns it with its secret."""
    now = datetime.now(UTC)
    key_id = new_id()
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKeyRecord(
        key_id=key_id,
        name=name,
        role=role.value,
        secret_hmac_sha256=_digest(server_secret, secret),
        secret_key_id=secret_id(server_secret),
        rate_limit=rate_limit,
        monthly_budget_usd_micros=monthly_budget_usd_micros,
        refuse_over_budget=refuse_over_budget,
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    return IssuedKey(store.add(record), secret)


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def _digest(server_secret: bytes, key: str) -> str:
    return hmac.new(server_secret, key.encode(), hashlib.sha256).hexdigest()


class ApiKeyAuthenticator:
    """Turns a presented key into a Principal, or None for any fault at all."""

    def __init__(self, store: ApiKeyStore, ring: SecretRing, *, reload_seconds: float) -> None:
        self._store = store
        self._ring = ring
        self._keys: dict[str, ApiKeyRecord | None] = {}
        self._refresher = Refresher(self.reload, interval_seconds=reload_seconds, what="API keys")
        # Keys this process has rewritten (or is rewriting) under the active secret, or warned of: once each.
        self._rehashed: set[str] = set()
        self._rehashing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()
        await asyncio.gather(*self._rehashing)

    async def reload(self) -> None:
        records = await asyncio.to_thread(self._store.all)
        # Unknown ids cached as None are dropped here, so a key made elsewhere is found.
        self._keys = {r.key_id: r for r in records}

    def remember(self, record: ApiKeyRecord) -> None:
        """Applies a change made by this process at once, before the next reload."""
        self._keys[record.key_id] = record

    async def authenticate(self, key: str) -> Principal | None:
        match = _KEY.match(key)
        if match is None:
            return None
        key_id = match[1]
        if key_id not in self._keys:
            # Possibly created by another process since the last reload.
            self._keys[key_id] = await asyncio.to_thread(self._store.get, key_id)
        record = self._keys[key_id]
        expected = record.secret_hmac_sha256 if record is not None else "0" * 64
        # The digest is computed and compared whether or not the id exists: one path, one timing.
        secret_ids = self._secret_ids(record)
        under = next(
            (i for i in secret_ids if hmac.compare_digest(_digest(self._ring.get(i) or b"", key), expected)), None
        )
        if record is None or under is None or not _usable(record, datetime.now(UTC)):
            return None
        if under != self._ring.active_id or record.secret_key_id != under:
            self._rehash(record, key)
        return Principal(
            subject=f"key:{record.key_id}",
            role=Role(record.role),
            key_id=record.key_id,
            rate_limit=record.rate_limit,
            monthly_budget_usd_micros=record.monthly_budget_usd_micros,
            refuse_over_budget=record.refuse_over_budget,
        )

    def _secret_ids(self, record: ApiKeyRecord | None) -> list[str]:
        """The ids of the secrets a key may be hashed under: its own, or any (a hash older than secret ids)."""
        if record is None:
            return [self._ring.active_id]
        if record.secret_key_id == "":
            return [key_id for key_id, _ in self._ring]
        if self._ring.get(record.secret_key_id) is None and record.key_id not in self._rehashed:
            # Retired, or activated elsewhere before this process knew it: the rollout order was not followed.
            self._rehashed.add(record.key_id)  # logged once, and nothing to rewrite
            log.warning(
                "API key hashed under a server secret not in this process's ring",
                extra={"fields": {"key_id": record.key_id, "secret_key_id": record.secret_key_id}},
            )
        return [record.secret_key_id]

    def _rehash(self, record: ApiKeyRecord, key: str) -> None:
        """Rewrites the key's hash under the active secret, off the event loop; the call does not wait for it."""
        if record.key_id in self._rehashed:
            return
        self._rehashed.add(record.key_id)
        task = asyncio.create_task(self._rewrite(record.key_id, record.secret_key_id, key))
        self._rehashing.add(task)
        task.add_done_callback(self._rehashing.discard)

    async def _rewrite(self, key_id: str, from_secret_id: str, key: str) -> None:
        active_id = self._ring.active_id
        try:
            digest = _digest(self._ring.active, key)
            # Off the loop: a database write, whatever its latency.
            await asyncio.to_thread(
                self._store.rehash, key_id, from_secret_id=from_secret_id, digest=digest, to_secret_id=active_id
            )
            self._keys[key_id] = await asyncio.to_thread(self._store.get, key_id)
        except Exception as error:  # noqa: BLE001 - the key still works under its old hash; tried again later
            self._rehashed.discard(key_id)
            log.warning(
                "could not rewrite an API key's hash under the active server secret",
                extra={"fields": {"key_id": key_id, "error_type": type(error).__name__}},
            )
        else:
            log.info(
                "API key rehashed under the active server secret",
                extra={"fields": {"key_id": key_id, "from_secret_key_id": from_secret_id, "secret_key_id": active_id}},
            )


def _usable(record: ApiKeyRecord, now: datetime) -> bool:
    if record.revoked_at is not None and record.revoked_at <= now:
        return False
    return record.expires_at is None or now < record.expires_at


def key_violations(
    name: str, role: Role | None, rate_limit: str, expires_in: timedelta | None, budget_usd_micros: int
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """What is wrong with a new key's settings; shared by the RPC and `triage-server keys create`."""
    violations = []
    if not name.strip() or len(name) > MAX_KEY_NAME_CHARACTERS or "\x00" in name:
        violations.append(
            field_violation(
                "name", f"is required, at most {MAX_KEY_NAME_CHARACTERS} characters, without NUL", "INVALID_NAME"
            )
        )
    if role is None:
        roles = ", ".join(role.value for role in Role)
        violations.append(field_violation("role", f"must be one of {roles}", "REQUIRED"))
    problem = rate_limit_problem(rate_limit) if rate_limit else None
    if problem is not None:
        violations.append(field_violation("rate_limit", problem, "INVALID_RATE_LIMIT"))
    if expires_in is not None and expires_in <= timedelta(0):
        violations.append(field_violation("expires_in", "must be positive", "OUT_OF_RANGE"))
    if budget_usd_micros < 0:
        violations.append(field_violation("monthly_budget_usd_micros", "must not be negative", "OUT_OF_RANGE"))
    return violations
