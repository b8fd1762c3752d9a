"""Login latency with 1,000,000 accounts against 1,000 accounts in PostgreSQL (issue 5,
"Performance": within 10%).

    .venv/bin/python bench/login_scale.py [-n 40] [--large 1000000] [--small 1000]

Makes two PostgreSQL databases of its own (gwbench_<random>_small and _large, dropped at the
end) and two Redis key prefixes of its own, seeds them, and then measures the wall-clock time
of complete midden logins (bench/loginbench_common.py, `midden_login`: password + SMS code,
through the Flask test client, first GET to final redirect) against both, interleaved (small,
large, large, small, ...) so that noise from other jobs on the machine hits both alike.
Prints median and p90 for each and the large/small ratios (goal: at most 1.10).

Seeding: one `INSERT ... SELECT FROM generate_series` per database, run inside PostgreSQL (no
rows cross the wire), after the schema is made with `Base.metadata.create_all`, so every index
the models declare is maintained while rows go in, as in production; then VACUUM ANALYZE. All
filler accounts share one precomputed argon2id hash (nobody logs into them); the accounts the
benchmark logs into are made through the ORM with their own phone numbers, also with one
shared hash (each login still verifies it in full). Usernames, BSNs and phone numbers are
unique. The seeding time is printed.

Then it prints the PostgreSQL plan (EXPLAIN) of every distinct statement one login issues
against the large database, caught with an SQLAlchemy `before_cursor_execute` listener, and
flags any sequential scan that remains when sequential scans are priced out
(`enable_seqscan = off`): a query with no index to use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from flask import Flask

from bench.loginbench_common import (
    RUN_ID,
    create_pg_database,
    drop_pg_database,
    drop_redis_prefix,
    login_ip,
    login_phone,
    make_app,
    make_login_accounts,
    median,
    midden_login,
    password_hash,
    percentile,
)
from gateway import clock
from gateway.app import get_settings
from gateway.db import get_db

#: Filler accounts: numbered after the login accounts; 9-digit BSNs from 100000000 on (unique,
#: not 11-proof: nothing validates them here); mobile numbers in the +3162 block, which the
#: login accounts (+3161, bench/loginbench_common.login_phone) never use.
SEED_SQL = """
INSERT INTO accounts (
    id, username, username_key, password_hash, bsn, surname, given_names, birth_date,
    nationality, phone_e164, phone_channel, phone_verified_at, email, email_verified_at,
    email_confirmed_at, language, status, created_at, activated_at, failed_logins,
    block_count, totp_failures, notify_logins
)
SELECT
    gen_random_uuid()::text, 'citizen' || lpad(i::text, 7, '0'),
    'citizen' || lpad(i::text, 7, '0'), :pw_hash, (100000000 + i)::text, 'Jansen', 'Jan',
    DATE '1980-01-01' + (i % 20000), 'NLD', '+3162' || lpad(i::text, 7, '0'), 'sms', :now,
    'citizen' || lpad(i::text, 7, '0') || '@example.org', :now, :now, 'nl', 'active', :now,
    :now, 0, 0, 0, false
FROM generate_series(1, :count) AS i
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=40, help="logins measured per database")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    args = parser.parse_args()
    logins = args.warmup + args.n + 1  # +1: the login whose queries are EXPLAINed

    names = {"small": f"gwbench_{RUN_ID}_small", "large": f"gwbench_{RUN_ID}_large"}
    prefixes = {"small": f"gwbench:{RUN_ID}:small:", "large": f"gwbench:{RUN_ID}:large:"}
    counts = {"small": args.small, "large": args.large}
    try:
        with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
            apps: dict[str, Flask] = {}
            for key in ("small", "large"):
                url = create_pg_database(names[key])
                apps[key] = make_app(Path(tmp) / key, url, prefixes[key])
                seed(apps[key], key, counts[key], logins)
            measure(apps, args)
            explain_one_login(apps["large"], args.warmup + args.n)
            for app in apps.values():
                get_db(app).dispose()
    finally:
        for key in ("small", "large"):
            drop_pg_database(names[key])
            drop_redis_prefix(prefixes[key])


def seed(app: Flask, key: str, count: int, logins: int) -> None:
    engine = get_db(app).engine
    t0 = time.perf_counter()
    make_login_accounts(app, logins)
    pw_hash = password_hash(app)
    with engine.begin() as conn:
        conn.execute(sa.text(SEED_SQL), {
            "pw_hash": pw_hash, "now": clock.now(), "count": count - logins,
        })
    t1 = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
        total = conn.execute(sa.text("SELECT count(*) FROM accounts")).scalar_one()
        size = conn.execute(sa.text(
            "SELECT pg_size_pretty(pg_total_relation_size('accounts'))"
        )).scalar_one()
    t2 = time.perf_counter()
    print(f"seeded {key}: {total:,} accounts ({size} with indexes) in {t1 - t0:.1f} s, "
          f"VACUUM ANALYZE {t2 - t1:.1f} s", flush=True)


def measure(apps: dict[str, Flask], args: argparse.Namespace) -> None:
    outboxes = {key: get_settings(app).sms_outbox for key, app in apps.items()}
    usernames = {
        key: [f"bench.user{i:05d}" for i in range(args.warmup + args.n + 1)] for key in apps
    }
    times: dict[str, list[float]] = {"small": [], "large": []}

    def one(key: str, i: int) -> float:
        client = apps[key].test_client()
        t0 = time.perf_counter()
        midden_login(client, outboxes[key], usernames[key][i], login_phone(i), login_ip(i))
        return time.perf_counter() - t0

    for i in range(args.warmup):
        one("small", i)
        one("large", i)
    for k in range(args.n):
        i = args.warmup + k
        order = ("small", "large") if k % 2 == 0 else ("large", "small")
        for key in order:
            times[key].append(one(key, i))

    print(f"\nmidden login, wall-clock, N={args.n} per database after {args.warmup} warm-up "
          f"(interleaved):")
    for key in ("small", "large"):
        t = times[key]
        print(f"  {args.__dict__[key]:>9,} accounts: median {median(t) * 1000:7.2f} ms   "
              f"p90 {percentile(t, 0.9) * 1000:7.2f} ms")
    med = median(times["large"]) / median(times["small"])
    p90 = percentile(times["large"], 0.9) / percentile(times["small"], 0.9)
    print(f"  ratio large/small: median {med:.3f}   p90 {p90:.3f}   (goal: at most 1.10)")


@contextmanager
def caught_statements(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    caught: list[tuple[str, Any]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any,
                 context: Any, executemany: bool) -> None:
        if executemany and isinstance(parameters, (list, tuple)) and parameters:
            parameters = parameters[0]
        caught.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        yield caught
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)


def explain_one_login(app: Flask, i: int) -> None:
    engine = get_db(app).engine
    with caught_statements(engine) as caught:
        midden_login(app.test_client(), get_settings(app).sms_outbox,
                     f"bench.user{i:05d}", login_phone(i), login_ip(i))
    distinct: dict[str, Any] = {}
    for statement, params in caught:
        if statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "UPDATE", "DELETE",
                                                             "INSERT"):
            distinct.setdefault(statement, params)
    print(f"\nqueries of one login against the large database: {len(caught)} statements, "
          f"{len(distinct)} distinct; their plans:")
    seq_scans = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for n, (statement, params) in enumerate(distinct.items(), 1):
            cursor.execute("EXPLAIN " + statement, params)
            plan = [row[0] for row in cursor.fetchall()]
            raw.rollback()
            print(f"\n[{n}] {' '.join(statement.split())[:220]}")
            for line in plan:
                print(f"      {line}")
            if not any("Seq Scan" in line for line in plan):
                continue
            # A table of a few rows (this run's flows, codes, messages) is read whole because
            # that is cheapest; what matters is whether an index serves the query once the
            # table is large, so ask again with sequential scans priced out.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, params)
            forced = [row[0] for row in cursor.fetchall()]
            raw.rollback()
            print("    with enable_seqscan = off:")
            for line in forced:
                print(f"      {line}")
            seq_scans += [f"[{n}] {line.strip()}" for line in forced if "Seq Scan" in line]
    finally:
        raw.close()
    print(f"\nsequential scans left with enable_seqscan = off (no usable index): "
          f"{len(seq_scans)}")
    for line in seq_scans:
        print(f"  {line}")


if __name__ == "__main__":
    main()
