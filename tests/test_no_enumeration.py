"""No account enumeration (issue 5, "Bad input and abuse"; OWASP ASVS 2.2.1, NIST SP 800-63B
5.2.2), proven through the test client at login, unblock (both the standalone pages and the
step inside a login flow) and recovery.

For each path, an unknown username and known ones (with a wrong password where a password is
asked; also the states that must not show: blocked, not active, no verified e-mail) give:
- the same status and the same body, after `normalise` removes what differs per request
  (CSRF tokens, flow ids, request ids) and what the person typed;
- the same headers that matter: every header name, the Location, the Set-Cookie names and
  attributes, Cache-Control, Content-Type, Retry-After;
- the same number of argon2 operations (calls on the hasher counted, never wall-clock time;
  the timing itself is measured by bench/enumeration_timing.py).

Each case runs in a fresh browser (test client), as an attacker's probe would.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import clock
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.service import wait_for_deliveries
from gateway.db import get_db
from tests.test_login_flow import PASSWORD, add_test_rp, make_account, token
from tests.test_recovery_pages import policies_for_pages

# Usernames of one length, so that even Content-Length cannot differ by what was typed.
KNOWN = "jan.jansen"
BLOCKED = "kim.peters"
PENDING = "ans.pender"
NO_EMAIL = "bob.bakker"
UNKNOWN = "sam.de.vos"
assert len({len(u) for u in (KNOWN, BLOCKED, PENDING, NO_EMAIL, UNKNOWN)}) == 1

_CSRF = re.compile(r'(name="csrf_token" value=")[^"]*(")')
_FLOW = re.compile(r"/login/[A-Za-z0-9_-]{16,}")
_HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
#: Headers whose value is per request by design.
PER_REQUEST = {"X-Request-ID", "Date"}


# --- the normaliser ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What an observer sees of a response, with per-request values taken out."""

    status: int
    body: str
    headers: tuple[tuple[str, str], ...]
    cookies: tuple[str, ...]


def normalise(response: TestResponse, *typed: str) -> Answer:
    """Keep everything an observer could compare, minus per-request values: CSRF tokens,
    login flow ids, request ids, the session cookie's value, and what the person typed."""
    text = response.get_data(as_text=True)
    for value in typed:
        if value:
            text = text.replace(value, "<typed>")
    text = _CSRF.sub(r"\1<csrf>\2", text)
    text = _FLOW.sub("/login/<flow>", text)
    text = _HEX_ID.sub("<id>", text)
    headers = []
    for name, value in response.headers.items():
        if name in PER_REQUEST or name == "Set-Cookie":
            continue
        if name == "Location":
            value = _FLOW.sub("/login/<flow>", value)
        headers.append((name, value))
    cookies = tuple(
        sorted(re.sub(r"=[^;]*", "=<value>", c, count=1)
               for c in response.headers.getlist("Set-Cookie"))
    )
    names = tuple(sorted(n for n, _ in response.headers.items()))
    return Answer(response.status_code, text, (*sorted(headers), ("names", " ".join(names))),
                  cookies)


def test_the_normaliser_can_tell_answers_apart(app: Flask) -> None:
    """Guard against a normaliser that hides everything (a tautology)."""
    client = app.test_client()
    client.get("/?lang=en")
    client.get("/account/recover")  # the session (and its cookie) exists from here on
    unblock, recover = client.get("/account/unblock"), client.get("/account/recover")
    assert normalise(unblock) != normalise(recover)
    again = client.get("/account/unblock")
    assert unblock.get_data() != again.get_data()  # the CSRF tokens differ ...
    assert normalise(unblock) == normalise(again)  # ... and nothing else
    assert normalise(client.get("/account/unblock?lang=nl")) != normalise(again)


# --- counting argon2 -------------------------------------------------------------------------


class Argon2Counter:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def snapshot(self) -> Counter[str]:
        return Counter(self.calls)


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Argon2Counter]:
    """Counts every argon2 hash and verification, whichever `Passwords` instance makes it."""
    counter = Argon2Counter()
    for name in ("hash", "verify"):
        original = getattr(PasswordHasher, name)

        def counted(self: PasswordHasher, *args: Any, _name: str = name,
                    _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
            counter.calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(PasswordHasher, name, counted)
    yield counter


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def app(make_app: Any, tmp_path: Path) -> Flask:
    app: Flask = make_app(policies_dir=policies_for_pages(tmp_path))
    add_test_rp(app)
    make_account(app, KNOWN)
    blocked = make_account(app, BLOCKED, phone="+31612345679")
    make_account(app, PENDING, phone="+31612345670", status=AccountStatus.PENDING_ACTIVATION)
    no_email = make_account(app, NO_EMAIL, phone="+31612345671")
    with get_db(app).begin() as s:
        row = s.get(Account, blocked)
        assert row is not None
        row.blocked_until = clock.now() + timedelta(minutes=30)
        row = s.get(Account, no_email)
        assert row is not None
        row.email_verified_at = None
    return app


def browser(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.get("/?lang=en")
    return client


def probe(
    app: Flask, argon2_calls: Argon2Counter, attempt: Callable[[FlaskClient], TestResponse],
    *typed: str,
) -> tuple[Answer, Counter[str]]:
    """One probe in a fresh browser: its normalised answer and the argon2 work it cost."""
    client = browser(app)
    before = argon2_calls.snapshot()
    response = attempt(client)
    cost = argon2_calls.snapshot() - before
    wait_for_deliveries(app)  # a code sent to a known account stays out of the next probe
    return normalise(response, *typed), cost


def same_for_all(
    app: Flask, argon2_calls: Argon2Counter,
    attempt: Callable[[FlaskClient, str, str], TestResponse],
    cases: list[tuple[str, str]],
) -> tuple[Answer, Counter[str]]:
    """Every (username, password) case gives one answer at one cost; returns them."""
    attempt(browser(app), UNKNOWN, "warm-up password")  # builds the cached hasher once
    results = [
        probe(app, argon2_calls, lambda c, u=u, p=p: attempt(c, u, p), u, p)
        for u, p in cases
    ]
    first = results[0]
    for (username, _), result in zip(cases, results, strict=True):
        assert result[0] == first[0], f"{username} answers differently from {cases[0][0]}"
        assert result[1] == first[1], f"{username} costs {result[1]}, not {first[1]}"
    return first


# --- login -----------------------------------------------------------------------------------


def _login(client: FlaskClient, username: str, password: str) -> TestResponse:
    page = client.get("/test-rp/start", follow_redirects=True)
    action = re.search(r'<form action="([^"]*/password)"', page.get_data(as_text=True))
    assert action is not None
    return client.post(action.group(1), data={
        "csrf_token": token(page), "username": username, "password": password,
    })


def test_login(app: Flask, argon2_calls: Argon2Counter) -> None:
    answer, cost = same_for_all(app, argon2_calls, _login, [
        (UNKNOWN, PASSWORD),
        (KNOWN, "a wrong password"),
        (BLOCKED, "a wrong password"),
        (PENDING, "a wrong password"),
        (PENDING, PASSWORD),  # right password, not yet activated
    ])
    assert answer.status == 200 and "Login failed" in answer.body
    assert cost == Counter(verify=1)


# --- unblock ---------------------------------------------------------------------------------


def _unblock(client: FlaskClient, username: str, password: str) -> TestResponse:
    page = client.get("/account/unblock")
    return client.post("/account/unblock", data={
        "csrf_token": token(page), "username": username, "password": password,
    })


def test_unblock_request(app: Flask, argon2_calls: Argon2Counter) -> None:
    answer, cost = same_for_all(app, argon2_calls, _unblock, [
        (UNKNOWN, PASSWORD),
        (KNOWN, "a wrong password"),
        (KNOWN, PASSWORD),  # right password, not blocked
        (BLOCKED, "a wrong password"),
        (BLOCKED, PASSWORD),  # the one case that sends a code
        (PENDING, PASSWORD),
    ])
    assert answer.status == 303
    assert dict(answer.headers)["Location"].endswith("/account/unblock/code")
    assert cost == Counter(verify=1)


def _unblock_then_code_page(client: FlaskClient, username: str, password: str) -> TestResponse:
    _unblock(client, username, password)
    return client.get("/account/unblock/code")


def test_unblock_code_page(app: Flask, argon2_calls: Argon2Counter) -> None:
    answer, _ = same_for_all(app, argon2_calls, _unblock_then_code_page, [
        (UNKNOWN, PASSWORD), (KNOWN, "a wrong password"), (BLOCKED, PASSWORD),
    ])
    assert answer.status == 200 and "Enter your unblock code" in answer.body


def _unblock_code(client: FlaskClient, username: str, password: str) -> TestResponse:
    page = _unblock_then_code_page(client, username, password)
    return client.post("/account/unblock/code", data={
        "csrf_token": token(page), "unblock_code": "DBBBBBBBB",
    })


def test_unblock_code(app: Flask, argon2_calls: Argon2Counter) -> None:
    answer, cost = same_for_all(app, argon2_calls, _unblock_code, [
        (UNKNOWN, PASSWORD), (KNOWN, "a wrong password"), (BLOCKED, PASSWORD),
    ])
    assert answer.status == 200 and "This unblock code is not correct" in answer.body
    assert cost == Counter(verify=1)  # the password step before it, once; the code none


def _unblock_in_flow(client: FlaskClient, username: str, password: str) -> TestResponse:
    page = client.get("/test-rp/start", follow_redirects=True)
    action = re.search(r'<form action="(/login/[^"/]+)/password"', page.get_data(as_text=True))
    assert action is not None
    return client.post(action.group(1) + "/unblock", data={
        "csrf_token": token(page), "username": username, "password": password,
    })


def test_unblock_inside_a_login_flow(app: Flask, argon2_calls: Argon2Counter) -> None:
    answer, cost = same_for_all(app, argon2_calls, _unblock_in_flow, [
        (UNKNOWN, PASSWORD), (KNOWN, "a wrong password"), (BLOCKED, PASSWORD),
    ])
    assert answer.status == 200 and "Enter your unblock code" in answer.body
    assert cost == Counter(verify=1)


# --- recovery --------------------------------------------------------------------------------


def _recover(client: FlaskClient, username: str, _password: str) -> TestResponse:
    page = client.get("/account/recover")
    return client.post("/account/recover", data={
        "csrf_token": token(page), "username": username,
    })


def test_recovery_request(app: Flask, argon2_calls: Argon2Counter) -> None:
    answer, cost = same_for_all(app, argon2_calls, _recover, [
        (UNKNOWN, ""),
        (KNOWN, ""),  # the one case that sends a code and a link
        (BLOCKED, ""),
        (PENDING, ""),
        (NO_EMAIL, ""),
    ])
    assert answer.status == 303
    assert dict(answer.headers)["Location"].endswith("/account/recover/sent")
    assert cost == Counter()


def _recover_finish(client: FlaskClient, username: str, _password: str) -> TestResponse:
    page = client.get("/account/recover?token=" + "Q" * 43)
    return client.post("/account/recover/new", data={
        "csrf_token": token(page), "token": "Q" * 43, "from_link": "1", "username": username,
        "recovery_code": "HBBBBBBBB", "new_password": "a long new password",
        "new_password_again": "a long new password",
    })


def test_recovery_finish(app: Flask, argon2_calls: Argon2Counter) -> None:
    # A code and a link exist for the known account: a wrong pair still answers the same.
    _recover(browser(app), KNOWN, "")
    wait_for_deliveries(app)
    answer, cost = same_for_all(app, argon2_calls, _recover_finish, [
        (UNKNOWN, ""), (KNOWN, ""), (NO_EMAIL, ""), (PENDING, ""),
    ])
    assert answer.status == 200
    assert "The recovery code or the e-mail confirmation is not correct" in answer.body
    assert cost == Counter()


def test_a_difference_would_be_caught(app: Flask, argon2_calls: Argon2Counter) -> None:
    """The comparison can fail: a right password (a login) and a wrong one differ in every
    respect this file checks."""
    with pytest.raises(AssertionError, match="answers differently"):
        same_for_all(app, argon2_calls, _login, [(KNOWN, "a wrong password"), (KNOWN, PASSWORD)])


def test_control_characters_in_a_username_are_an_unknown_username(make_app: Any) -> None:
    """A NUL byte once reached PostgreSQL's text type and raised there (a 500)."""
    from gateway.accounts.service import username_key

    assert username_key("jan\x00jansen") is None
    assert username_key("jan\u202ejansen") is None
    app = make_app()
    client = app.test_client()
    page = client.get("/account?lang=en", follow_redirects=True)
    from tests.test_login_flow import post_form

    answer = post_form(
        client, page, "/password", {"username": "jan\x00jansen", "password": "x" * 10}
    )
    assert answer.status_code == 200
    activation = client.get("/activate?lang=en")
    answer = post_form(client, activation, "/activate", {
        "username": "a\x00b", "password": "x" * 10, "activation_code": "ABCDFGHJK",
    })
    assert answer.status_code < 500


# --- the same database work -----------------------------------------------------------------


def _statements(app: Flask, attempt: Callable[[], TestResponse]) -> list[str]:
    """The shape of every SQL statement `attempt` runs: its verb and its table, in order."""
    import sqlalchemy as sa

    seen: list[str] = []
    shape = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM)\b.*?\b(?:FROM\s+)?(\w+)",
                       re.IGNORECASE | re.DOTALL)

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        found = shape.match(statement)
        seen.append(" ".join(found.groups()) if found else statement.split()[0])

    engine = get_db(app).engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        attempt()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return seen


@pytest.mark.parametrize("attempt", [_login, _unblock, _unblock_code, _recover_finish])
def test_an_unknown_username_does_the_database_work_of_a_wrong_password(
    app: Flask, attempt: Callable[[FlaskClient, str, str], TestResponse]
) -> None:
    """Timing without a clock: an unknown username runs the statements a known one with a
    wrong password runs (the failure count, the code rows and their attempt counter), so
    neither the work nor its time tells them apart (bench/enumeration_timing.py measures
    the rest)."""
    if attempt is _recover_finish:
        _recover(browser(app), KNOWN, "")  # live codes, as an attacker could cause
        wait_for_deliveries(app)
    attempt(browser(app), UNKNOWN, "warm-up password")
    client = browser(app)
    unknown = _statements(app, lambda: attempt(client, UNKNOWN, "a wrong password"))
    wait_for_deliveries(app)
    client = browser(app)
    known = _statements(app, lambda: attempt(client, KNOWN, "a wrong password"))
    assert unknown == known
