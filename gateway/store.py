"""Shared state for every instance: counters, replay caches and short-lived values.

Nothing that several gateway processes must agree on lives in process memory (issue 2,
"Serving"): rate limits, lockout counters, replay caches of SAML request IDs, single-use
artifacts and server-side sessions go through a `SharedStore`. Two implementations: the
database (`DatabaseStore`, the default) and Redis (`RedisStore`, when GATEWAY_REDIS_URL is set).
Both are atomic per operation and both fail closed: an unreachable store raises
`StoreUnavailable`, and callers refuse the action rather than let it through.

Counters use a fixed window: the TTL is set when the counter is created and later increments
never extend it, so a steady trickle of attempts cannot keep a window open forever.

`run(ops)` applies several operations (`Incr`, `Count`, `AddOnce`, `Get`, `Set`, `Delete`) as one
step: one Lua script in Redis (one round trip, atomic as a whole), one transaction of plain
statements in the database. Checks that need many counters at once (the SMS abuse limits) use it
instead of a round trip and a commit per counter.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from gateway import clock
from gateway.db import Base, UTCDateTime, delete_due, in_batches, make_engine
from gateway.settings import Settings, normalise_database_url

if TYPE_CHECKING:
    import redis as redis_lib
    from flask import Flask

#: Keys longer than this are refused: they are built by code, never taken from a request as is.
MAX_KEY_LENGTH = 512
#: Expired database rows removed by one opportunistic purge: bounded work per call.
PURGE_BATCH = 200
#: One write in this many also purges a batch of expired rows.
PURGE_EVERY = 50
#: Redis socket timeouts: a stalled store must fail a request quickly, not hang a worker.
REDIS_TIMEOUT_SECONDS = 1.0


class StoreUnavailable(Exception):
    """The shared store cannot be reached; the caller must refuse (fail closed)."""


@dataclass(frozen=True, slots=True)
class Incr:
    """`incr(key, ttl, amount)`; result: the new value. With `only_if` (the index of an
    `AddOnce` earlier in the same `run`) it is skipped when that key was not new; result None."""

    key: str
    ttl: timedelta
    amount: int = 1
    only_if: int | None = None


@dataclass(frozen=True, slots=True)
class Count:
    """`count(key)`; result: the value, 0 when absent or expired."""

    key: str


@dataclass(frozen=True, slots=True)
class AddOnce:
    """`add_once(key, ttl)`; result: True when the key was new."""

    key: str
    ttl: timedelta


@dataclass(frozen=True, slots=True)
class Get:
    """`get(key)`; result: the value or None."""

    key: str


@dataclass(frozen=True, slots=True)
class Set:
    """`set(key, value, ttl)`, skipped like `Incr` when `only_if` names an `AddOnce` whose key
    was not new; result None."""

    key: str
    value: bytes
    ttl: timedelta
    only_if: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """`delete(key)`; result None."""

    key: str


Op = Incr | Count | AddOnce | Get | Set | Delete
Result = int | bool | bytes | None


def _check_ops(ops: Sequence[Op]) -> None:
    for i, op in enumerate(ops):
        _check(op.key, getattr(op, "ttl", None))
        only_if = getattr(op, "only_if", None)
        if only_if is not None and not (0 <= only_if < i and isinstance(ops[only_if], AddOnce)):
            raise ValueError("only_if must name an AddOnce earlier in the same run")


class SharedStore(Protocol):
    def run(self, ops: Sequence[Op]) -> list[Result]:
        """Apply `ops` in order as one step and return one result per op (see the op types).

        Redis: atomic as a whole. Database: one transaction (each op atomic; on SQLite the
        whole run, which holds the write lock). A failure raises StoreUnavailable and applies
        nothing in the database (the transaction is rolled back); in Redis a script that
        cannot run applies nothing either.
        """
        ...

    def incr(self, key: str, ttl: timedelta, amount: int = 1) -> int:
        """Atomically add `amount` to the counter `key` and return the new value.

        A counter that does not exist (or has expired) starts from zero and lives for `ttl`
        from this first increment; later increments do not extend it (a fixed window).
        """
        ...

    def count(self, key: str) -> int:
        """The counter's current value, 0 when absent or expired."""
        ...

    def add_once(self, key: str, ttl: timedelta) -> bool:
        """Remember `key` for `ttl`. True when it was new, False when already present (replay)."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: timedelta) -> None: ...

    def take(self, key: str) -> bytes | None:
        """Get and delete in one atomic step (single-use values such as SAML artifacts)."""
        ...

    def delete(self, key: str) -> None: ...

    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""
        ...


def _check(key: str, ttl: timedelta | None = None) -> None:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"store key must be 1 to {MAX_KEY_LENGTH} characters")
    if ttl is not None and ttl <= timedelta(0):
        raise ValueError("store ttl must be positive")


# --- database -----------------------------------------------------------------------------


class SharedState(Base):
    """One key of the database-backed store: a counter, a marker or a value, with its expiry."""

    __tablename__ = "shared_state"

    key: Mapped[str] = mapped_column(sa.String(MAX_KEY_LENGTH), primary_key=True)
    counter: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    value: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    # Every read filters on it and the purge scans it.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)


_R = TypeVar("_R")


def _nothing(_result: sa.CursorResult[Any]) -> None:
    return None


_T: sa.Table = SharedState.__table__  # type: ignore[assignment]


class DatabaseStore:
    """The SharedStore in the `shared_state` table; every operation is one statement.

    Upserts use INSERT ... ON CONFLICT ... RETURNING (SQLite >= 3.35 and PostgreSQL), so two
    workers incrementing one counter can never both read the old value.

    The hot operations are fixed SQL strings sent to the driver as they are (one per dialect,
    built once): they run on every request, and building and compiling a SQLAlchemy upsert
    for each would cost more CPU than the database spends on it.

    On SQLite the table lives in a file of its own next to the main database: the main
    database's request sessions take the write lock when they begin (BEGIN IMMEDIATE), and a
    store call made while a request holds it would otherwise wait for itself.
    """

    def __init__(self, engine: sa.Engine, *, purge_every: int = PURGE_EVERY) -> None:
        self.engine = engine
        self.purge_every = purge_every
        self._writes = 0
        self._lock = threading.Lock()
        self._insert: Any = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        self._sqlite = engine.dialect.name == "sqlite"
        self._own = _ThreadConnection(engine) if self._sqlite else None
        self._mark = "?" if self._sqlite else "%s"
        self._sql = _statements(self._mark)
        self._dbapi: Any = engine.dialect.dbapi
        # UTCDateTime's conversion for this driver (SQLite: naive UTC text; PostgreSQL: aware).
        self._stamp: Callable[[datetime], Any] = (
            UTCDateTime().bind_processor(engine.dialect) or (lambda value: value)
        )
        adapt = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol))
        if self._sqlite and adapt is not None:
            # The driver's own adapter, applied once per distinct time of a run rather than by
            # the driver for every parameter (four per counter): the very same text is bound.
            naive = self._stamp
            self._stamp = lambda value: adapt(naive(value))

    @classmethod
    def from_settings(cls, settings: Settings, engine: sa.Engine | None = None) -> DatabaseStore:
        """The store for this gateway's database; `engine` (the app's) is shared on PostgreSQL."""
        url = normalise_database_url(settings.database_url)
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                main = Path(path)
                url = "sqlite:///" + str(main.with_name(main.stem + "-shared-state" + main.suffix))
            engine = make_engine(url)

            @sa.event.listens_for(engine, "connect")
            def _redis_like_durability(dbapi_connection: Any, _record: Any) -> None:
                # Ephemeral state (sessions, counters) is kept as durable as in Redis, the
                # production store, which does not sync each write either: with WAL, NORMAL
                # syncs at checkpoints, so a crash of the machine (never of the process) may
                # lose the last writes; the database stays consistent. The main database
                # keeps FULL: accounts, codes and the audit trail sync at every commit.
                dbapi_connection.execute("PRAGMA synchronous=NORMAL")

            # Ephemeral state in a file of its own: created here, not by migrations.
            Base.metadata.create_all(engine, tables=[_T])
            return cls(engine)
        return cls(engine if engine is not None else make_engine(url, serving=True))

    # -- helpers --

    def _run(self, stmt: Any, fetch: Callable[[sa.CursorResult[Any]], _R]) -> _R:
        # Rows are fetched inside the transaction: SQLite cannot commit with RETURNING pending.
        with self._transaction() as conn:
            return fetch(conn.execute(stmt))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            unreachable = sa.exc.OperationalError | sa.exc.InterfaceError
            if exc.connection_invalidated or isinstance(exc, unreachable):
                raise StoreUnavailable("database store unreachable") from exc
            raise
        except SQLAlchemyError as exc:
            raise StoreUnavailable("database store failed") from exc

    def _after_write(self) -> None:
        with self._lock:
            self._writes += 1
            due = self._writes % self.purge_every == 0
        if due:
            # Housekeeping only: the write itself succeeded.
            with contextlib.suppress(StoreUnavailable):
                self.purge_expired(limit=PURGE_BATCH)

    # -- SharedStore --

    def run(self, ops: Sequence[Op]) -> list[Result]:
        _check_ops(ops)
        if not ops:
            return []
        now = clock.now()
        stamp = self._stamp(now)
        sql = self._sql
        # A read of a key that no earlier op of this run writes does not depend on the run's
        # writes: such reads are fetched together by one SELECT before the first write. The
        # values are the same: on SQLite the run holds the write lock throughout, and on
        # PostgreSQL each op is atomic on its own, not the run as a whole.
        early: list[bool] = []
        written: set[str] = set()
        for op in ops:
            if isinstance(op, Count | Get):
                early.append(op.key not in written)
            else:
                early.append(False)
                written.add(op.key)
        reads_only = not written
        prefetch = early.count(True) > 1
        rows: dict[str, Any] = {}
        expiries: dict[timedelta, Any] = {}  # one conversion per distinct ttl
        results: list[Result] = []
        # The driver's own connection and plain SQL: these run on every request, where
        # SQLAlchemy's statement and transaction layers would cost more CPU than the
        # database spends. On SQLite the thread's own connection (no pool round trip).
        try:
            raw: Any = self._own.get() if self._own is not None else self.engine.raw_connection()
        except (SQLAlchemyError, self._dbapi.Error) as exc:
            raise StoreUnavailable("database store unreachable") from exc
        try:
            cursor = raw.cursor()
            if self._sqlite and not (reads_only and len(ops) == 1):
                # IMMEDIATE takes the write lock up front (gateway.db); one read alone needs
                # no transaction at all.
                cursor.execute("BEGIN IMMEDIATE")
            execute = cursor.execute
            if prefetch:
                keys = list(dict.fromkeys(op.key for op, e in zip(ops, early, strict=True) if e))
                for start in range(0, len(keys), _PREFETCH_CHUNK):
                    chunk = keys[start:start + _PREFETCH_CHUNK]
                    execute(_prefetch_sql(self._mark, len(chunk)), (stamp, *chunk))
                    rows.update((row[0], row[1:]) for row in cursor.fetchall())
            for op, e in zip(ops, early, strict=True):
                result: Result = None
                if isinstance(op, Count | Get):
                    if e and prefetch:
                        row = rows.get(op.key)
                    else:
                        execute(sql.read, (op.key, stamp))
                        row = cursor.fetchone()
                    if isinstance(op, Count):
                        result = int(row[0] or 0) if row is not None else 0
                    else:
                        result = bytes(row[1]) if row is not None and row[1] is not None else None
                elif isinstance(op, Incr | AddOnce | Set):
                    expires = expiries.get(op.ttl)
                    if expires is None:
                        expires = expiries[op.ttl] = self._stamp(now + op.ttl)
                    if isinstance(op, Incr):
                        if op.only_if is None or results[op.only_if]:
                            execute(sql.incr, (op.key, op.amount, expires, stamp, stamp, stamp))
                            row = cursor.fetchone()
                            result = int(row[0]) if row is not None else 0
                    elif isinstance(op, AddOnce):
                        execute(sql.add_once, (op.key, expires, stamp))
                        result = cursor.fetchone() is not None
                    elif op.only_if is None or results[op.only_if]:
                        execute(sql.set, (op.key, op.value, expires))
                elif isinstance(op, Delete):
                    execute(sql.delete, (op.key,))
                else:  # pragma: no cover - the Op union is closed
                    raise TypeError(f"not a store operation: {type(op).__name__}")
                results.append(result)
            cursor.close()
            raw.commit()
        except self._dbapi.Error as exc:
            try:
                raw.rollback()
            except self._dbapi.Error:
                raw.invalidate()
            if isinstance(exc, self._dbapi.OperationalError | self._dbapi.InterfaceError):
                raw.invalidate()
                raise StoreUnavailable("database store unreachable") from exc
            raise
        finally:
            if self._own is None:
                raw.close()  # back to the pool (which rolls back whatever is left open)
            else:
                raw.settle()  # the same for a kept connection
        if not reads_only:
            self._after_write()
        return results

    def incr(self, key: str, ttl: timedelta, amount: int = 1) -> int:
        value = self.run([Incr(key, ttl, amount)])[0]
        assert isinstance(value, int)
        return value

    def count(self, key: str) -> int:
        value = self.run([Count(key)])[0]
        assert isinstance(value, int)
        return value

    def add_once(self, key: str, ttl: timedelta) -> bool:
        return bool(self.run([AddOnce(key, ttl)])[0])

    def get(self, key: str) -> bytes | None:
        value = self.run([Get(key)])[0]
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl: timedelta) -> None:
        self.run([Set(key, value, ttl)])

    def take(self, key: str) -> bytes | None:
        _check(key)
        now = clock.now()
        stmt = sa.delete(_T).where(_T.c.key == key).returning(_T.c.value, _T.c.expires_at)
        row = self._run(stmt, lambda r: r.first())
        if row is None or row.value is None or row.expires_at <= now:
            return None
        return bytes(row.value)

    def delete(self, key: str) -> None:
        self.run([Delete(key)])

    def ping(self) -> None:
        self._run(sa.select(sa.literal(1)), _nothing)

    def purge_expired(self, limit: int | None = None, *, now: datetime | None = None) -> int:
        """Delete expired rows (at most `limit`); returns how many went.

        The expiry is checked again on the row deleted: a key that a write took over since
        the sub-select found it (PostgreSQL re-reads a row changed under the statement) is
        live again and stays. Rows locked by a write in progress are skipped (SKIP LOCKED),
        so the purge never waits behind a request; the next purge gets them.
        """
        due = _T.c.expires_at <= (now or clock.now())
        with self._transaction() as conn:
            return delete_due(conn, _T.c.key, due, limit)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
        self.engine.dispose()


class _ThreadConnection:
    """SQLite: one connection per thread, taken from the engine once and then kept (a pool
    checkout and return cost more instructions than a store step's own SQL; issue 5,
    "Performance"). `invalidate()` drops a connection after an error; the next step opens
    another. A connection is never used in another process: after a fork the child opens
    its own and leaves the inherited one alone (closing it there could disturb the parent's
    SQLite locks)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._local = threading.local()

    def get(self) -> _OwnConnection:
        own: _OwnConnection | None = getattr(self._local, "connection", None)
        if own is not None and own.pid == os.getpid() and not own.dropped:
            return own
        if own is not None and own.pid != os.getpid():
            _INHERITED.append(own)  # kept open, never used: see the class docstring
        fairy = self._engine.raw_connection()  # as the pool makes it: the connect listeners ran
        fairy.detach()  # ours now: the pool neither resets nor lends it
        own = _OwnConnection(fairy)
        self._local.connection = own
        return own

    def close(self) -> None:
        """Close the calling thread's connection (others close when their thread ends)."""
        own: _OwnConnection | None = getattr(self._local, "connection", None)
        if own is not None and own.pid == os.getpid():
            own.invalidate()
        self._local.connection = None


class _OwnConnection:
    """A thread's kept connection, with the pooled connection's methods `run` uses."""

    __slots__ = ("_fairy", "dropped", "pid")

    def __init__(self, fairy: Any) -> None:
        self._fairy = fairy
        self.pid = os.getpid()
        self.dropped = False

    def cursor(self) -> Any:
        return self._fairy.cursor()

    def commit(self) -> None:
        self._fairy.commit()

    def rollback(self) -> None:
        self._fairy.rollback()

    def settle(self) -> None:
        """After a step, as the pool's reset on return: a transaction left open (the step
        was interrupted by something other than a database error) is rolled back, so the
        thread never keeps SQLite's write lock; a connection that cannot is dropped."""
        if self.dropped or not self._fairy.dbapi_connection.in_transaction:
            return
        try:
            self._fairy.rollback()
        except Exception:
            self.invalidate()

    def invalidate(self) -> None:
        self.dropped = True
        with contextlib.suppress(Exception):
            self._fairy.close()  # detached: this closes the driver's connection


#: Connections a forked child inherited from its parent's threads (see _ThreadConnection).
_INHERITED: list[_OwnConnection] = []


@dataclass(frozen=True)
class _Sql:
    incr: str
    read: str
    add_once: str
    set: str
    delete: str


# The store's statements, with "?" for each parameter. The same SQL serves SQLite and
# PostgreSQL: INSERT ... ON CONFLICT ... RETURNING, and in an UPDATE every right-hand side reads
# the row as it was before the statement. The table is `SharedState.__tablename__`.
_INCR_SQL = (
    'INSERT INTO shared_state ("key", counter, value, expires_at) VALUES (?, ?, NULL, ?) '
    'ON CONFLICT ("key") DO UPDATE SET '
    # The counter starts over (and its window with it) once the old one has expired.
    "counter = CASE WHEN shared_state.expires_at <= ? THEN excluded.counter "
    "ELSE shared_state.counter + excluded.counter END, "
    "value = CASE WHEN shared_state.expires_at <= ? THEN NULL ELSE shared_state.value END, "
    "expires_at = CASE WHEN shared_state.expires_at <= ? THEN excluded.expires_at "
    "ELSE shared_state.expires_at END "
    "RETURNING counter"
)
_READ_SQL = 'SELECT counter, value FROM shared_state WHERE "key" = ? AND expires_at > ?'
# Only an expired row may be taken over; a live one makes the upsert a no-op and RETURNING
# then yields nothing: that is the replay.
_ADD_ONCE_SQL = (
    'INSERT INTO shared_state ("key", counter, value, expires_at) VALUES (?, 0, NULL, ?) '
    'ON CONFLICT ("key") DO UPDATE SET counter = 0, value = NULL, '
    "expires_at = excluded.expires_at WHERE shared_state.expires_at <= ? "
    'RETURNING "key"'
)
_SET_SQL = (
    'INSERT INTO shared_state ("key", counter, value, expires_at) VALUES (?, 0, ?, ?) '
    'ON CONFLICT ("key") DO UPDATE SET counter = 0, value = excluded.value, '
    "expires_at = excluded.expires_at"
)
_DELETE_SQL = 'DELETE FROM shared_state WHERE "key" = ?'
#: Keys read by one prefetch SELECT at most (SQLite before 3.32 allows 999 parameters).
_PREFETCH_CHUNK = 500


def _prefetch_sql(mark: str, keys: int) -> str:
    """The live rows of `keys` keys (parameters: the time, then the keys). Only placeholders
    are put into the text."""
    return (
        f'SELECT "key", counter, value FROM shared_state WHERE expires_at > {mark} '  # noqa: S608
        f'AND "key" IN ({", ".join([mark] * keys)})'
    )


def _statements(mark: str) -> _Sql:
    """The statements for a driver whose placeholder is `mark` (SQLite "?", psycopg "%s")."""
    assert _T.name == "shared_state"
    return _Sql(*(
        sql.replace("?", mark)
        for sql in (_INCR_SQL, _READ_SQL, _ADD_ONCE_SQL, _SET_SQL, _DELETE_SQL)
    ))


# --- Redis --------------------------------------------------------------------------------

# SET NX creates the counter with its TTL only when absent; INCRBY then adds. One script, so no
# other client can slip between the two and no counter is ever left without an expiry.
_INCR_SCRIPT = """
redis.call('SET', KEYS[1], 0, 'PX', ARGV[2], 'NX')
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


# `RedisStore.run`: KEYS[i] is op i's key; ARGV holds, per op, its name and three arguments
# (amount, ttl in ms, only_if as a 1-based op index or 0; or value, ttl, only_if). Redis runs a
# script atomically, so no other client sees the operations half done.
_RUN_SCRIPT = """
local results = {}
for i = 1, #KEYS do
  local a = (i - 1) * 4
  local op, x, ttl, cond = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  local go = cond == 0 or results[cond] == 1
  local key = KEYS[i]
  if op == 'incr' then
    if go then
      redis.call('SET', key, 0, 'PX', ttl, 'NX')
      results[i] = redis.call('INCRBY', key, x)
    else
      results[i] = false
    end
  elseif op == 'count' or op == 'get' then
    results[i] = redis.call('GET', key)
  elseif op == 'add_once' then
    if redis.call('SET', key, '1', 'PX', ttl, 'NX') then results[i] = 1 else results[i] = 0 end
  elseif op == 'set' then
    if go then redis.call('SET', key, x, 'PX', ttl) end
    results[i] = false
  elseif op == 'delete' then
    redis.call('DEL', key)
    results[i] = false
  else
    return redis.error_reply('unknown store operation')
  end
end
return results
"""


def _ms(ttl: timedelta) -> int:
    return max(1, int(ttl.total_seconds() * 1000))


class RedisStore:
    """The SharedStore in Redis; every key carries `settings.redis_prefix`."""

    def __init__(self, client: redis_lib.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._incr = client.register_script(_INCR_SCRIPT)
        self._script = client.register_script(_RUN_SCRIPT)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStore:
        import redis as redis_lib
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        assert settings.redis_url is not None
        client = redis_lib.Redis.from_url(
            settings.redis_url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            # One quick retry covers a pooled connection the server closed; no backoff, so an
            # outage fails the request within about two timeouts.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        return cls(client, settings.redis_prefix)

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        import redis as redis_lib

        try:
            return func(*args, **kwargs)
        except redis_lib.exceptions.RedisError as exc:
            # Any Redis failure fails closed; the message never carries the URL (credentials).
            raise StoreUnavailable(f"redis store failed ({type(exc).__name__})") from None

    def run(self, ops: Sequence[Op]) -> list[Result]:
        _check_ops(ops)
        if not ops:
            return []
        keys: list[str] = []
        args: list[str | int | bytes] = []
        for op in ops:
            keys.append(self._k(op.key))
            only_if: int | None = getattr(op, "only_if", None)
            cond = 0 if only_if is None else only_if + 1  # the script counts from 1
            if isinstance(op, Incr):
                args += ["incr", op.amount, _ms(op.ttl), cond]
            elif isinstance(op, Count):
                args += ["count", 0, 0, 0]
            elif isinstance(op, AddOnce):
                args += ["add_once", 0, _ms(op.ttl), 0]
            elif isinstance(op, Get):
                args += ["get", 0, 0, 0]
            elif isinstance(op, Set):
                args += ["set", op.value, _ms(op.ttl), cond]
            elif isinstance(op, Delete):
                args += ["delete", 0, 0, 0]
            else:  # pragma: no cover - the Op union is closed
                raise TypeError(f"not a store operation: {type(op).__name__}")
        raw = self._call(self._script, keys=keys, args=args)
        results: list[Result] = []
        for op, value in zip(ops, raw, strict=True):
            if isinstance(op, Incr):
                results.append(None if value is None else int(value))
            elif isinstance(op, Count):
                results.append(int(value) if value is not None else 0)
            elif isinstance(op, AddOnce):
                results.append(value == 1)
            elif isinstance(op, Get):
                results.append(value)
            else:
                results.append(None)
        return results

    def incr(self, key: str, ttl: timedelta, amount: int = 1) -> int:
        _check(key, ttl)
        return int(self._call(self._incr, keys=[self._k(key)], args=[amount, _ms(ttl)]))

    def count(self, key: str) -> int:
        _check(key)
        value = self._call(self.client.get, self._k(key))
        return int(value) if value is not None else 0

    def add_once(self, key: str, ttl: timedelta) -> bool:
        _check(key, ttl)
        return bool(self._call(self.client.set, self._k(key), b"1", nx=True, px=_ms(ttl)))

    def get(self, key: str) -> bytes | None:
        _check(key)
        value: bytes | None = self._call(self.client.get, self._k(key))
        return value

    def set(self, key: str, value: bytes, ttl: timedelta) -> None:
        _check(key, ttl)
        self._call(self.client.set, self._k(key), value, px=_ms(ttl))

    def take(self, key: str) -> bytes | None:
        _check(key)
        value: bytes | None = self._call(self.client.getdel, self._k(key))
        return value

    def delete(self, key: str) -> None:
        _check(key)
        self._call(self.client.delete, self._k(key))

    def ping(self) -> None:
        self._call(self.client.ping)

    def close(self) -> None:
        self.client.close()


# --- wiring -------------------------------------------------------------------------------

EXTENSION = "gateway.store"


def make_store(settings: Settings, engine: sa.Engine | None = None) -> DatabaseStore | RedisStore:
    if settings.redis_url:
        return RedisStore.from_settings(settings)
    return DatabaseStore.from_settings(settings, engine)


def init_app(app: Flask, settings: Settings) -> SharedStore:
    """Choose the store: Redis when GATEWAY_REDIS_URL is set, else the database."""
    from gateway.db import get_db

    store = make_store(settings, get_db(app).engine)
    app.extensions[EXTENSION] = store
    return store


def get_store(app: Flask | None = None) -> SharedStore:
    from flask import current_app

    store: SharedStore = (app or current_app).extensions[EXTENSION]
    return store


def purge_expired(app: Flask | None = None) -> int:
    """Remove every expired row of the database store, PURGE_BATCH rows per transaction
    (`gateway purge`, gateway.purge, runs it from cron).

    Redis expires keys itself; with a Redis store this does nothing and returns 0.
    """
    store = get_store(app)
    if not isinstance(store, DatabaseStore):
        return 0
    return in_batches(lambda limit: store.purge_expired(limit), PURGE_BATCH)
