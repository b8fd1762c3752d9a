"""`gateway.db.Prepared`: hot statements sent to the driver give what SQLAlchemy gives.

Each case runs the same statement through `Connection.execute` and through `Prepared` in one
transaction and compares rows, row counts and types (UTC timestamps, booleans, nulls), on
the test run's backend (SQLite or PostgreSQL).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.db import Prepared, UTCDateTime, make_engine

WHEN = datetime(2026, 11, 29, 2, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def table(database_url: str) -> Iterator[tuple[sa.Engine, sa.Table]]:
    engine = make_engine(database_url)
    metadata = sa.MetaData()
    t = sa.Table(
        f"prepared_{secrets.token_hex(4)}", metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("at", UTCDateTime, nullable=True),
        sa.Column("flag", sa.Boolean, nullable=False, default=False),
        sa.Column("note", sa.Text, nullable=True),
    )
    metadata.create_all(engine)
    try:
        yield engine, t
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def _rows(result: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in result.all()]


def test_insert_select_update_returning_agree(table: tuple[sa.Engine, sa.Table]) -> None:
    engine, t = table
    insert = Prepared(sa.insert(t))
    select = Prepared(
        sa.select(t)
        .where(t.c.n >= sa.bindparam("low"), sa.or_(t.c.note.is_(None), t.c.note != "skip"))
        .order_by(t.c.id)
    )
    update = Prepared(
        sa.update(t).where(t.c.id == sa.bindparam("key"), t.c.at.is_not(None))
        .values(n=t.c.n + 1, at=sa.bindparam("when")).returning(*t.c)
    )
    with engine.begin() as conn:
        for i, (at, flag, note) in enumerate(
            [(WHEN, True, "x"), (None, False, None), (WHEN + timedelta(days=1), False, "skip")]
        ):
            result = insert.execute(conn, {"id": f"k{i}", "n": i, "at": at, "flag": flag,
                                           "note": note})
            assert result.rowcount == 1
        ours = select.execute(conn, {"low": 0}).all()
        core = conn.execute(select.statement, {"low": 0}).all()
        assert [tuple(r) for r in ours] == [tuple(r) for r in core]
        first = ours[0]
        assert first.id == "k0" and first.flag is True and first.at == WHEN
        assert first.at.tzinfo is not None and first.at.utcoffset() == timedelta(0)
        assert ours[1].at is None and ours[1].note is None
        assert len(ours) == 2  # the literal `!= "skip"` is bound as SQLAlchemy binds it

        later = WHEN + timedelta(hours=1)
        changed = update.execute(conn, {"key": "k0", "when": later})
        assert changed.rowcount == 1
        row = changed.one_or_none()
        assert row.n == 1 and row.at == later and row.at.tzinfo is not None
        none = update.execute(conn, {"key": "k1", "when": later})  # at IS NULL: no row
        assert none.rowcount == 0 and none.first() is None and none.all() == []

        # A value the statement carries (here NULL) is used unless a parameter overrides it.
        clear = Prepared(sa.update(t).where(t.c.id == sa.bindparam("key")).values(note=None))
        assert clear.execute(conn, {"key": "k0"}).rowcount == 1
        assert conn.execute(sa.select(t.c.note).where(t.c.id == "k0")).scalar() is None
        assert clear.execute(conn, {"key": "k0", "note": "kept"}).rowcount == 1
        assert conn.execute(sa.select(t.c.note).where(t.c.id == "k0")).scalar() == "kept"


def test_statements_see_and_join_the_orm_transaction(table: tuple[sa.Engine, sa.Table]) -> None:
    engine, t = table
    insert = Prepared(sa.insert(t))
    count = Prepared(sa.select(sa.func.count().label("total")).select_from(t))
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(sa.insert(t), {"id": "a", "n": 1, "flag": True})
            assert count.execute(conn, {}).first().total == 1  # sees the uncommitted row
            insert.execute(conn, {"id": "b", "n": 2, "at": None, "flag": False, "note": None})
            assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() == 2
            conn.rollback()
        with conn.begin():
            assert count.execute(conn, {}).first().total == 0  # rolled back together


def test_refusals(table: tuple[sa.Engine, sa.Table]) -> None:
    engine, t = table
    insert = Prepared(sa.insert(t))
    with engine.connect() as conn:
        with pytest.raises(RuntimeError):  # outside a transaction: never autocommitted
            insert.execute(conn, {"id": "a", "n": 1, "at": None, "flag": True, "note": None})
        with conn.begin():
            # A column's Python default is not applied: a missing value is an error.
            with pytest.raises(KeyError):
                insert.execute(conn, {"id": "a", "n": 1, "at": None, "note": None})
            insert.execute(conn, {"id": "a", "n": 1, "at": None, "flag": True, "note": None})
            with pytest.raises(sa.exc.IntegrityError):
                insert.execute(conn, {"id": "a", "n": 2, "at": None, "flag": True, "note": None})
            conn.rollback()
    with engine.begin() as conn:
        with pytest.raises(ValueError):
            Prepared(sa.select(t).where(t.c.id.in_(["a", "b"]))).execute(conn, {})
        naive = datetime(2026, 1, 1)  # naive on purpose: refused
        with pytest.raises(sa.exc.StatementError):
            conn.execute(sa.insert(t), {"id": "n", "n": 1, "at": naive, "flag": True})
        with pytest.raises(ValueError):  # the type's own check still runs
            insert.execute(conn, {"id": "n", "n": 1, "at": naive, "flag": True, "note": None})


def test_cursor_listeners_see_the_statements(table: tuple[sa.Engine, sa.Table]) -> None:
    engine, t = table
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    select = Prepared(sa.select(t.c.id).where(t.c.id == sa.bindparam("key")))
    sa.event.listen(engine, "before_cursor_execute", listen)
    try:
        with engine.begin() as conn:
            select.execute(conn, {"key": "x"})
    finally:
        sa.event.remove(engine, "before_cursor_execute", listen)
    assert [s for s in seen if s.lstrip().upper().startswith("SELECT")] == [
        select.statement.compile(dialect=engine.dialect).string
    ]
