"""The database side of key rotation: what depends on each key, and moving stored cases to the active key.

An API key depends on the server secret its hash was made under until it is
rewritten (on its next use) or can no longer be used; an audit chain depends
on its writer's secret for as long as any of its records is kept. A stored
case depends on the encryption key that sealed it until it is re-encrypted or
purged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine, func, or_, update
from sqlmodel import Session, col, select

from server.case_vault import CaseVault
from server.store.models import ApiKeyRecord, AuditWriter, StoredCase

# Stored cases re-encrypted per transaction.
_BATCH = 200


@dataclass(frozen=True, slots=True)
class SecretUse:
    """By server secret id ("" before ids were recorded): usable API keys hashed under it, chains linked under it."""

    api_keys: dict[str, list[str]] = field(default_factory=dict)
    chains: dict[str, int] = field(default_factory=dict)

    def ids(self) -> set[str]:
        return set(self.api_keys) | set(self.chains)


def secret_use(engine: Engine, now: datetime | None = None) -> SecretUse:
    now = now or datetime.now(UTC)
    keys: dict[str, list[str]] = defaultdict(list)
    with Session(engine) as session:
        usable = session.exec(
            select(ApiKeyRecord.secret_key_id, ApiKeyRecord.key_id)
            .where(or_(col(ApiKeyRecord.revoked_at).is_(None), col(ApiKeyRecord.revoked_at) > now))
            .where(or_(col(ApiKeyRecord.expires_at).is_(None), col(ApiKeyRecord.expires_at) > now))
            .order_by(col(ApiKeyRecord.key_id))
        ).all()
        for secret_id, key_id in usable:
            keys[secret_id].append(key_id)
        # A chain whose records retention purged entirely needs its secret no more.
        chains = session.exec(
            select(AuditWriter.secret_key_id, func.count())
            .where(col(AuditWriter.last_seq) > col(AuditWriter.purged_seq))
            .group_by(col(AuditWriter.secret_key_id))
        ).all()
    return SecretUse(dict(keys), {secret_id: count for secret_id, count in chains})  # noqa: C416 - rows, not pairs


def record_legacy_secret_id(engine: Engine, secret_id: str) -> tuple[int, int]:
    """Names `secret_id` as the secret of API keys and chains from before ids were recorded; (keys, chains).

    Only right while that secret is the only one there has been: a ring of one.
    """
    with engine.begin() as connection:
        keys = connection.execute(
            update(ApiKeyRecord).where(col(ApiKeyRecord.secret_key_id) == "").values(secret_key_id=secret_id)
        ).rowcount
        chains = connection.execute(
            update(AuditWriter).where(col(AuditWriter.secret_key_id) == "").values(secret_key_id=secret_id)
        ).rowcount
    return keys, chains


def cases_by_key(engine: Engine) -> dict[str, int]:
    """Stored cases by the fingerprint of the key that sealed them."""
    with Session(engine) as session:
        rows = session.exec(
            select(StoredCase.key_fingerprint, func.count()).group_by(col(StoredCase.key_fingerprint))
        ).all()
    return {fingerprint: count for fingerprint, count in rows}  # noqa: C416 - rows, not pairs


@dataclass(frozen=True, slots=True)
class Reencrypted:
    moved: int
    # Sealed by a key not in the ring, or altered: left as they are.
    unreadable: int


def reencrypt(engine: Engine, vault: CaseVault) -> Reencrypted:
    """Seals every stored case the ring can open under the active key, in small transactions, while serving."""
    moved = unreadable = 0
    after = ""
    while True:
        with Session(engine) as session:
            cases = session.exec(
                select(StoredCase)
                .where(col(StoredCase.key_fingerprint) != vault.fingerprint, col(StoredCase.classification_id) > after)
                .order_by(col(StoredCase.classification_id))
                .limit(_BATCH)
            ).all()
            if not cases:
                return Reencrypted(moved, unreadable)
            after = cases[-1].classification_id
            for case in cases:
                opened = vault.open(case.key_fingerprint, case.classification_id, case.nonce, case.ciphertext)
                if opened is None:
                    unreadable += 1
                    continue
                nonce, ciphertext = vault.seal(case.classification_id, opened)
                # Conditional: a case purged or re-encrypted meanwhile is left alone.
                moved += session.exec(
                    update(StoredCase)
                    .where(
                        col(StoredCase.classification_id) == case.classification_id,
                        col(StoredCase.key_fingerprint) == case.key_fingerprint,
                    )
                    .values(key_fingerprint=vault.fingerprint, nonce=nonce, ciphertext=ciphertext)
                ).rowcount
            session.commit()
