"""`gateway demo`: seeding is repeatable and prints credentials that really work."""

from __future__ import annotations

import re
from datetime import timedelta

import pyotp
from click.testing import CliRunner
from flask import Flask

from gateway import clock
from gateway.accounts.demo import seed_demo_citizen
from gateway.app import get_policies, get_settings
from gateway.cli import main
from gateway.db import get_db
from gateway.demo import seeders
from gateway.desks.demo import seed_demo_staff
from gateway.desks.staff import authenticate

LINE = re.compile(r"(demo\.\w+)\s+one-time password: (\S+)\s+TOTP secret: ([A-Z2-7]+)")


def printed_credentials(lines: list[str]) -> dict[str, tuple[str, str]]:
    found = {}
    for line in lines:
        m = LINE.search(line)
        if m:
            found[m.group(1)] = (m.group(2), m.group(3))
    return found


def test_seeded_officer_logs_in_and_a_second_run_renews_credentials(app: Flask) -> None:
    first = printed_credentials(seed_demo_staff(app))
    second = printed_credentials(seed_demo_staff(app))
    assert set(first) == set(second) == {"demo.officer", "demo.supervisor"}
    assert first["demo.officer"] != second["demo.officer"]
    password, secret = second["demo.officer"]
    with clock.frozen(clock.now() + timedelta(minutes=2)), get_db(app).sessionmaker() as session:
        code = pyotp.TOTP(secret).at(clock.now())
        staff = authenticate(
            session, get_settings(app), get_policies(app),
            username="demo.officer", password=password, totp=code,
        )
        assert staff.role == "officer" and staff.desk == "GB-LON"


def test_every_seeder_runs_twice(app: Flask) -> None:
    with app.app_context():
        for seed in seeders():
            assert seed(app)
            assert seed(app)


def test_demo_refuses_production(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["demo"], env={
        "GATEWAY_ENV": "production", "GATEWAY_ISSUER": "https://gw.example",
        "GATEWAY_SECRET_KEY": "s" * 40, "GATEWAY_SMS_PROVIDER": "kannel",
        "GATEWAY_MAIL_URL": "smtp://mail.example:587", "GATEWAY_INSTANCE_DIR": str(tmp_path),
    })
    assert result.exit_code == 1
    assert result.output.strip() == "gateway: GATEWAY_ENV: the demo runs in dev mode only"


CITIZEN = re.compile(r"username: (demo\.citizen)\s+password: (\S+)")


def test_demo_citizen_logs_in_with_the_printed_password(app: Flask) -> None:
    from tests.test_login_flow import login_password

    first = CITIZEN.search("\n".join(seed_demo_citizen(app)))
    lines = seed_demo_citizen(app)  # a second start gives a new password that works
    second = CITIZEN.search("\n".join(lines))
    assert first and second and first.group(2) != second.group(2)
    client = app.test_client()
    page = client.get("/account?lang=en", follow_redirects=True)
    page = login_password(client, page, username="demo.citizen", password=second.group(2))
    assert page.request.path == "/account"
    assert "You are logged in as demo.citizen at level basis." in page.get_data(as_text=True)
