"""Shared state for every instance: counters, replay caches and short-lived values.

Nothing that several gateway processes must agree on lives in process memory (issue 2,
"Serving"): rate limits, lockout counters, replay caches of SAML request IDs, single-use
artifacts and server-side sessions go through a `SharedStore`. Two implementations: the
database (`DatabaseStore`, the default) and Redis (`RedisStore`, when GATEWAY_REDIS_URL is set).
Both are atomic per operation and both fail closed: an unreachable store raises
`StoreUnavailable`, and callers refuse the action rather than let it through.

Counters use a fixed window: the TTL is set when the counter is created and later increments
never extend it, so a steady trickle of attempts cannot keep a window open forever.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from gateway import clock
from gateway.db import Base, UTCDateTime, make_engine
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


class SharedStore(Protocol):
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
            # Ephemeral state in a file of its own: created here, not by migrations.
            Base.metadata.create_all(engine, tables=[_T])
            return cls(engine)
        return cls(engine if engine is not None else make_engine(url))

    # -- helpers --

    def _run(self, stmt: Any, fetch: Callable[[sa.CursorResult[Any]], _R]) -> _R:
        # Rows are fetched inside the transaction: SQLite cannot commit with RETURNING pending.
        try:
            with self.engine.begin() as conn:
                return fetch(conn.execute(stmt))
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

    def _live(self, key: str, now: datetime) -> Any:
        return sa.and_(_T.c.key == key, _T.c.expires_at > now)

    # -- SharedStore --

    def incr(self, key: str, ttl: timedelta, amount: int = 1) -> int:
        _check(key, ttl)
        now = clock.now()
        stmt = self._insert(_T).values(key=key, counter=amount, value=None, expires_at=now + ttl)
        expired = _T.c.expires_at <= now
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=[_T.c.key],
            set_={
                "counter": sa.case((expired, new.counter), else_=_T.c.counter + new.counter),
                "expires_at": sa.case((expired, new.expires_at), else_=_T.c.expires_at),
                "value": sa.case((expired, sa.null()), else_=_T.c.value),
            },
        ).returning(_T.c.counter)
        value = int(self._run(stmt, lambda r: r.scalar_one()))
        self._after_write()
        return value

    def count(self, key: str) -> int:
        _check(key)
        query = sa.select(_T.c.counter).where(self._live(key, clock.now()))
        value = self._run(query, lambda r: r.scalar())
        return int(value or 0)

    def add_once(self, key: str, ttl: timedelta) -> bool:
        _check(key, ttl)
        now = clock.now()
        stmt = self._insert(_T).values(key=key, counter=0, value=None, expires_at=now + ttl)
        # Only an expired row may be taken over; a live one makes the upsert a no-op and
        # RETURNING then yields nothing: that is the replay.
        stmt = stmt.on_conflict_do_update(
            index_elements=[_T.c.key],
            set_={"counter": 0, "value": None, "expires_at": stmt.excluded.expires_at},
            where=_T.c.expires_at <= now,
        ).returning(_T.c.key)
        fresh = self._run(stmt, lambda r: r.first()) is not None
        self._after_write()
        return fresh

    def get(self, key: str) -> bytes | None:
        _check(key)
        query = sa.select(_T.c.value).where(self._live(key, clock.now()))
        value = self._run(query, lambda r: r.scalar())
        return bytes(value) if value is not None else None

    def set(self, key: str, value: bytes, ttl: timedelta) -> None:
        _check(key, ttl)
        expires_at = clock.now() + ttl
        stmt = self._insert(_T).values(key=key, counter=0, value=value, expires_at=expires_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_T.c.key],
            set_={"counter": 0, "value": stmt.excluded.value, "expires_at": expires_at},
        )
        self._run(stmt, _nothing)
        self._after_write()

    def take(self, key: str) -> bytes | None:
        _check(key)
        now = clock.now()
        stmt = sa.delete(_T).where(_T.c.key == key).returning(_T.c.value, _T.c.expires_at)
        row = self._run(stmt, lambda r: r.first())
        if row is None or row.value is None or row.expires_at <= now:
            return None
        return bytes(row.value)

    def delete(self, key: str) -> None:
        _check(key)
        self._run(sa.delete(_T).where(_T.c.key == key), _nothing)

    def ping(self) -> None:
        self._run(sa.select(sa.literal(1)), _nothing)

    def purge_expired(self, limit: int | None = None) -> int:
        """Delete expired rows (at most `limit`); returns how many went."""
        now = clock.now()
        doomed = sa.select(_T.c.key).where(_T.c.expires_at <= now)
        if limit is not None:
            doomed = doomed.limit(limit)
        stmt = sa.delete(_T).where(_T.c.key.in_(doomed.scalar_subquery()))
        return self._run(stmt, lambda r: int(r.rowcount or 0))

    def close(self) -> None:
        self.engine.dispose()


# --- Redis --------------------------------------------------------------------------------

# SET NX creates the counter with its TTL only when absent; INCRBY then adds. One script, so no
# other client can slip between the two and no counter is ever left without an expiry.
_INCR_SCRIPT = """
redis.call('SET', KEYS[1], 0, 'PX', ARGV[2], 'NX')
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


def _ms(ttl: timedelta) -> int:
    return max(1, int(ttl.total_seconds() * 1000))


class RedisStore:
    """The SharedStore in Redis; every key carries `settings.redis_prefix`."""

    def __init__(self, client: redis_lib.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._incr = client.register_script(_INCR_SCRIPT)

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
    """Remove every expired row of the database store (for a CLI or a cron job).

    Redis expires keys itself; with a Redis store this does nothing and returns 0.
    """
    store = get_store(app)
    if isinstance(store, DatabaseStore):
        return store.purge_expired()
    return 0
