"""Shared parts of the login benchmarks (bench/login_cpu.py, bench/login_scale.py; issue 5,
"Performance"): an app on its own SQLite file or its own PostgreSQL database and Redis
prefix, accounts made the way a desk and activation leave them, and one complete midden login
(username + password, then the SMS code read from the dev outbox) through the Flask test client.

Not a test and not part of the package: run by hand, numbers compared within one run only.
"""

from __future__ import annotations

import os
import re
import secrets
import statistics
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import clock
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.passwords import Passwords
from gateway.app import create_app, get_policies
from gateway.db import Base, get_db, import_models
from gateway.settings import Settings

PASSWORD = "purple elephant dances"
PG_ADMIN_URL = os.environ.get(
    "GATEWAY_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("GATEWAY_BENCH_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = f"{os.getpid()}_{secrets.token_hex(4)}"

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_ACTION = re.compile(r'<form action="([^"]*)"')
_SMS_CODE = re.compile(r"#([0-9]{6})\Z")


# --- backends -------------------------------------------------------------------------------


def create_pg_database(name: str) -> str:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(name: str) -> None:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def drop_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i:i + 1000])
    client.close()


def make_app(instance: Path, database_url: str, redis_prefix: str | None) -> Flask:
    """An app as production runs it (SQLite or PostgreSQL, Redis when a prefix is given),
    with the dev SMS outbox so the benchmark can read the code."""
    instance.mkdir(parents=True, exist_ok=True)
    env = {
        "GATEWAY_INSTANCE_DIR": str(instance),
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_SECRET_KEY": "bench-secret-" + secrets.token_hex(24),
    }
    if redis_prefix is not None:
        env |= {"GATEWAY_REDIS_URL": REDIS_URL, "GATEWAY_REDIS_PREFIX": redis_prefix}
    app = create_app(Settings.from_env(env))
    _quiet_logs()
    import_models()
    Base.metadata.create_all(get_db(app).engine)
    return app


def _quiet_logs() -> None:
    """The request log still formats every line (production pays for that too), but writes
    it to /dev/null instead of over the benchmark's output."""
    import logging

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for logger in (logging.getLogger(), *[
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
    ]):
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.setStream(sink)


# --- accounts -------------------------------------------------------------------------------


def login_username(i: int) -> str:
    return f"bench.user{i:05d}"


def login_phone(i: int) -> str:
    """A distinct Dutch mobile number per login account, each in its own 100-number block:
    the SMS abuse limits (per number, per account, per number prefix) stay as the policy has
    them and are never reached by the benchmark."""
    return f"+3161{i:05d}00"


def password_hash(app: Flask) -> str:
    return Passwords(get_policies(app).accounts.password).hash(PASSWORD)


def account_row(
    *, username: str, bsn: str | None, phone: str | None, password_hash: str, now: Any,
) -> dict[str, Any]:
    """The column values of an active account with a verified phone and a recently confirmed
    e-mail address (so the login asks no e-mail question)."""
    return {
        "id": str(uuid.uuid4()),
        "username": username, "username_key": username.casefold(),
        "password_hash": password_hash, "bsn": bsn,
        "surname": "Jansen", "given_names": "Jan", "birth_date": now.date().replace(year=1980),
        "nationality": "NLD", "phone_e164": phone, "phone_channel": "sms" if phone else None,
        "phone_verified_at": now if phone else None,
        "email": f"{username}@example.org", "email_verified_at": now,
        "email_confirmed_at": now, "language": "nl", "status": AccountStatus.ACTIVE.value,
        "created_at": now - timedelta(days=30), "activated_at": now - timedelta(days=30),
        "failed_logins": 0, "block_count": 0, "totp_failures": 0, "notify_logins": False,
    }


def make_login_accounts(app: Flask, count: int, start: int = 0) -> list[str]:
    """`count` accounts to log into, all with the same password (one precomputed hash: each
    login still verifies it in full); returns their usernames."""
    pw_hash = password_hash(app)
    now = clock.now()
    names = [login_username(i) for i in range(start, start + count)]
    rows = [
        account_row(username=name, bsn=None, phone=login_phone(start + n),
                    password_hash=pw_hash, now=now)
        for n, name in enumerate(names)
    ]
    with get_db(app).begin() as s:
        s.execute(sa.insert(Account), rows)
    return names


# --- one login ------------------------------------------------------------------------------


def _form(page: TestResponse, contains: str) -> tuple[str, str]:
    body = page.get_data(as_text=True)
    token = _TOKEN.search(body)
    assert token, f"no CSRF token on {page.request.path}"
    for action in _ACTION.findall(body):
        if contains in action:
            return action.replace("&amp;", "&"), token.group(1)
    raise AssertionError(f"no form posting to ...{contains} on {page.request.path}")


def _last_sms_code(outbox: Path, phone: str) -> str:
    """The code of the last outbox line (the phone's side, not the gateway's: read from the
    file's end so it costs the same at the 1st and the 1000th login)."""
    import json

    with outbox.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        last = f.read().splitlines()[-1]
    entry = json.loads(last)
    assert entry["to"] == phone, "the last SMS went elsewhere"
    match = _SMS_CODE.search(entry["text"])
    assert match, "no code in the SMS"
    return match.group(1)


def _expect_redirect(response: TestResponse) -> str:
    assert response.status_code in (302, 303), (
        f"{response.request.method} {response.request.path}: {response.status_code}"
    )
    return response.headers["Location"]


def midden_login(
    client: FlaskClient, outbox: Path, username: str, phone: str, ip: str
) -> str:
    """One complete midden login for the gateway's own relying party (/account/step-up:
    midden, essential), from the first GET to the final redirect back to the relying party:
    GET start -> GET password page -> POST password (the SMS goes out) -> GET code page ->
    POST code (straight on to the relying party once the flow is done) -> GET /account?flow=
    (the relying party takes the result) -> 303.
    Returns the final Location."""
    env = {"REMOTE_ADDR": ip}
    flow_url = _expect_redirect(client.get("/account/step-up", environ_base=env))
    page = client.get(flow_url, environ_base=env)
    action, token = _form(page, "/password")
    done = client.post(action, environ_base=env, data={
        "csrf_token": token, "username": username, "password": PASSWORD,
    })
    assert _expect_redirect(done) == flow_url
    page = client.get(flow_url, environ_base=env)
    action, token = _form(page, "/code")
    done = client.post(action, environ_base=env, data={
        "csrf_token": token, "action": "verify", "code": _last_sms_code(outbox, phone),
    })
    back = _expect_redirect(done)
    if back == flow_url:  # a gateway that sends the browser to the flow's page first
        back = _expect_redirect(client.get(flow_url, environ_base=env))
    assert "/account?flow=" in back, back
    final = _expect_redirect(client.get(back, environ_base=env))
    assert final.endswith("/account"), final
    return final


def login_ip(i: int) -> str:
    """A distinct client address per login: the per-IP SMS limit (30 an hour) is a policy
    for real traffic, not something one benchmark process should run into."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# --- numbers ----------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextmanager
def pinned_cpu() -> Iterator[None]:
    """Keep the process on one CPU (less migration noise on a shared machine)."""
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {max(before)})
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
