"""`triage-server secret ...` and `triage-server encryption-key ...`: rotating the two key rings.

A new key is first added to every process's ring as verify-only (or
decrypt-only), then made active, then retired: so that no process writes with
a key another process does not know (docs/runbooks/key-rotation.md). The
server secret's ring file is edited here; a ring in environment variables is
the platform's to change, and these commands check it and say what to set.
"""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path

from sqlalchemy import Engine

from server.case_vault import KEY_BYTES, fingerprint
from server.config import Settings
from server.secret import SecretRing, load_secret_ring, new_secret, ring_file, secret_id, write_ring_file
from server.store import rotation, schema
from server.store.database import open_database

_ENV_RING = "TRIAGE_SECRET_KEY and TRIAGE_SECRET_KEYS_VERIFY_ONLY"
_RESTART = "restart every server process (one at a time: each reads the ring when it starts)"
# API key ids listed when they stop a secret's retirement.
_LISTED = 20


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secret = commands.add_parser(
        "secret",
        help="the server secret's key ring (API-key hashes, audit chain): status, rotate, activate, retire",
        description="Rotation: `rotate` adds a new verify-only secret, then restart every server; `activate ID` "
        "makes it the one new API-key hashes and audit chains use, then restart every server; `retire ID` removes "
        "an old one once nothing depends on it. Edits TRIAGE_SECRET_KEY_FILE; with TRIAGE_SECRET_KEY set, it "
        "checks and says what to set.",
    )
    actions = secret.add_subparsers(dest="secret_command", required=True)
    actions.add_parser("status", help="the ring's secrets and how many API keys and audit chains depend on each")
    actions.add_parser("rotate", help="add a new secret as verify-only (step 1 of 3)")
    actions.add_parser("activate", help="make a verify-only secret the active one (step 2 of 3)").add_argument("id")
    retire = actions.add_parser(
        "retire", help="remove a verify-only secret; refused while API keys or audit chains depend on it (step 3)"
    )
    retire.add_argument("id")
    encryption = commands.add_parser(
        "encryption-key",
        help="the case encryption key ring (TRIAGE_ENCRYPTION_KEY[S_DECRYPT_ONLY]): new, status, reencrypt",
    )
    actions = encryption.add_subparsers(dest="encryption_command", required=True)
    actions.add_parser("new", help="print a new random key (base64) and its fingerprint")
    actions.add_parser("status", help="the ring's keys and how many stored cases each sealed")
    actions.add_parser("reencrypt", help="seal every stored case under the active key (while serving)")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when done, 1 when refused (the reason is printed)."""
    settings = Settings()
    if args.command == "encryption-key" and args.encryption_command == "new":
        key = os.urandom(KEY_BYTES)
        print(f"new encryption key, fingerprint {fingerprint(key)}; the key (base64) follows:")
        print(base64.b64encode(key).decode())
        return 0
    engine = open_database(settings.database_url)
    try:
        schema.require_current(engine)
        if args.command == "secret":
            return _secret(args, settings, engine)
        return _encryption(args, settings, engine)
    finally:
        engine.dispose()


def _secret(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    ring = load_secret_ring(settings)
    path = ring_file(settings)
    source = str(path) if path is not None else _ENV_RING
    command = args.secret_command
    if command == "status":
        _print_status(ring, rotation.secret_use(engine), source)
        return 0
    if command == "rotate":
        if not ring.verify_only:
            # A ring of one is the only secret there has been: rows made before ids were kept are its.
            keys, chains = rotation.record_legacy_secret_id(engine, ring.active_id)
            if keys or chains:
                print(f"recorded secret {ring.active_id} as the secret of {keys} API keys and {chains} audit chains")
        value = new_secret()
        new_id = secret_id(value)
        if path is None:
            print(f"new server secret {new_id}: add it to TRIAGE_SECRET_KEYS_VERIFY_ONLY (comma-separated) on every")
            print(f"server, roll that out, then run `triage-server secret activate {new_id}`. The secret follows:")
            print(value.decode())
        else:
            write_ring_file(path, SecretRing(ring.active, (*ring.verify_only, value)))
            print(f"added server secret {new_id} to {path} as verify-only")
            print(f"next: {_RESTART}, then `triage-server secret activate {new_id}`")
        return 0
    if command == "activate":
        if args.id == ring.active_id:
            print(f"server secret {args.id} is already the active one in {source}")
            return 0
        if ring.get(args.id) is None:
            print(f"no server secret {args.id} in {source}: add it first (`triage-server secret rotate`)")
            return 1
        if path is None:
            print(f"set TRIAGE_SECRET_KEY to secret {args.id} and TRIAGE_SECRET_KEYS_VERIFY_ONLY to the others")
            print(f"(including {ring.active_id}, active until then) on every server, and roll that out")
        else:
            write_ring_file(path, ring.with_active(args.id))
            print(f"server secret {args.id} is active in {path}; {ring.active_id} is verify-only")
            print(f"next: {_RESTART}; each uses {args.id} for new API-key hashes and audit chains once restarted")
        return 0
    return _retire(args.id, ring, rotation.secret_use(engine), path, source)


def _retire(key_id: str, ring: SecretRing, use: rotation.SecretUse, path: Path | None, source: str) -> int:
    if key_id == ring.active_id:
        print(f"server secret {key_id} is the active one: activate another first")
        return 1
    if ring.get(key_id) is None:
        print(f"no server secret {key_id} in {source}")
        return 1
    refusals = []
    chains = use.chains.get(key_id, 0)
    if chains:
        refusals.append(
            f"{chains} audit chains are linked under it, and `audit verify` needs it for as long as their records "
            "are kept (TRIAGE_AUDIT_RETENTION_DAYS): keep it verify-only"
        )
    keys = use.api_keys.get(key_id, [])
    if keys:
        listed = " ".join(keys[:_LISTED]) + (f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")
        refusals.append(
            f"{len(keys)} API keys are hashed under it and have not been used since it was active (each is rewritten "
            f"under the active secret when next used): {listed}. Revoke the unused ones or wait"
        )
    legacy = len(use.api_keys.get("", [])), use.chains.get("", 0)
    if any(legacy):
        refusals.append(
            f"{legacy[0]} API keys and {legacy[1]} audit chains were made before secret ids were recorded, under a "
            "secret not named in the database"
        )
    if refusals:
        print(f"not retiring server secret {key_id}:")
        for refusal in refusals:
            print(f"  {refusal}")
        return 1
    if path is None:
        print(f"nothing depends on server secret {key_id}: remove it from TRIAGE_SECRET_KEYS_VERIFY_ONLY")
    else:
        write_ring_file(path, ring.without(key_id))
        print(f"retired server secret {key_id}: removed from {path}")
    return 0


def _print_status(ring: SecretRing, use: rotation.SecretUse, source: str) -> None:
    print(f"server secret ring, from {source}:")
    for key_id, _ in ring:
        state = "active" if key_id == ring.active_id else "verify-only"
        keys, chains = len(use.api_keys.get(key_id, [])), use.chains.get(key_id, 0)
        free = ": can be retired" if state != "active" and not keys and not chains else ""
        print(f"  {key_id}  {state:<11}  {keys} API keys, {chains} audit chains{free}")
    missing = sorted(use.ids() - {key_id for key_id, _ in ring} - {""})
    for key_id in missing:
        keys, chains = len(use.api_keys.get(key_id, [])), use.chains.get(key_id, 0)
        print(f"  {key_id}  not in ring  {keys} API keys, {chains} audit chains: they fail until it is added back")
    if "" in use.ids():
        keys, chains = len(use.api_keys.get("", [])), use.chains.get("", 0)
        print(f"  made before secret ids were recorded: {keys} API keys, {chains} audit chains")


def _encryption(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    vault = settings.case_vault()
    if vault is None:
        print("TRIAGE_ENCRYPTION_KEY is not set: this configuration stores no case")
        return 1
    if args.encryption_command == "reencrypt":
        done = rotation.reencrypt(engine, vault)
        print(f"re-encrypted {done.moved} stored cases under the active key {vault.fingerprint}")
        if done.unreadable:
            print(f"{done.unreadable} stored cases cannot be opened by this ring (`encryption-key status` names it)")
            return 1
        return 0
    counts = rotation.cases_by_key(engine)
    print("encryption key ring, from TRIAGE_ENCRYPTION_KEY and TRIAGE_ENCRYPTION_KEYS_DECRYPT_ONLY:")
    for key in vault.fingerprints:
        state = "active" if key == vault.fingerprint else "decrypt-only"
        free = ": can be removed" if state != "active" and not counts.get(key) else ""
        print(f"  {key}  {state:<12}  {counts.get(key, 0)} stored cases{free}")
    for key in sorted(set(counts) - set(vault.fingerprints)):
        print(f"  {key}  not in ring   {counts[key]} stored cases: Explain by id fails for them")
    return 0
