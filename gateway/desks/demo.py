"""Demo desk staff for `gateway demo`: an officer and a supervisor at the London desk.

Each demo start gives them a fresh one-time password and TOTP secret and prints both, because
nothing of either is stored in clear (the demo cannot show yesterday's). Dev mode only.
"""

from __future__ import annotations

import pyotp
from flask import Flask
from sqlalchemy import select

from gateway import clock
from gateway.accounts.passwords import Passwords
from gateway.app import get_policies, get_settings
from gateway.crypto import seal
from gateway.db import get_db
from gateway.desks.models import StaffAccount
from gateway.desks.staff import (
    TOTP_SEAL_PURPOSE,
    TOTP_SECRET_CHARS,
    TOTP_VALID_WINDOW,
    create_staff,
    new_one_time_password,
    totp_step,
)

DEMO_DESK = "GB-LON"
DEMO_STAFF = (("demo.officer", "officer"), ("demo.supervisor", "supervisor"))


def seed_demo_staff(app: Flask) -> list[str]:
    settings, policies = get_settings(app), get_policies(app)
    lines = ["", f"Desk staff (demo, desk {DEMO_DESK}); log in at {settings.issuer}/desk/login"]
    for username, role in DEMO_STAFF:
        with get_db(app).sessionmaker() as session:
            staff = session.scalars(
                select(StaffAccount).where(StaffAccount.username == username)
            ).one_or_none()
            if staff is None:
                new = create_staff(
                    session, settings, policies, desk=DEMO_DESK, username=username, role=role,
                    actor="demo", actor_role="operator",
                )
                password = new.one_time_password
                secret = pyotp.parse_uri(new.provisioning_uri).secret
            else:
                # Fresh credentials for an officer from an earlier demo run.
                password = new_one_time_password()
                secret = pyotp.random_base32(length=TOTP_SECRET_CHARS)
                staff.password_hash = Passwords(policies.accounts.password).hash(password)
                staff.totp_secret_sealed = seal(settings, TOTP_SEAL_PURPOSE, secret)
                staff.last_totp_step = totp_step(clock.now()) - TOTP_VALID_WINDOW - 1
                staff.must_change_password = True
                staff.failed_logins = 0
                staff.blocked_until = None
                staff.active = True
                session.commit()
        lines.append(
            f"  {role:10} {username}  one-time password: {password}  TOTP secret: {secret}"
        )
    lines.append("  (put the TOTP secret in an authenticator app, or: oathtool --totp -b SECRET)")
    return lines
