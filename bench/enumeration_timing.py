"""Response times of known and unknown usernames at login, unblock and recovery.

Issue 5, "Bad input and abuse": unknown and known usernames must get the same response,
including "timing within noise". tests/test_no_enumeration.py proves the same status, body,
headers and argon2 work; this program measures the time, which a test must not assert on.

For each path it times N requests per case through the Flask test client, with the argon2
parameters of the repo's policy, the cases interleaved round by round in a new random order
each round (so drift in machine load, and the cost of following a case that wrote rows, hit
every case alike), and prints the median and the 90th percentile of each case side
by side with its ratio to the unknown username. Each request comes from its own address, so
the per-network throttle never answers instead; background deliveries (codes, e-mails) are
waited for between requests, outside the timed part.

Run: .venv/bin/python bench/enumeration_timing.py [--runs 40]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from gateway import clock
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.passwords import Passwords
from gateway.accounts.service import wait_for_deliveries
from gateway.app import create_app, get_policies
from gateway.db import Base, get_db
from gateway.settings import Settings

PASSWORD = "purple elephant dances"
WRONG = "not the right password"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
FLOW_ACTION = re.compile(r'<form action="(/login/[^"]+/password)"')

Attempt = Callable[[str], object]


def make_app(folder: Path) -> Flask:
    settings = Settings.from_env({
        "GATEWAY_INSTANCE_DIR": str(folder / "instance"),
        "GATEWAY_DATABASE_URL": f"sqlite:///{folder / 'bench.db'}",
        "GATEWAY_SECRET_KEY": "bench-secret-" + "x" * 40,
    })
    app = create_app(settings)
    Base.metadata.create_all(get_db(app).engine)
    return app


def add_account(app: Flask, username: str, phone: str, *, blocked: bool = False,
                email: bool = True) -> None:
    now = clock.now()
    hasher = Passwords(get_policies(app).accounts.password)
    with get_db(app).begin() as s:
        s.add(Account(
            username=username, username_key=username, password_hash=hasher.hash(PASSWORD),
            bsn=None, surname="Jansen", given_names="Jan", birth_date=now.date(),
            nationality="NLD", phone_e164=phone, phone_channel="sms", phone_verified_at=now,
            email=f"{username}@example.org" if email else None,
            email_verified_at=now if email else None, language="en",
            status=AccountStatus.ACTIVE.value, created_at=now, activated_at=now,
            failed_logins=0,
            blocked_until=now + timedelta(hours=6) if blocked else None,
        ))


class Browser:
    """One test client; every request from a new address (the per-network throttle)."""

    def __init__(self, app: Flask) -> None:
        self.client: FlaskClient = app.test_client()
        self.client.get("/?lang=en")
        self.count = 0

    def _addr(self) -> dict[str, str]:
        self.count += 1
        return {"REMOTE_ADDR": f"10.{self.count // 65536 % 256}.{self.count // 256 % 256}."
                               f"{self.count % 256}"}

    def token(self, path: str) -> tuple[str, str]:
        page = self.client.get(path, follow_redirects=True, environ_base=self._addr())
        text = page.get_data(as_text=True)
        match = TOKEN.search(text)
        assert match, path
        return match.group(1), text

    def post(self, path: str, data: dict[str, str]) -> float:
        start = time.perf_counter()
        response = self.client.post(path, data=data, environ_base=self._addr())
        response.get_data()
        elapsed = time.perf_counter() - start
        assert response.status_code in (200, 303), (path, response.status_code)
        return elapsed


def paths(app: Flask) -> dict[str, dict[str, Callable[[], float]]]:
    b = Browser(app)

    csrf, _ = b.token("/account/recover")
    # Test relying party: the /account page starts a login flow of the gateway itself.
    _, login_page = b.token("/account")
    match = FLOW_ACTION.search(login_page)
    assert match, "no login form"
    login_action = match.group(1)

    def login(username: str, password: str) -> Callable[[], float]:
        return lambda: b.post(login_action, {"csrf_token": csrf, "username": username,
                                             "password": password})

    def unblock(username: str, password: str) -> Callable[[], float]:
        return lambda: b.post("/account/unblock", {"csrf_token": csrf, "username": username,
                                                   "password": password})

    def unblock_code(username: str) -> Callable[[], float]:
        def run() -> float:
            b.client.post("/account/unblock", data={"csrf_token": csrf, "username": username,
                                                    "password": WRONG},
                          environ_base=b._addr())
            return b.post("/account/unblock/code",
                          {"csrf_token": csrf, "unblock_code": "DBBBBBBBB"})
        return run

    def recover(username: str) -> Callable[[], float]:
        return lambda: b.post("/account/recover", {"csrf_token": csrf, "username": username})

    def recover_finish(username: str) -> Callable[[], float]:
        return lambda: b.post("/account/recover/new", {
            "csrf_token": csrf, "token": "Q" * 43, "from_link": "1", "username": username,
            "recovery_code": "HBBBBBBBB", "new_password": "a long new password",
            "new_password_again": "a long new password",
        })

    return {
        "login (password page)": {
            "unknown": login("sam.de.vos", WRONG),
            "known, wrong password": login("jan.jansen", WRONG),
        },
        "unblock: request": {
            "unknown": unblock("sam.de.vos", PASSWORD),
            "known, wrong password": unblock("jan.jansen", WRONG),
            "blocked, right password (code sent)": unblock("kim.peters", PASSWORD),
        },
        "unblock: code": {
            "unknown": unblock_code("sam.de.vos"),
            "known, wrong code": unblock_code("jan.jansen"),
        },
        "recovery: request": {
            "unknown": recover("sam.de.vos"),
            "known (code + link sent)": recover("jan.jansen"),
        },
        "recovery: new password": {
            "unknown": recover_finish("sam.de.vos"),
            "known, wrong code": recover_finish("jan.jansen"),
        },
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="requests per case (default 40)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(Path(tmp))
        with app.app_context():
            add_account(app, "jan.jansen", "+31612345678")
            add_account(app, "kim.peters", "+31612345679", blocked=True)
        argon2 = get_policies(app).accounts.password.argon2
        print(f"argon2id t={argon2.time_cost} m={argon2.memory_cost_kib} KiB "
              f"p={argon2.parallelism}; {args.runs} runs per case, interleaved\n")
        table = paths(app)
        # Warm-up: templates, the cached hasher, database pages.
        for cases in table.values():
            for run in cases.values():
                run()
                wait_for_deliveries(app)
        times: dict[tuple[str, str], list[float]] = {}
        order = [(path, case, run) for path, cases in table.items() for case, run in cases.items()]
        shuffler = random.Random(8)
        for _ in range(args.runs):
            # A new order every round: a case that runs right after one that wrote rows pays
            # for it (measured: about 0.5 ms on the recovery page), which a fixed order would
            # always charge to the same case.
            shuffler.shuffle(order)
            for path, case, run in order:
                times.setdefault((path, case), []).append(run())
                wait_for_deliveries(app)
        print(f"{'path':<26} {'case':<38} {'median ms':>9} {'p90 ms':>8} "
              f"{'median x':>9} {'p90 x':>7}")
        for path, cases in table.items():
            base = times[(path, "unknown")]
            base_median, base_p90 = statistics.median(base), percentile(base, 0.9)
            for case in cases:
                values = times[(path, case)]
                median, p90 = statistics.median(values), percentile(values, 0.9)
                print(f"{path:<26} {case:<38} {median * 1000:9.1f} {p90 * 1000:8.1f} "
                      f"{median / base_median:9.2f} {p90 / base_p90:7.2f}")
        get_db(app).dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
