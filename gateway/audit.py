"""The audit log: append-only, keyed hash chain, no BSN in clear (issue 2, item 5).

Every entry stores the hash of the entry before it and its own hash:

    entry_hash = HMAC-SHA256(derive_key("audit-chain"), prev_hash || canonical JSON of the entry)

The chain is keyed so that someone who can write to the database but does not hold
GATEWAY_SECRET_KEY cannot edit an entry and recompute the hashes after it; an edit, a deleted
or inserted row, rows put in another order, a plain SHA-256 forged in place of the HMAC, and a
cut-off tail (checked against the one-row `audit_head`) all make `verify` name the first bad
entry. What the chain cannot catch on its own is an attacker who cuts off the tail *and* rewinds
`audit_head` to an older entry: only a copy of the head kept elsewhere (print it after every
`gateway audit verify` into a log that is shipped off the machine) shows that.

Appends are serialised so that the chain never forks: on PostgreSQL by `SELECT ... FOR UPDATE`
on `audit_head`, on SQLite by the write transaction (gateway.db begins SQLite transactions
IMMEDIATE). `record` works inside the caller's transaction, so an entry and the change it
describes commit together or not at all; the head stays locked until that commit, so call
`record` as the last step of a transaction.

No full BSN is ever stored: use `pseudonymise_bsn` (keyed hash, for finding one person's
entries) or `mask_bsn` (for display); `record` refuses a field in which a 9-digit number that
passes the BSN eleven-test stands on its own, as a second line of defence.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Mapper, Session, mapped_column

from gateway import clock
from gateway.db import Base, Prepared, UTCDateTime, as_loaded
from gateway.desks.bsn import is_valid_bsn
from gateway.settings import Settings

#: prev_hash of entry 1.
GENESIS_HASH = "0" * 64
CHAIN_KEY_PURPOSE = "audit-chain"
BSN_KEY_PURPOSE = "audit-bsn-pseudonym"
#: Part of every hashed entry, so a later change of the canonical form cannot be confused
#: with an edit.
HASH_VERSION = 1

#: Field lengths, checked in `record` so SQLite (which ignores them) and PostgreSQL agree.
MAX_LENGTHS = {
    "actor": 200,
    "role": 64,
    "desk": 64,
    "action": 100,
    "object_ref": 200,
    "outcome": 32,
    "request_id": 100,
}
_REQUIRED = ("actor", "role", "action", "outcome")

#: Rows fetched per round trip by `verify` and `iter_entries` (constant memory).
BATCH = 1000

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: A 9-digit number standing on its own: not part of a longer number or of a word, so that
#: hex request ids and UUIDs are not mistaken for a BSN.
_NINE_DIGITS = re.compile(r"(?<![0-9A-Za-z])[0-9]{9}(?![0-9A-Za-z])")


class AuditError(Exception):
    """A misuse of the audit log (an edit or delete through the ORM)."""


class AuditDataError(ValueError):
    """A field given to `record` is not allowed. The message names the field, never its value."""


class AuditEntry(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    actor: Mapped[str] = mapped_column(sa.String(MAX_LENGTHS["actor"]), nullable=False)
    role: Mapped[str] = mapped_column(sa.String(MAX_LENGTHS["role"]), nullable=False)
    desk: Mapped[str | None] = mapped_column(sa.String(MAX_LENGTHS["desk"]), nullable=True)
    action: Mapped[str] = mapped_column(sa.String(MAX_LENGTHS["action"]), nullable=False)
    object_ref: Mapped[str | None] = mapped_column(
        sa.String(MAX_LENGTHS["object_ref"]), nullable=True
    )
    outcome: Mapped[str] = mapped_column(sa.String(MAX_LENGTHS["outcome"]), nullable=False)
    request_id: Mapped[str | None] = mapped_column(
        sa.String(MAX_LENGTHS["request_id"]), nullable=True
    )
    prev_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    entry_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)

    __table_args__ = (
        # The auditor's export: one desk's entries, optionally from a date on.
        sa.Index("ix_audit_log_desk_seq", "desk", "seq"),
        sa.Index("ix_audit_log_at", "at"),
    )

    def __repr__(self) -> str:
        return f"AuditEntry(seq={self.seq!r}, action={self.action!r}, outcome={self.outcome!r})"


class AuditHead(Base):
    """The one row holding the last seq and hash: the append lock, and the witness of the tail."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    last_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)

    __table_args__ = (sa.CheckConstraint("id = 1", name="single_row"),)


_ENTRIES: sa.Table = AuditEntry.__table__  # type: ignore[assignment]
_HEAD: sa.Table = AuditHead.__table__  # type: ignore[assignment]
# Sent to the driver as compiled (gateway.db.Prepared): every login appends an entry.
_LOCK_HEAD = Prepared(
    sa.select(_HEAD.c.last_seq, _HEAD.c.last_hash).where(_HEAD.c.id == 1).with_for_update()
)
_INSERT_ENTRY = Prepared(sa.insert(_ENTRIES).values(
    {column.key: sa.bindparam(column.key) for column in _ENTRIES.columns}
))
_MOVE_HEAD = Prepared(
    sa.update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(last_seq=sa.bindparam("b_seq"), last_hash=sa.bindparam("b_hash"))
)


@event.listens_for(AuditEntry, "before_update")
@event.listens_for(AuditHead, "before_delete")
@event.listens_for(AuditEntry, "before_delete")
def _append_only(_mapper: Mapper[Any], _connection: sa.Connection, _target: Any) -> None:
    raise AuditError("the audit log is append-only")


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    #: Entries found intact (all of them when ok; those before the first bad one otherwise).
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None


# --- BSN ------------------------------------------------------------------------------------


def pseudonymise_bsn(settings: Settings, bsn: str) -> str:
    """"bsn:" + 16 hex digits of a keyed hash: the same person always gets the same value, and
    without GATEWAY_SECRET_KEY it cannot be turned back into the BSN (a plain hash could: there
    are only 10^9 BSNs). Takes the 9-digit normal form (gateway.desks.bsn.normalise_bsn)."""
    if not isinstance(bsn, str) or not re.fullmatch(r"[0-9]{9}", bsn):
        raise AuditDataError("pseudonymise_bsn takes the 9-digit normal form of a BSN")
    digest = hmac.new(settings.derive_key(BSN_KEY_PURPOSE), bsn.encode(), hashlib.sha256)
    return "bsn:" + digest.hexdigest()[:16]


def mask_bsn(bsn: str) -> str:
    """The last three digits only ("******782"), for a person reading the log."""
    if not isinstance(bsn, str) or not re.fullmatch(r"[0-9]{9}", bsn):
        raise AuditDataError("mask_bsn takes the 9-digit normal form of a BSN")
    return "*" * 6 + bsn[-3:]


def _contains_bsn(value: str) -> bool:
    return any(is_valid_bsn(m.group()) for m in _NINE_DIGITS.finditer(value))


# --- appending ------------------------------------------------------------------------------


def record(
    session: Session,
    *,
    actor: str,
    role: str,
    desk: str | None,
    action: str,
    object_ref: str | None,
    outcome: str,
    request_id: str | None = None,
    settings: Settings | None = None,
) -> AuditEntry:
    """Append an entry within the caller's transaction and return it (written, not committed;
    the returned object is not in the session).

    `settings` defaults to the current app's. Raises AuditDataError for an empty required
    field, a field too long or with control characters, or one that holds a BSN.
    """
    fields: dict[str, str | None] = {
        "actor": actor,
        "role": role,
        "desk": desk,
        "action": action,
        "object_ref": object_ref,
        "outcome": outcome,
        "request_id": request_id,
    }
    _check_fields(fields)
    if settings is None:
        from gateway.app import get_settings

        settings = get_settings()
    key = settings.derive_key(CHAIN_KEY_PURPOSE)

    last_seq, prev_hash = _lock_head(session)
    seq = last_seq + 1
    at = clock.now().astimezone(UTC)
    entry_hash = _chain_hash(key, prev_hash, _canonical(seq, at, fields))
    values = {"seq": seq, "at": at, "prev_hash": prev_hash, "entry_hash": entry_hash, **fields}
    # Statements built once, on the session's connection: no unit of work and no ORM
    # execution layer on every login.
    conn = session.connection()
    _INSERT_ENTRY.execute(conn, values)
    _MOVE_HEAD.execute(conn, {"b_seq": seq, "b_hash": entry_hash})
    return as_loaded(AuditEntry, values)


def _check_fields(fields: dict[str, str | None]) -> None:
    for name, value in fields.items():
        if value is None:
            if name in _REQUIRED:
                raise AuditDataError(f"audit field {name!r} is required")
            continue
        if not isinstance(value, str):
            raise AuditDataError(f"audit field {name!r} must be a string")
        if name in _REQUIRED and not value.strip():
            raise AuditDataError(f"audit field {name!r} is required")
        if len(value) > MAX_LENGTHS[name]:
            raise AuditDataError(f"audit field {name!r} is longer than {MAX_LENGTHS[name]}")
        if _CONTROL.search(value):
            # A newline in an actor could forge a line in a text export of the log.
            raise AuditDataError(f"audit field {name!r} contains control characters")
        if _contains_bsn(value):
            raise AuditDataError(
                f"audit field {name!r} holds what looks like a BSN; "
                "record pseudonymise_bsn() or mask_bsn() of it instead"
            )


def _lock_head(session: Session) -> tuple[int, str]:
    """The head's (last_seq, last_hash), locked until the caller's transaction ends."""
    conn = session.connection()
    row = _LOCK_HEAD.execute(conn, {}).one_or_none()
    if row is None:
        # First entry ever: two processes may race to create the head; the loser's insert
        # waits for the winner's commit and then does nothing, and both lock the one row.
        dialect = session.get_bind().dialect.name
        insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        conn.execute(
            insert(AuditHead)
            .values(id=1, last_seq=0, last_hash=GENESIS_HASH)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        row = _LOCK_HEAD.execute(conn, {}).one_or_none()
        assert row is not None  # the head exists now
    return int(row.last_seq), str(row.last_hash)


def _canonical(seq: int, at: datetime, fields: dict[str, str | None]) -> bytes:
    document = {
        "v": HASH_VERSION,
        "seq": seq,
        "at": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        **fields,
    }
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def _chain_hash(key: bytes, prev_hash: str, canonical: bytes) -> str:
    return hmac.new(key, prev_hash.encode("utf-8") + canonical, hashlib.sha256).hexdigest()


# --- reading --------------------------------------------------------------------------------

_COLUMNS = (
    AuditEntry.seq,
    # Raw, not through UTCDateTime: a value that cannot be read must be pinned to its entry,
    # not blow up the fetch of a whole batch.
    sa.type_coerce(AuditEntry.at, sa.String).label("at"),
    AuditEntry.actor,
    AuditEntry.role,
    AuditEntry.desk,
    AuditEntry.action,
    AuditEntry.object_ref,
    AuditEntry.outcome,
    AuditEntry.request_id,
    AuditEntry.prev_hash,
    AuditEntry.entry_hash,
)


def verify(session: Session, settings: Settings) -> VerifyResult:
    """Walk the chain in seq order, streaming, and report the first entry that is wrong."""
    key = settings.derive_key(CHAIN_KEY_PURPOSE)
    # The head is read before the entries: an append committed in between only adds entries
    # beyond it, which are checked against a second read of the head at the end.
    head_seq, head_hash = _read_head(session)
    expected, prev, intact = 1, GENESIS_HASH, 0

    def broken(seq: int, reason: str) -> VerifyResult:
        return VerifyResult(ok=False, entries=intact, first_bad_seq=seq, reason=reason)

    result = session.execute(
        sa.select(*_COLUMNS).order_by(AuditEntry.seq).execution_options(yield_per=BATCH)
    )
    try:
        rows = iter(result)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except (ValueError, TypeError):
                return broken(expected, "the entry cannot be read (a field was altered)")
            if row.seq != expected:
                return broken(
                    expected, f"the entry is missing (the next one found is {row.seq})"
                )
            if not _same(row.prev_hash, prev):
                return broken(
                    row.seq,
                    "it does not link to the entry before it "
                    "(rows deleted, inserted or reordered)",
                )
            try:
                fields = {name: getattr(row, name) for name in MAX_LENGTHS}
                mac = _chain_hash(key, row.prev_hash, _canonical(row.seq, _as_utc(row.at), fields))
            except (ValueError, TypeError, AttributeError):
                return broken(row.seq, "the entry cannot be read (a field was altered)")
            if not _same(row.entry_hash, mac):
                return broken(row.seq, "its contents do not match its hash (the entry was edited)")
            if row.seq == head_seq and not _same(row.entry_hash, head_hash):
                return broken(row.seq, "it does not match the recorded head of the log")
            prev = row.entry_hash
            intact += 1
            expected += 1
    finally:
        result.close()

    last = expected - 1
    if last < head_seq:
        return broken(
            last + 1, f"entries {last + 1} to {head_seq} are missing (the log was cut off)"
        )
    if last > head_seq:
        now_seq, _ = _read_head(session)
        if now_seq < last:
            return broken(
                max(head_seq, now_seq) + 1, "the entry lies beyond the recorded head of the log"
            )
    return VerifyResult(ok=True, entries=intact)


def _as_utc(value: Any) -> datetime:
    """A stored timestamp as UTCDateTime would give it: PostgreSQL's driver returns a
    datetime, SQLite text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError("not a timestamp")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _read_head(session: Session) -> tuple[int, str]:
    row = session.execute(
        sa.select(AuditHead.last_seq, AuditHead.last_hash).where(AuditHead.id == 1)
    ).one_or_none()
    if row is None:
        return 0, GENESIS_HASH
    return int(row.last_seq), str(row.last_hash)


def _same(a: Any, b: str) -> bool:
    if not isinstance(a, str):
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def iter_entries(
    session: Session, desk: str | None = None, since: datetime | None = None
) -> Iterator[AuditEntry]:
    """Entries in seq order, streamed, optionally of one desk and from `since` on (the
    auditor's export). The entries are as stored: run `verify` to know they are intact."""
    stmt = sa.select(AuditEntry).order_by(AuditEntry.seq)
    if desk is not None:
        stmt = stmt.where(AuditEntry.desk == desk)
    if since is not None:
        stmt = stmt.where(AuditEntry.at >= since)
    yield from session.scalars(stmt.execution_options(yield_per=BATCH))


# --- command line ---------------------------------------------------------------------------


@click.group("audit")
def audit_cli() -> None:
    """The audit log."""


@audit_cli.command("verify")
def verify_command() -> None:
    """Check the audit log's hash chain; exit 1 naming the first broken entry."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.cli import Failure, load_settings
    from gateway.db import Database

    settings = load_settings()
    # Not a serving connection: one walk of a long chain may outlast a request's limits.
    database = Database(settings.database_url, serving=False)
    try:
        with database.begin() as session:
            outcome = verify(session, settings)
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]
        raise Failure(f"GATEWAY_DATABASE_URL: cannot read the audit log ({detail})") from None
    finally:
        database.dispose()
    if outcome.ok:
        click.echo(f"audit log intact: {outcome.entries} entries")
        return
    click.echo(f"audit log broken at entry {outcome.first_bad_seq}: {outcome.reason}")
    raise SystemExit(1)
