"""Contract tests of the SharedStore: the same cases against every implementation.

DatabaseStore always (on the run's database); RedisStore when GATEWAY_TEST_REDIS is set.
Database expiry is driven by the frozen clock; Redis expiry is checked through PTTL.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from gateway import clock
from gateway import store as store_module
from gateway.db import session as db_session
from gateway.settings import Settings
from gateway.store import (
    MAX_KEY_LENGTH,
    AddOnce,
    Count,
    DatabaseStore,
    Delete,
    Get,
    Incr,
    RedisStore,
    Set,
    SharedState,
    StoreUnavailable,
    get_store,
    make_engine,
    purge_expired,
)

from .conftest import TEST_REDIS

KINDS = ["database", "redis"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=KINDS)
def store(
    request: pytest.FixtureRequest, settings: Settings
) -> Iterator[DatabaseStore | RedisStore]:
    if request.param == "redis":
        if not TEST_REDIS:
            pytest.skip("GATEWAY_TEST_REDIS not set")
        s: DatabaseStore | RedisStore = RedisStore.from_settings(
            settings.with_overrides(redis_url=TEST_REDIS)
        )
    else:
        s = DatabaseStore.from_settings(settings)
    yield s
    s.close()


def expire(store: DatabaseStore | RedisStore, key: str, after: timedelta) -> None:
    """Make `key` expire: move the frozen clock (database) or check then drop the TTL (Redis)."""
    if isinstance(store, DatabaseStore):
        clock.advance(after)
    else:
        pttl = store.client.pttl(store.prefix + key)
        assert 0 < pttl <= after.total_seconds() * 1000
        store.client.delete(store.prefix + key)


def test_incr_counts_and_count_reads(store: DatabaseStore | RedisStore) -> None:
    ttl = timedelta(minutes=5)
    assert store.count("c") == 0
    assert store.incr("c", ttl) == 1
    assert store.incr("c", ttl) == 2
    assert store.incr("c", ttl, amount=5) == 7
    assert store.count("c") == 7
    assert store.count("other") == 0


def test_incr_window_is_fixed_from_the_first_increment(
    store: DatabaseStore | RedisStore, frozen_clock: None
) -> None:
    store.incr("w", timedelta(seconds=60))
    if isinstance(store, DatabaseStore):
        clock.advance(timedelta(seconds=40))
        assert store.incr("w", timedelta(hours=1)) == 2  # a longer ttl must not extend it
        clock.advance(timedelta(seconds=21))
        assert store.count("w") == 0
        assert store.incr("w", timedelta(seconds=60)) == 1  # a new window
    else:
        assert 0 < store.client.pttl(store.prefix + "w") <= 60_000
        store.incr("w", timedelta(hours=1))
        assert 0 < store.client.pttl(store.prefix + "w") <= 60_000


def test_add_once_detects_replay_until_expiry(
    store: DatabaseStore | RedisStore, frozen_clock: None
) -> None:
    ttl = timedelta(minutes=10)
    assert store.add_once("seen:1", ttl) is True
    assert store.add_once("seen:1", ttl) is False
    assert store.add_once("seen:2", ttl) is True
    expire(store, "seen:1", ttl + timedelta(seconds=1))
    assert store.add_once("seen:1", ttl) is True


def test_set_get_take_delete(store: DatabaseStore | RedisStore, frozen_clock: None) -> None:
    ttl = timedelta(minutes=2)
    assert store.get("v") is None
    store.set("v", b"\x00binary\xff", ttl)
    assert store.get("v") == b"\x00binary\xff"
    store.set("v", b"second", ttl)
    assert store.get("v") == b"second"
    assert store.take("v") == b"second"
    assert store.take("v") is None
    assert store.get("v") is None
    store.set("d", b"x", ttl)
    store.delete("d")
    store.delete("never-there")
    assert store.get("d") is None
    store.set("e", b"x", ttl)
    expire(store, "e", ttl + timedelta(seconds=1))
    assert store.get("e") is None
    assert store.take("e") is None


def test_hostile_keys_are_opaque_and_bounded(store: DatabaseStore | RedisStore) -> None:
    ttl = timedelta(minutes=1)
    for key in ["'; DROP TABLE shared_state; --", "*", "a\nb", "ключ", "x" * MAX_KEY_LENGTH]:
        store.set(key, key.encode(), ttl)
        assert store.get(key) == key.encode()
    assert store.get("*") == b"*"  # no pattern matching
    with pytest.raises(ValueError):
        store.set("", b"x", ttl)
    with pytest.raises(ValueError):
        store.incr("x" * (MAX_KEY_LENGTH + 1), ttl)
    with pytest.raises(ValueError):
        store.add_once("k", timedelta(0))
    with pytest.raises(ValueError):
        store.set("k", b"x", timedelta(seconds=-1))


def test_threads_get_exact_counts(store: DatabaseStore | RedisStore) -> None:
    threads, per_thread = 8, 25
    results: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(per_thread):
            value = store.incr("race", timedelta(minutes=5))
            with lock:
                results.append(value)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    total = threads * per_thread
    assert store.count("race") == total
    # Every increment saw a different value: no two read the same old count.
    assert sorted(results) == list(range(1, total + 1))


def test_concurrent_add_once_has_one_winner(store: DatabaseStore | RedisStore) -> None:
    wins: list[bool] = []
    barrier = threading.Barrier(6)

    def work() -> None:
        barrier.wait()
        wins.append(store.add_once("once", timedelta(minutes=1)))

    workers = [threading.Thread(target=work) for _ in range(6)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert wins.count(True) == 1


def test_redis_keys_carry_the_prefix_and_counters_always_expire(settings: Settings) -> None:
    if not TEST_REDIS:
        pytest.skip("GATEWAY_TEST_REDIS not set")
    s = RedisStore.from_settings(settings.with_overrides(redis_url=TEST_REDIS))
    s.incr("k", timedelta(seconds=30))
    assert s.client.exists(settings.redis_prefix + "k") == 1
    assert s.client.exists("k") == 0
    assert s.client.pttl(settings.redis_prefix + "k") > 0  # never a counter without expiry
    s.close()


def test_unreachable_stores_fail_closed(settings: Settings) -> None:
    port = closed_port()
    redis_store = RedisStore.from_settings(
        settings.with_overrides(redis_url=f"redis://:hunter2@127.0.0.1:{port}/0")
    )
    db_store = DatabaseStore(make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"))
    ttl = timedelta(minutes=1)
    calls: list[tuple[str, tuple[object, ...]]] = [
        ("incr", ("k", ttl)),
        ("count", ("k",)),
        ("add_once", ("k", ttl)),
        ("get", ("k",)),
        ("set", ("k", b"v", ttl)),
        ("take", ("k",)),
        ("delete", ("k",)),
        ("ping", ()),
    ]
    for s in (redis_store, db_store):
        for name, args in calls:
            with pytest.raises(StoreUnavailable) as info:
                getattr(s, name)(*args)
            assert "hunter2" not in str(info.value)
    db_store.close()


def test_purge_removes_only_expired_rows_and_is_bounded(
    settings: Settings, frozen_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = DatabaseStore.from_settings(settings)
    for i in range(5):
        s.set(f"short:{i}", b"x", timedelta(seconds=10))
    s.set("long", b"x", timedelta(hours=1))
    clock.advance(timedelta(seconds=11))
    assert s.purge_expired(limit=2) == 2
    assert s.purge_expired() == 3
    assert s.get("long") == b"x"

    # Opportunistic purge on writes, a bounded batch at a time.
    monkeypatch.setattr(store_module, "PURGE_BATCH", 3)
    for i in range(7):
        s.set(f"old:{i}", b"x", timedelta(seconds=1))
    clock.advance(timedelta(seconds=2))
    s.purge_every = 1
    s.set("new", b"x", timedelta(minutes=1))
    with s.engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(SharedState)).scalar_one()
    assert left == 2 + 4  # long + new + 7 old minus one batch of 3
    s.close()


def test_app_wiring_chooses_the_store(make_app: object, settings: Settings) -> None:
    app: Flask = make_app(redis_url=None)  # type: ignore[operator]
    assert isinstance(get_store(app), DatabaseStore)
    with app.app_context():
        assert purge_expired() == 0
    if TEST_REDIS:
        app2: Flask = make_app(redis_url=TEST_REDIS)  # type: ignore[operator]
        assert isinstance(get_store(app2), RedisStore)
        assert get_store(app2).prefix == settings.redis_prefix  # type: ignore[attr-defined]


def test_store_does_not_wait_for_an_open_request_transaction(make_app: object) -> None:
    """On SQLite a request session holds the write lock once it begins; the store must not
    queue behind it (it keeps its table in a file of its own)."""
    app: Flask = make_app(redis_url=None)  # type: ignore[operator]
    with app.app_context():
        db_session().execute(sa.text("SELECT 1"))  # the request's transaction is now open
        # Sharing the file, this would wait out SQLite's busy timeout and raise StoreUnavailable.
        assert get_store().incr("k", timedelta(minutes=1)) == 1


# --- run: several operations in one step ---------------------------------------------------


def test_run_applies_ops_in_order_with_one_result_each(
    store: DatabaseStore | RedisStore,
) -> None:
    ttl = timedelta(minutes=1)
    store.set("v", b"old", ttl)
    results = store.run([
        Incr("c", ttl), Incr("c", ttl, 4), Count("c"), Count("absent"),
        AddOnce("m", ttl), AddOnce("m", ttl), Get("v"), Set("v", b"new", ttl), Get("v"),
        Delete("v"), Get("v"),
    ])
    assert results == [1, 5, 5, 0, True, False, b"old", None, b"new", None, None]
    assert store.count("c") == 5 and store.add_once("m", ttl) is False
    assert store.run([]) == []


def test_run_only_if_skips_what_a_replayed_marker_guards(
    store: DatabaseStore | RedisStore,
) -> None:
    ttl = timedelta(minutes=1)
    first = store.run([AddOnce("seen", ttl), Incr("n", ttl, only_if=0),
                       Set("at", b"1", ttl, only_if=0)])
    again = store.run([AddOnce("seen", ttl), Incr("n", ttl, only_if=0),
                       Set("at", b"2", ttl, only_if=0), Get("at")])
    assert first == [True, 1, None]
    assert again == [False, None, None, b"1"]
    assert store.count("n") == 1
    with pytest.raises(ValueError):
        store.run([Incr("n", ttl, only_if=0)])  # must name an earlier AddOnce
    with pytest.raises(ValueError):
        store.run([Count("x"), Incr("n", ttl, only_if=0)])
    with pytest.raises(ValueError):
        store.run([Count("x" * (MAX_KEY_LENGTH + 1))])


def test_run_counters_expire_like_incr(store: DatabaseStore | RedisStore) -> None:
    store.run([Incr("w", timedelta(seconds=60))])
    if isinstance(store, RedisStore):
        assert 0 < store.client.pttl(store.prefix + "w") <= 60_000
    else:
        with clock.frozen(clock.now() + timedelta(seconds=61)):
            assert store.run([Count("w"), Incr("w", timedelta(seconds=60))]) == [0, 1]


def test_database_run_is_one_transaction(settings: Settings) -> None:
    """A run that fails half-way leaves nothing behind (the counting of the SMS limits must
    never be half done)."""
    s = DatabaseStore.from_settings(settings)
    ttl = timedelta(minutes=1)
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error type
        s.run([Incr("atomic", ttl), Set("bad", object(), ttl)])  # type: ignore[arg-type]
    assert s.count("atomic") == 0
    s.close()


def test_unreachable_stores_fail_closed_on_run(settings: Settings) -> None:
    port = closed_port()
    redis_store = RedisStore.from_settings(
        settings.with_overrides(redis_url=f"redis://:hunter2@127.0.0.1:{port}/0")
    )
    db_store = DatabaseStore(make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"))
    for s in (redis_store, db_store):
        with pytest.raises(StoreUnavailable) as info:
            s.run([Incr("k", timedelta(minutes=1)), Count("k")])
        assert "hunter2" not in str(info.value)
    db_store.close()


def test_run_reads_see_earlier_writes_of_the_same_run(
    store: DatabaseStore | RedisStore, frozen_clock: None
) -> None:
    """Reads that no earlier op writes may be fetched together up front (the database store
    does); a read after a write of its key sees that write, and expired keys read as absent."""
    ttl = timedelta(minutes=1)
    store.incr("old", timedelta(seconds=1))
    expire(store, "old", timedelta(seconds=2))
    store.set("v", b"before", ttl)
    results = store.run([
        Count("c"), Get("v"), Count("old"), Incr("c", ttl, 3), Count("c"), Set("v", b"after", ttl),
        Get("v"), Count("c"), Get("v"),
    ])
    assert results == [0, b"before", 0, 3, 3, None, b"after", 3, b"after"]


def test_sqlite_store_keeps_one_connection_per_thread_and_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite each thread keeps its own connection (no pool round trip per step); an
    error that loses it opens another; a forked child never uses (or closes) what it
    inherited."""
    engine = make_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    store_module.Base.metadata.create_all(engine, tables=[store_module._T])
    s = DatabaseStore(engine)
    assert s._own is not None
    ttl = timedelta(minutes=1)
    assert s.incr("k", ttl) == 1
    mine = s._own.get()
    assert s._own.get() is mine
    seen: list[object] = []

    def other_thread() -> None:
        seen.append(s._own.get() if s._own is not None else None)
        s.incr("k", ttl)
        assert s._own is not None
        s._own.close()

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert seen and seen[0] is not mine
    assert s.count("k") == 2

    mine.invalidate()  # as run() does after an OperationalError
    assert s.incr("k", ttl) == 3
    fresh = s._own.get()
    assert fresh is not mine

    # A step interrupted by something other than a database error (after BEGIN IMMEDIATE)
    # must not leave the thread's connection holding SQLite's write lock.
    calls = {"n": 0}
    stamp = s._stamp

    def failing_stamp(value: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:  # the first Incr's expiry, inside the transaction
            raise KeyboardInterrupt
        return stamp(value)

    monkeypatch.setattr(s, "_stamp", failing_stamp)
    with pytest.raises(KeyboardInterrupt):
        s.incr("k", ttl)
    monkeypatch.undo()
    assert not fresh._fairy.dbapi_connection.in_transaction
    other = sqlite3.connect(tmp_path / "shared.db", timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # would raise "database is locked"
    other.execute("ROLLBACK")
    other.close()
    assert s.count("k") == 3

    inherited = len(store_module._INHERITED)
    monkeypatch.setattr(store_module.os, "getpid", lambda: -1)  # "in a forked child"
    assert s.incr("k", ttl) == 4
    child = s._own.get()
    assert child is not fresh
    assert store_module._INHERITED[inherited:] == [fresh] and not fresh.dropped
    monkeypatch.undo()
    store_module._INHERITED.remove(fresh)
    for connection in (fresh, child):
        connection.invalidate()
    s.close()
