"""A demo citizen for `gateway demo`: an active account that can log in at basis and midden.

Anna Maria de Vries from the demo register (gateway/data/register-demo.csv), living abroad,
with a Dutch mobile number whose codes land in the dev SMS outbox. Each demo start gives her a
fresh password and prints it (passwords are stored only as argon2id hashes). Dev mode only.
"""

from __future__ import annotations

import secrets
from datetime import date

from flask import Flask
from sqlalchemy import select

from gateway import clock
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.passwords import Passwords
from gateway.app import get_policies, get_settings
from gateway.db import get_db

DEMO_USERNAME = "demo.citizen"
DEMO_BSN = "999907475"
DEMO_PHONE = "+31612345678"
DEMO_EMAIL = "anna.de.vries@example.org"
#: Readable and outside the common-password list; a fresh one each demo start.
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def seed_demo_citizen(app: Flask) -> list[str]:
    settings, policies = get_settings(app), get_policies(app)
    password = "-".join(
        "".join(secrets.choice(_ALPHABET) for _ in range(4)) for _ in range(3)
    )
    now = clock.now()
    with get_db(app).sessionmaker() as session:
        account = session.scalars(
            select(Account).where(Account.username_key == DEMO_USERNAME)
        ).one_or_none()
        if account is None:
            account = Account(
                username=DEMO_USERNAME, username_key=DEMO_USERNAME, bsn=DEMO_BSN,
                surname="de Vries", given_names="Anna Maria", birth_date=date(1990, 11, 2),
                nationality="NLD", phone_e164=DEMO_PHONE, phone_channel="sms",
                phone_verified_at=now, email=DEMO_EMAIL, email_verified_at=now,
                email_confirmed_at=now, language="nl", enrolled_desk="GB-LON",
                created_at=now, activated_at=now, password_hash="",
            )
            session.add(account)
        account.password_hash = Passwords(policies.accounts.password).hash(password)
        account.status = AccountStatus.ACTIVE
        account.failed_logins = 0
        account.blocked_until = None
        session.commit()
    return [
        "",
        f"Demo citizen (BSN {DEMO_BSN}, Anna Maria de Vries); log in at {settings.issuer}/account",
        f"  username: {DEMO_USERNAME}  password: {password}",
        f"  SMS codes to {DEMO_PHONE} appear in the dev outbox ({settings.issuer}/dev/outbox)",
    ]
