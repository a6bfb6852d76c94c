"""What ``kith credits grant|revoke|list|history`` do and print (issue #26): plain functions over a
``memory.ledger.Ledger`` and a rich ``Console``, run by the ``credits.*`` operations
(``operations.registry``) on the store, or inside a running bot (its admission's ledger) through its
admin API.

A grant or revoke is idempotent by its id: ``--id`` (say, a support ticket's number) makes running the
same command twice add one row; without it each run is a new movement.
"""
from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from memory.ledger import Ledger, LedgerEntry
from tiers.credits import expire_all, expire_due
from tiers.errors import TierError
from tiers.subscriptions import parse_target

if TYPE_CHECKING:
    from memory.store import DialogueStore

__all__ = ["change", "history", "ledger_of", "list_balances"]


async def ledger_of(store: DialogueStore, ledger: Ledger | None) -> Ledger:
    """``ledger`` (a running bot's), else one over ``store``; opened. raises TierError when the store
    runs no SQL (credits need DuckDB or PostgreSQL)."""
    if ledger is None:
        if not hasattr(store, "sql_transaction"):
            raise TierError("credits need the DuckDB or PostgreSQL dialogue store")
        ledger = Ledger(store)  # type: ignore[arg-type]
    return await ledger.open()


def _entry_json(e: LedgerEntry) -> dict[str, Any]:
    return {"key": e.key, "target": f"{e.scope}:{e.scope_id}", "kind": e.kind, "amount": e.amount,
            "ts": e.ts.isoformat() if e.ts else None, "user_id": e.user_id, "chat_id": e.chat_id,
            "message_id": e.message_id, "charge_id": e.charge_id, "ref": e.ref, "note": e.note,
            "expires": e.expires.isoformat() if e.expires else None}


async def change(ledger: Ledger, target: str, amount: int, console: Console, *, kind: str, note: str | None = None,
                 op_id: str | None = None) -> None:
    """Grant (``kind="grant"``) or revoke ``amount`` credits of ``target`` (``user:ID`` | ``chat:ID``).
    raises TierError (a bad target or amount; a revoke below zero)."""
    scope, scope_id = parse_target(target)
    if amount <= 0:
        raise TierError(f"the number of credits must be more than 0, not {amount}")
    key = f"{kind}:{op_id}" if op_id else f"{kind}:{uuid.uuid4().hex}"
    posting = await ledger.append(LedgerEntry(key, scope, scope_id, kind, amount if kind == "grant" else -amount,
                                              note=note or "cli"))
    if posting.status == "insufficient":
        raise TierError(f"{scope}:{scope_id} has {posting.balance} credits: cannot revoke {amount}")
    verb = "granted" if kind == "grant" else "revoked"
    if posting.status == "duplicate":
        console.print(f"{escape(key)} was applied before; nothing changed. {scope}:{scope_id} has {posting.balance:,} credits")
        return
    console.print(f"{verb} {amount:,} credits: {scope}:{scope_id} has {posting.balance:,} credits")


async def list_balances(ledger: Ledger, console: Console, *, as_json: bool = False) -> None:
    """Every balance with rows in the ledger (expired credits taken first)."""
    await expire_all(ledger)
    rows = await ledger.balances()
    if as_json:
        console.file.write(json.dumps([{"target": f"{s}:{i}", "balance": b} for s, i, b in rows]) + "\n")
        return
    if not rows:
        console.print("no credits yet")
        return
    table = Table("target", "balance")
    for s, i, b in rows:
        table.add_row(f"{s}:{i}", f"{b:,}")
    console.print(table)


async def history(ledger: Ledger, target: str, console: Console, *, limit: int = 50, as_json: bool = False) -> None:
    """The newest ``limit`` movements of ``target``, and its balance."""
    scope, scope_id = parse_target(target)
    await expire_due(ledger, scope, scope_id)
    entries = await ledger.history(scope, scope_id, limit)
    balance = await ledger.balance(scope, scope_id)
    if as_json:
        console.file.write(json.dumps({"target": f"{scope}:{scope_id}", "balance": balance,
                                       "history": [_entry_json(e) for e in entries]}) + "\n")
        return
    table = Table("when (UTC)", "kind", "amount", "for", "key")
    for e in entries:
        what = e.note or ""
        if e.kind == "debit" and e.message_id is not None:
            what = f"message {e.chat_id}/{e.message_id} ({e.note})"
        elif e.kind == "purchase":
            what = f"{e.note} (charge {e.charge_id})"
        table.add_row(f"{e.ts:%Y-%m-%d %H:%M}" if e.ts else "", e.kind, f"{e.amount:+,}", escape(what), escape(e.key))
    console.print(table)
    console.print(f"{scope}:{scope_id} has {balance:,} credits")
