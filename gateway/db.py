"""Database access: the declarative base, the engine, request-scoped sessions and migrations.

SQLite is the embedded default (WAL journal, foreign keys on, a busy timeout so several
workers can share it); PostgreSQL is reached through psycopg 3. The schema is owned by
Alembic (`gateway/migrations`); `tests/test_migrations.py` proves models and migrations agree.

Every model module is listed in `MODEL_MODULES` so that the metadata Alembic compares
against is complete however the app was imported.
"""

from __future__ import annotations

import importlib
import sqlite3
import time
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Flask, current_app, g
from flask.globals import _cv_app
from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from gateway.settings import Settings, normalise_database_url

#: Modules that define tables. A new model module is added here.
MODEL_MODULES: tuple[str, ...] = (
    "gateway.accounts.models",
    "gateway.accounts.history",
    "gateway.desks.models",
    "gateway.desks.register",
    "gateway.desks.eidas_links",
    "gateway.audit",
    "gateway.store",
    "gateway.sms.codes",
    "gateway.sms.models",
    "gateway.flows.login",
    "gateway.flows.sessions",
    "gateway.idp.oidc.clients",
    "gateway.idp.oidc.tokens",
    "gateway.idp.saml.registry",
)

#: A pooled PostgreSQL connection idle at least this long is pinged before it is handed out
#: (a database restart or a firewall's idle timeout may have closed it; the pool then opens a
#: new one). A connection in steady use is not: one that breaks while in use raises a
#: disconnect error, and SQLAlchemy then discards the whole pool.
POOL_PING_IDLE_SECONDS = 5.0

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database keeps.

    SQLite has no time zones; PostgreSQL gets `timestamp with time zone`. Naive datetimes are
    refused on the way in, so local time can never slip into an expiry.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def import_models() -> sa.MetaData:
    for name in MODEL_MODULES:
        importlib.import_module(name)
    return Base.metadata


#: PostgreSQL limits for the connections that serve requests (`Database`, the shared-state
#: store), so a runaway statement or a lock held by a stuck worker ends in a 503 within
#: seconds instead of tying up workers (ASVS 11.1.4's resource limits). A request's
#: statements take milliseconds; batch commands (purge, expiry) work in short batches.
#: Migrations do not get them (an index on a large table may take longer). An operator sets
#: other values with libpq's `options` parameter in the URL, which then replaces these.
SERVING_LIMITS = {
    "statement_timeout": "30s",
    "lock_timeout": "10s",
    "idle_in_transaction_session_timeout": "60s",
}


def make_engine(url: str, *, serving: bool = False, **kwargs: Any) -> Engine:
    """An engine for `url`. `serving`: one that serves requests (on PostgreSQL it sets
    `SERVING_LIMITS` unless the URL gives its own `options`)."""
    url = normalise_database_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"timeout": 30}, hide_parameters=True, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself so transactions mean what they say.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: sa.Connection) -> None:
            # IMMEDIATE takes the write lock up front: two workers can never both read a
            # counter and then both write it. Sent on the driver's connection: every request
            # transaction begins here, and SQLAlchemy's statement layer (exec_driver_sql)
            # cost about a sixth of a whole ORM session's begin-to-close (issue 5,
            # "Performance"); its listeners and error classes are kept.
            dbapi_connection: Any = conn.connection.driver_connection
            cursor = dbapi_connection.cursor()
            for listener in conn.dispatch.before_cursor_execute:
                listener(conn, cursor, "BEGIN IMMEDIATE", (), None, False)
            try:
                cursor.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise sa.exc.DBAPIError.instance(
                    "BEGIN IMMEDIATE", None, exc, sqlite3.Error, hide_parameters=True,
                    dialect=conn.dialect,
                ) from exc
            finally:
                cursor.close()

        return engine
    if serving and "options" not in sa.engine.make_url(url).query:
        options = " ".join(f"-c {name}={value}" for name, value in SERVING_LIMITS.items())
        kwargs["connect_args"] = {"options": options, **kwargs.get("connect_args", {})}
    # hide_parameters: database errors must never carry personal values into logs.
    engine = sa.create_engine(url, hide_parameters=True, **kwargs)

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # A pessimistic ping like pool_pre_ping, but only for a connection that sat idle:
        # one ping per checkout is a round trip on every request (issue 6, "Performance").
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < POOL_PING_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa.exc.DisconnectionError("stale pooled connection") from exc
        if not alive:
            raise sa.exc.DisconnectionError("stale pooled connection")

    return engine


class Database:
    """The engine and a session factory for one app."""

    def __init__(self, url: str, *, serving: bool = True) -> None:
        self.url = normalise_database_url(url)
        self.engine = make_engine(self.url, serving=serving)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self.sessionmaker.begin() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def init_app(app: Flask, settings: Settings) -> Database:
    import_models()
    database = Database(settings.database_url)
    app.extensions["gateway.db"] = database

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            # Anything not committed explicitly by a service is thrown away: no half-written rows.
            session.rollback()
            session.close()

    return database


def get_db(app: Flask | None = None) -> Database:
    db: Database = (app or current_app).extensions["gateway.db"]
    return db


def session() -> Session:
    """The session of the current request (or app context), closed when it ends."""
    # `g` of the current app context, read once (what the `g` proxy looks up each time).
    try:
        app_ctx = _cv_app.get()
    except LookupError:
        raise RuntimeError("Working outside of application context.") from None
    held = app_ctx.g.__dict__.get("db_session")
    if held is None:
        held = app_ctx.g.db_session = app_ctx.app.extensions["gateway.db"].sessionmaker()
    s: Session = held
    return s


def utcnow() -> datetime:
    from gateway.clock import now

    return now()


# --- hot statements ---------------------------------------------------------------------------


class Prepared:
    """A hot statement built once, compiled once per dialect, and sent to the driver's cursor.

    For the few statements that run on every login or token request (issue 5 and 6,
    "Performance"): SQLAlchemy's execution layer (execution context, parameter and result
    objects) costs about 35 microseconds of CPU per statement on PostgreSQL, twice what the
    driver itself spends. `execute` runs the statement's SQL as SQLAlchemy compiled it for the
    connection's dialect, in the connection's transaction, with the column types' own bind and
    result conversions (UTCDateTime included), and raises SQLAlchemy's exception classes
    (IntegrityError and so on; a lost connection is invalidated as SQLAlchemy would).

    Rules, checked when a statement is first compiled: every parameter the statement needs is
    passed (a column's Python-side default is *not* applied: pass the value); no expanding
    (IN), callable or post-compile parameters. `before_cursor_execute` listeners see each
    statement (with no execution context: None), so statement counts and plan dumps
    (bench/login_cpu.py, bench/login_scale.py) include them; other events do not fire.
    """

    __slots__ = ("_plans", "statement")

    def __init__(self, statement: sa.ClauseElement) -> None:
        self.statement = statement
        self._plans: dict[str, _Plan] = {}

    def execute(self, conn: sa.Connection, params: Mapping[str, Any]) -> PreparedResult:
        dialect = conn.dialect
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = self._plans[dialect.name] = _Plan(self.statement, dialect)
        if not conn.in_transaction():
            raise RuntimeError("Prepared.execute needs a connection inside a transaction")
        args = plan.arguments(params)
        dbapi_connection: Any = conn.connection.driver_connection
        cursor = dbapi_connection.cursor()
        listeners = conn.dispatch.before_cursor_execute
        if listeners:
            for listener in listeners:
                listener(conn, cursor, plan.sql, args, None, False)
        try:
            if plan.prepare:
                cursor.execute(plan.sql, args, prepare=True)
            else:
                cursor.execute(plan.sql, args)
            rows = cursor.fetchall() if plan.columns else []
            rowcount = cursor.rowcount
            if rows and plan.row_type is None:
                plan.learn_results(cursor.description)
        except dialect.loaded_dbapi.Error as exc:
            invalidated = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if invalidated:
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                plan.sql, None, exc, dialect.loaded_dbapi.Error, hide_parameters=True,
                connection_invalidated=invalidated, dialect=dialect,
            ) from exc
        finally:
            cursor.close()
        return PreparedResult([plan.row(r) for r in rows] if rows else [], rowcount)


_M = TypeVar("_M")


def as_loaded(model: type[_M], values: Mapping[str, Any]) -> _M:
    """An instance of `model` holding `values` (a whole row) as a load outside any session
    leaves it: without the ORM's instrumented constructor, which records every value as a
    change and costs more than the statement that wrote or read the row (the hot paths that
    run `Prepared` statements). `make_transient_to_detached` and `Session.add` then make it
    part of a session where that is wanted."""
    mapper = _MAPPERS.get(model)
    if mapper is None:
        mapper = sa.inspect(model)
        if not mapper.configured:
            sa.orm.configure_mappers()  # sets up attribute access, as a first query would
        _MAPPERS[model] = mapper
    instance: _M = mapper.class_manager.new_instance()
    instance.__dict__.update(values)
    return instance


_MAPPERS: dict[type[Any], Any] = {}


def transaction_connection(session: Session | sa.Connection) -> sa.Connection:
    """The connection of the caller's transaction: a Session's, or a Connection itself,
    whose transaction begins here when none has yet (as its first statement would), so a
    `Prepared` statement can run on it."""
    if isinstance(session, Session):
        return session.connection()
    if not session.in_transaction():
        session.begin()
    return session


class _Plan:
    """One statement compiled for one dialect: its SQL, how to bind, how to read rows."""

    def __init__(self, statement: sa.ClauseElement, dialect: Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect)
        if compiled.escaped_bind_names or compiled.literal_execute_params or getattr(
            compiled, "post_compile_params", None
        ):
            raise ValueError("Prepared: statement needs parameters rendered at execution")
        self.sql: str = compiled.string
        self.prepare = dialect.driver == "psycopg"
        names: Sequence[str] = (
            compiled.positiontup if dialect.positional else list(compiled.bind_names.values())
        )
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        #: Per parameter in the order the SQL takes them: its name in the SQL, its key,
        #: whether the statement has a value of its own for it (a literal, `values(x=None)`;
        #: as in SQLAlchemy, a parameter passed under its key or name wins), that value, and
        #: the type's bind conversion.
        self.binds: list[tuple[str, str, bool, Any, Callable[[Any], Any] | None]] = []
        for name in names:
            bind = by_name[name]
            if bind.expanding or bind.callable is not None:
                raise ValueError("Prepared: expanding (IN) or callable parameters are not "
                                 "supported")
            own = not bind.required
            self.binds.append((name, bind.key, own, bind.effective_value if own else None,
                               bind.type.dialect_impl(dialect).bind_processor(dialect)))
        self.positional = bool(dialect.positional)
        exported = getattr(statement, "exported_columns", None)
        self.columns: list[Any] = list(exported) if exported is not None else []
        keys = [column.key for column in self.columns]
        if len(set(keys)) != len(keys):
            raise ValueError("Prepared: result columns need distinct names")
        self.keys = keys
        self.dialect = dialect
        self.row_type: Any = None
        #: (position, conversion) of the result columns that have a conversion.
        self.processors: list[tuple[int, Callable[[Any], Any]]] = []

    def arguments(self, params: Mapping[str, Any]) -> Any:
        values = []
        for name, key, own, default, process in self.binds:
            # Looked up as SQLAlchemy does: by the parameter's key, then by its name in the
            # SQL (a column's, for the statement's own values). KeyError: a parameter the
            # statement needs is missing.
            if key in params:
                value = params[key]
            elif own:
                value = params.get(name, default)
            else:
                value = params[name]
            values.append(process(value) if process is not None and value is not None else value)
        if self.positional:
            return values
        return {name: value for (name, *_rest), value in zip(self.binds, values, strict=True)}

    def learn_results(self, description: Any) -> None:
        if len(description) != len(self.columns):
            raise ValueError("Prepared: the driver returned other columns than compiled")
        processors = [
            column.type.dialect_impl(self.dialect).result_processor(self.dialect, entry[1])
            for column, entry in zip(self.columns, description, strict=True)
        ]
        self.processors = [(i, p) for i, p in enumerate(processors) if p is not None]
        self.row_type = namedtuple("PreparedRow", self.keys, rename=False)  # type: ignore[misc]

    def row(self, raw: Sequence[Any]) -> Any:
        # Only the columns with a conversion are touched (an account row has about 30
        # columns, a third of them converted); NULL stays None, as in SQLAlchemy.
        values = list(raw)
        for i, process in self.processors:
            value = values[i]
            if value is not None:
                values[i] = process(value)
        return tuple.__new__(self.row_type, values)


class PreparedResult:
    """Rows (named tuples: attribute access by column key) and the driver's row count."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def one_or_none(self) -> Any:
        if len(self.rows) > 1:
            raise sa.exc.MultipleResultsFound("more than one row")
        return self.first()

    def all(self) -> list[Any]:
        return list(self.rows)


# --- migrations -----------------------------------------------------------------------------

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_database_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (what `gateway db upgrade` runs)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rev: str | None = MigrationContext.configure(conn).get_current_revision()
            return rev
    finally:
        engine.dispose()


# --- deleting what is due -------------------------------------------------------------------


def delete_due(
    db: Session | sa.Connection, key: Any, due: sa.ColumnElement[bool], limit: int | None = None
) -> int:
    """Delete at most `limit` rows (all when None) of `key`'s table for which `due` holds, in
    the caller's transaction; returns how many went. `key` is the table's key column (or the
    ORM attribute mapped to it). `due` is checked again on each row deleted, so a row that a
    request changed since the sub-select found it stays unless it is still due; on PostgreSQL
    rows locked by others are skipped (SKIP LOCKED: left for the next batch or run)."""
    column = key.expression if hasattr(key, "expression") else key
    table = column.table
    doomed = sa.select(column).where(due).with_for_update(skip_locked=True, of=table)
    if limit is not None:
        doomed = doomed.limit(limit)
    stmt = sa.delete(table).where(column.in_(doomed.scalar_subquery()), due)
    result = db.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def in_batches(step: Callable[[int], int], batch_size: int) -> int:
    """Run `step(batch_size)` (one batch, one transaction) until a batch comes back short:
    nothing due is left, or another purger holds the rest. Returns the total."""
    total = 0
    while True:
        done = step(batch_size)
        total += done
        if done < batch_size:
            return total
