"""The audit log: appends, tamper detection (function and CLI), concurrency, no BSN in clear."""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask

from gateway import clock
from gateway.audit import (
    GENESIS_HASH,
    AuditDataError,
    AuditEntry,
    AuditError,
    AuditHead,
    _canonical,
    iter_entries,
    mask_bsn,
    pseudonymise_bsn,
    record,
    verify,
)
from gateway.cli import main
from gateway.db import Database, get_db
from gateway.settings import Settings

T0 = datetime(2030, 5, 4, 12, 0, tzinfo=UTC)
VALID_BSN = "123456782"  # passes the eleven-test
OTHER_BSN = "111222333"  # passes it too
COLUMNS = ("at", "actor", "role", "desk", "action", "object_ref", "outcome", "request_id",
           "prev_hash", "entry_hash")


@pytest.fixture
def db(app: Flask) -> Database:
    return get_db(app)


def append(db: Database, settings: Settings, n: int, **overrides: Any) -> None:
    for i in range(n):
        with db.begin() as s:
            fields: dict[str, Any] = {
                "actor": f"officer-{i}",
                "role": "officer",
                "desk": "SYD" if i % 2 else "BER",
                "action": "application.approve",
                "object_ref": f"application:{i:04d}",
                "outcome": "success",
                "request_id": f"req-{i}",
                **overrides,
            }
            record(s, settings=settings, **fields)


def sql(db: Database, statement: str, **params: Any) -> None:
    with db.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def check(db: Database, settings: Settings) -> tuple[bool, int | None, str | None, int]:
    with db.begin() as s:
        result = verify(s, settings)
    return result.ok, result.first_bad_seq, result.reason, result.entries


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "GATEWAY_INSTANCE_DIR": str(settings.instance_dir),
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_SECRET_KEY": settings.secret_key.decode(),
    }


def test_entries_form_a_chain_from_the_genesis_hash(
    db: Database, settings: Settings, frozen_clock: None
) -> None:
    append(db, settings, 3)
    with db.begin() as s:
        rows = s.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq)).all()
        head = s.get(AuditHead, 1)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == GENESIS_HASH
    assert rows[1].prev_hash == rows[0].entry_hash and rows[2].prev_hash == rows[1].entry_hash
    assert all(re.fullmatch(r"[0-9a-f]{64}", r.entry_hash) for r in rows)
    assert rows[0].at == clock.now() and rows[0].at.tzinfo is not None
    assert head is not None and (head.last_seq, head.last_hash) == (3, rows[2].entry_hash)
    assert check(db, settings) == (True, None, None, 3)


def test_the_chain_is_keyed_by_the_secret(db: Database, settings: Settings) -> None:
    append(db, settings, 2)
    other = settings.with_overrides(secret_key=b"another-secret-" + b"y" * 40)
    ok, bad, _reason, _n = check(db, other)
    assert (ok, bad) == (False, 1)


def test_an_empty_log_is_intact(db: Database, settings: Settings) -> None:
    assert check(db, settings) == (True, None, None, 0)


def test_an_edited_entry_is_found_by_the_function_and_the_cli(
    db: Database, settings: Settings
) -> None:
    append(db, settings, 5)
    runner = CliRunner()
    intact = runner.invoke(main, ["audit", "verify"], env=cli_env(settings))
    assert intact.exit_code == 0, intact.output
    assert intact.output.strip() == "audit log intact: 5 entries"

    sql(db, "UPDATE audit_log SET outcome = 'failure' WHERE seq = 3")
    ok, bad, reason, intact_count = check(db, settings)
    assert (ok, bad, intact_count) == (False, 3, 2)
    assert reason is not None and "edited" in reason

    broken = runner.invoke(main, ["audit", "verify"], env=cli_env(settings))
    assert broken.exit_code == 1
    assert broken.output.startswith("audit log broken at entry 3: ")
    assert len(broken.output.strip().splitlines()) == 1


@pytest.mark.parametrize("column", ["actor", "role", "desk", "action", "object_ref", "request_id"])
def test_every_field_is_covered(db: Database, settings: Settings, column: str) -> None:
    append(db, settings, 4)
    sql(db, f"UPDATE audit_log SET {column} = 'x' WHERE seq = 2")
    assert check(db, settings)[:2] == (False, 2)


def test_an_edited_timestamp_is_found(db: Database, settings: Settings) -> None:
    append(db, settings, 4)
    with db.engine.begin() as conn:
        at = conn.execute(sa.select(AuditEntry.at).where(AuditEntry.seq == 4)).scalar_one()
        conn.execute(
            sa.update(AuditEntry).where(AuditEntry.seq == 4).values(at=at + timedelta(seconds=1))
        )
    assert check(db, settings)[:2] == (False, 4)


def test_a_deleted_entry_is_found(db: Database, settings: Settings) -> None:
    append(db, settings, 5)
    sql(db, "DELETE FROM audit_log WHERE seq = 2")
    ok, bad, reason, _n = check(db, settings)
    assert (ok, bad) == (False, 2)
    assert reason is not None and "missing" in reason
    result = CliRunner().invoke(main, ["audit", "verify"], env=cli_env(settings))
    assert result.exit_code == 1 and "broken at entry 2:" in result.output


def test_a_deleted_first_entry_is_found(db: Database, settings: Settings) -> None:
    append(db, settings, 3)
    sql(db, "DELETE FROM audit_log WHERE seq = 1")
    assert check(db, settings)[:2] == (False, 1)


def test_deleting_and_renumbering_is_found(db: Database, settings: Settings) -> None:
    append(db, settings, 5)
    sql(db, "DELETE FROM audit_log WHERE seq = 3")
    sql(db, "UPDATE audit_log SET seq = seq - 1 WHERE seq > 3")
    sql(db, "UPDATE audit_head SET last_seq = 4")
    assert check(db, settings)[:2] == (False, 3)


def test_swapped_rows_are_found(db: Database, settings: Settings) -> None:
    append(db, settings, 5)
    cols = ", ".join(COLUMNS)
    with db.engine.begin() as conn:
        two = conn.execute(sa.text(f"SELECT {cols} FROM audit_log WHERE seq = 2")).one()
        four = conn.execute(sa.text(f"SELECT {cols} FROM audit_log WHERE seq = 4")).one()
        assignments = ", ".join(f"{c} = :{c}" for c in COLUMNS)
        conn.execute(sa.text(f"UPDATE audit_log SET {assignments} WHERE seq = 2"), four._asdict())
        conn.execute(sa.text(f"UPDATE audit_log SET {assignments} WHERE seq = 4"), two._asdict())
    ok, bad, reason, _n = check(db, settings)
    assert (ok, bad) == (False, 2)
    assert reason is not None and "reordered" in reason


def test_reordered_seqs_are_found(db: Database, settings: Settings) -> None:
    append(db, settings, 4)
    sql(db, "UPDATE audit_log SET seq = 100 WHERE seq = 2")
    sql(db, "UPDATE audit_log SET seq = 2 WHERE seq = 3")
    sql(db, "UPDATE audit_log SET seq = 3 WHERE seq = 100")
    assert check(db, settings)[:2] == (False, 2)


def test_a_forged_plain_hash_is_found(db: Database, settings: Settings) -> None:
    """Someone with write access edits entry 3, recomputes an unkeyed SHA-256 over the same
    input and relinks everything after it: still caught at 3."""
    append(db, settings, 5)
    with db.begin() as s:
        rows = {r.seq: r for r in s.scalars(sa.select(AuditEntry)).all()}
    row = rows[3]
    fields = {name: getattr(row, name) for name in
              ("actor", "role", "desk", "action", "object_ref", "outcome", "request_id")}
    fields["outcome"] = "failure"
    prev = row.prev_hash
    forged = hashlib.sha256(prev.encode() + _canonical(3, row.at, fields)).hexdigest()
    sql(db, "UPDATE audit_log SET outcome = 'failure', entry_hash = :h WHERE seq = 3", h=forged)
    for seq in (4, 5):
        r = rows[seq]
        f = {name: getattr(r, name) for name in fields}
        new = hashlib.sha256(forged.encode() + _canonical(seq, r.at, f)).hexdigest()
        sql(db, "UPDATE audit_log SET prev_hash = :p, entry_hash = :h WHERE seq = :s",
            p=forged, h=new, s=seq)
        forged = new
    sql(db, "UPDATE audit_head SET last_hash = :h", h=forged)
    ok, bad, _reason, _n = check(db, settings)
    assert (ok, bad) == (False, 3)


def test_a_cut_off_tail_is_found(db: Database, settings: Settings) -> None:
    append(db, settings, 5)
    sql(db, "DELETE FROM audit_log WHERE seq >= 4")
    ok, bad, reason, intact = check(db, settings)
    assert (ok, bad, intact) == (False, 4, 3)
    assert reason is not None and "cut off" in reason
    result = CliRunner().invoke(main, ["audit", "verify"], env=cli_env(settings))
    assert result.exit_code == 1 and "broken at entry 4:" in result.output


def test_an_emptied_log_is_found(db: Database, settings: Settings) -> None:
    append(db, settings, 2)
    sql(db, "DELETE FROM audit_log")
    assert check(db, settings)[:2] == (False, 1)


def test_a_head_that_disagrees_is_found(db: Database, settings: Settings) -> None:
    append(db, settings, 3)
    sql(db, "UPDATE audit_head SET last_hash = :h", h="f" * 64)
    assert check(db, settings)[:2] == (False, 3)


def test_an_entry_added_behind_the_heads_back_is_found(db: Database, settings: Settings) -> None:
    append(db, settings, 3)
    with db.begin() as s:
        last = s.get(AuditEntry, 3)
        assert last is not None
        values = {c: getattr(last, c) for c in COLUMNS}
    values.update(prev_hash=values["entry_hash"], entry_hash="0" * 64)
    with db.engine.begin() as conn:
        conn.execute(sa.insert(AuditEntry).values(seq=4, **values))
    assert check(db, settings)[:2] == (False, 4)


def test_an_unreadable_value_is_reported_not_raised(db: Database, settings: Settings) -> None:
    append(db, settings, 3)
    if db.dialect != "sqlite":
        pytest.skip("only SQLite lets a timestamp column hold text")
    sql(db, "UPDATE audit_log SET at = 'yesterday' WHERE seq = 2")
    assert check(db, settings)[:2] == (False, 2)


def test_an_entry_commits_with_its_change_or_not_at_all(db: Database, settings: Settings) -> None:
    append(db, settings, 1)
    with pytest.raises(RuntimeError), db.begin() as s:
        record(s, settings=settings, actor="a", role="officer", desk=None,
               action="x", object_ref=None, outcome="success")
        raise RuntimeError("the change it describes failed")
    append(db, settings, 1)
    with db.begin() as s:
        assert s.scalars(sa.select(AuditEntry.seq).order_by(AuditEntry.seq)).all() == [1, 2]
    assert check(db, settings) == (True, None, None, 2)


def test_concurrent_appends_never_fork_the_chain(db: Database, settings: Settings) -> None:
    threads_n, each = 4, 8
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(each):
                with db.begin() as s:
                    record(s, settings=settings, actor=f"worker-{n}", role="system", desk=None,
                           action="test.append", object_ref=f"item:{i}", outcome="success")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with db.begin() as s:
        seqs = s.scalars(sa.select(AuditEntry.seq).order_by(AuditEntry.seq)).all()
        actors = s.scalars(sa.select(AuditEntry.actor)).all()
    assert seqs == list(range(1, threads_n * each + 1))
    counts = {a: actors.count(a) for a in set(actors)}
    assert counts == {f"worker-{n}": each for n in range(threads_n)}
    assert check(db, settings) == (True, None, None, threads_n * each)


def test_entries_cannot_be_changed_through_the_orm(db: Database, settings: Settings) -> None:
    append(db, settings, 2)
    with pytest.raises(AuditError), db.begin() as s:
        entry = s.get(AuditEntry, 1)
        assert entry is not None
        entry.outcome = "failure"
        s.flush()
    with pytest.raises(AuditError), db.begin() as s:
        entry = s.get(AuditEntry, 2)
        s.delete(entry)
        s.flush()
    assert check(db, settings) == (True, None, None, 2)


# --- no BSN in clear --------------------------------------------------------------------------


def test_pseudonymise_bsn_is_keyed_and_stable(settings: Settings) -> None:
    p = pseudonymise_bsn(settings, VALID_BSN)
    assert re.fullmatch(r"bsn:[0-9a-f]{16}", p)
    assert p == pseudonymise_bsn(settings, VALID_BSN)
    assert p != pseudonymise_bsn(settings, OTHER_BSN)
    other = settings.with_overrides(secret_key=b"another-secret-" + b"y" * 40)
    assert p != pseudonymise_bsn(other, VALID_BSN)
    assert p[4:] != hashlib.sha256(VALID_BSN.encode()).hexdigest()[:16]
    assert VALID_BSN not in p


@pytest.mark.parametrize(
    "bad", ["12345678", "1234567820", "123 456 782", "１２３４５６７８２", "", "abc", " 123456782"]
)
def test_bsn_helpers_take_the_normal_form_only(settings: Settings, bad: str) -> None:
    with pytest.raises(AuditDataError):
        pseudonymise_bsn(settings, bad)
    with pytest.raises(AuditDataError):
        mask_bsn(bad)


def test_mask_bsn_shows_the_last_three_digits() -> None:
    assert mask_bsn(VALID_BSN) == "******782"


@pytest.mark.parametrize(
    "field, value",
    [
        ("object_ref", VALID_BSN),
        ("object_ref", f"citizen:{VALID_BSN}"),
        ("actor", f"bsn={OTHER_BSN}"),
        ("action", f"lookup {VALID_BSN} failed"),
        ("request_id", f"r-{VALID_BSN}"),
        ("desk", f"{VALID_BSN}_x"),
    ],
)
def test_record_refuses_a_bsn(db: Database, settings: Settings, field: str, value: str) -> None:
    fields: dict[str, Any] = {"actor": "officer", "role": "officer", "desk": "SYD",
                              "action": "citizen.lookup", "object_ref": None,
                              "outcome": "success", field: value}
    with pytest.raises(AuditDataError) as info, db.begin() as s:
        record(s, settings=settings, **fields)
    assert field in str(info.value)
    assert VALID_BSN not in str(info.value) and OTHER_BSN not in str(info.value)
    assert check(db, settings) == (True, None, None, 0)


@pytest.mark.parametrize(
    "value",
    [
        "application:123456789",  # nine digits that fail the eleven-test
        "order:1234567820",  # ten digits: not a BSN
        "req-a123456782b",  # nine digits inside a hex token
        "2030-05-04T12:00:00Z",
        "000000000",  # passes the arithmetic but is never issued
    ],
)
def test_record_accepts_numbers_that_are_not_a_bsn(
    db: Database, settings: Settings, value: str
) -> None:
    append(db, settings, 1, object_ref=value)
    assert check(db, settings) == (True, None, None, 1)


def test_record_accepts_every_pseudonym_and_mask(db: Database, settings: Settings) -> None:
    bsns = [f"{n:09d}" for n in range(100000000, 100000000 + 2000)]
    bsns = [b for b in bsns if sum(w * int(d) for w, d in zip((9, 8, 7, 6, 5, 4, 3, 2, -1), b,
                                                              strict=True)) % 11 == 0]
    assert len(bsns) > 100
    with db.begin() as s:
        for bsn in bsns[:150]:
            record(s, settings=settings, actor="officer", role="officer", desk=None,
                   action="citizen.lookup", object_ref=pseudonymise_bsn(settings, bsn),
                   outcome=mask_bsn(bsn))
    assert check(db, settings)[:2] == (True, None)


@pytest.mark.parametrize(
    "overrides",
    [
        {"actor": ""},
        {"actor": "   "},
        {"outcome": None},
        {"actor": "a" * 201},
        {"object_ref": "x" * 201},
        {"actor": "mallory\naudit log intact"},
        {"request_id": "r\x00"},
        {"desk": "SYD\u2028"},
        {"role": 7},
    ],
)
def test_record_refuses_hostile_fields(
    db: Database, settings: Settings, overrides: dict[str, Any]
) -> None:
    fields: dict[str, Any] = {"actor": "officer", "role": "officer", "desk": "SYD",
                              "action": "x", "object_ref": None, "outcome": "success",
                              **overrides}
    with pytest.raises(AuditDataError), db.begin() as s:
        record(s, settings=settings, **fields)
    assert check(db, settings) == (True, None, None, 0)


def test_record_takes_the_settings_of_the_current_app(app: Flask, db: Database) -> None:
    with app.app_context(), db.begin() as s:
        record(s, actor="system", role="system", desk=None, action="x",
               object_ref=None, outcome="success")
    with app.app_context(), db.begin() as s:
        from gateway.app import get_settings

        assert verify(s, get_settings()).ok


def test_unicode_fields_round_trip(db: Database, settings: Settings) -> None:
    append(db, settings, 2, actor="Zoë Ørsted-Çelik 山田")
    assert check(db, settings) == (True, None, None, 2)


# --- export -----------------------------------------------------------------------------------


def test_iter_entries_filters_by_desk_and_time(db: Database, settings: Settings) -> None:
    with clock.frozen(T0):
        append(db, settings, 4)  # BER, SYD, BER, SYD
        clock.advance(timedelta(hours=1))
        append(db, settings, 2)  # BER, SYD
    with db.begin() as s:
        assert [e.seq for e in iter_entries(s)] == [1, 2, 3, 4, 5, 6]
        assert [e.seq for e in iter_entries(s, desk="SYD")] == [2, 4, 6]
        since = T0 + timedelta(minutes=30)
        assert [e.seq for e in iter_entries(s, since=since)] == [5, 6]
        assert [e.seq for e in iter_entries(s, desk="BER", since=since)] == [5]


def test_cli_verify_fails_in_one_line_without_the_tables(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**cli_env(settings), "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: GATEWAY_DATABASE_URL: cannot read")
