"""Issue 5 leftovers: `max_accounts_per_number` (policies/sms.yaml; gateway.accounts.number_limit)
enforced at the online application, the desk's approval, the desk's four-eyes phone change
(request and decision) and My account's phone change (start and code), with one message that
never says whose number it is; and My account's `notice_refused` path (the old number cannot
be told of the change, so nothing changes and the code stays usable)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from gateway import clock
from gateway.accounts.models import Account
from gateway.accounts.number_limit import NUMBER_FULL, accounts_on_number
from gateway.app import get_policies, get_settings
from gateway.db import get_db
from gateway.desks import service
from gateway.desks.models import Application
from gateway.desks.service import DeskError
from gateway.sms.limits import LimitExceeded
from gateway.sms.phone import parse_phone
from gateway.sms.service import get_sms_service
from tests.test_apply import form, post, sms_outbox
from tests.test_desk_service import (
    NOW,
    add_register_person,
    check,
    make_application,
    make_staff,
    session_of,
)
from tests.test_four_eyes import Desk, _refused
from tests.test_login_flow import MOBILE, last_code, make_account, outbox, post_form
from tests.test_my_account import account_row, login_basis, set_email, step_up_with_sms

NEW_MOBILE = "+31687654321"
ENGLISH_FULL = "already in use for as many accounts as one number may have"


def _fill(app: Flask, e164: str, count: int | None = None, *, status: str = "active",
          prefix: str = "holder") -> list[str]:
    """`count` accounts (default: the policy's maximum) with this number; their usernames."""
    count = get_policies(app).sms.max_accounts_per_number if count is None else count
    names = []
    with get_db(app).begin() as s:
        for i in range(count):
            name = f"{prefix}{i}"
            s.add(Account(
                username=name, username_key=name, password_hash="x", bsn=None,
                surname="Holder", given_names="H", birth_date=date(1970, 1, 1),
                nationality="NLD", phone_e164=e164, phone_channel="sms", status=status,
                created_at=clock.now(),
            ))
            names.append(name)
    return names


def test_closed_accounts_give_their_place_back(app: Flask) -> None:
    _fill(app, MOBILE, 2)
    _fill(app, MOBILE, 3, status="deactivated", prefix="gone")
    _fill(app, MOBILE, 1, status="pending_activation", prefix="new")
    with get_db(app).begin() as s:
        assert accounts_on_number(s, MOBILE) == 3
        some = s.scalars(sa.select(Account.id).where(Account.username == "holder0")).one()
        assert accounts_on_number(s, MOBILE, exclude=some) == 2


# --- the online application ------------------------------------------------------------------


def test_application_refused_for_a_full_number(app: Flask) -> None:
    e164 = "+31612345678"  # tests/test_apply.py's form
    names = _fill(app, e164, get_policies(app).sms.max_accounts_per_number - 1)
    client = app.test_client()
    accepted = post(client, username="first1")
    assert accepted.status_code in (200, 303), accepted.get_data(as_text=True)[:500]
    # The application made no account; fill the last place and apply again.
    _fill(app, e164, 1, prefix="last")
    sent_before = len(sms_outbox(app))
    refused = post(client, username="second2", bsn=form()["bsn"])
    page = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert ENGLISH_FULL in page
    assert not any(name in page for name in names)  # never whose number it is
    assert len(sms_outbox(app)) == sent_before  # no desk code spent on it
    dutch = post(client, lang="nl", username="second2")
    assert "zoveel accounts als één nummer mag hebben" in dutch.get_data(as_text=True)


# --- the desk: approval and four-eyes phone change -------------------------------------------


@pytest.fixture
def desk(app: Flask) -> Iterator[Desk]:
    with clock.frozen(NOW):
        d = Desk(app)
        d.s.get(Account, d.account_id).status = "active"  # type: ignore[union-attr]
        d.s.commit()
        yield d
        d.s.close()


def test_approval_refused_for_a_full_number(app: Flask) -> None:
    with clock.frozen(NOW):
        s = session_of(app)
        officer = make_staff(s)
        add_register_person(s)
        application, _code = make_application(s, get_settings(app))
        assert check(app, s, officer, application).passed
        _fill(app, application.phone_e164)
        with pytest.raises(DeskError) as exc:
            service.approve(s, get_settings(app), get_policies(app), app, staff=officer,
                            application_id=application.id, delivery="letter",
                            letter_address=["Rue 1", "Paris"])
        assert exc.value.code == "number_full"
        s.rollback()
        assert s.scalar(sa.select(sa.func.count()).select_from(Account).where(
            Account.username == application.username)) == 0
        assert s.get(Application, application.id).status == "checked"  # type: ignore[union-attr]
        s.close()


def test_four_eyes_phone_change_refused_for_a_full_number(desk: Desk) -> None:
    target = "+33612345678"
    _fill(desk.app, target)
    with pytest.raises(DeskError) as exc:
        desk.ask("change_phone", {"phone": target})
    assert exc.value.code == "number_full" and exc.value.field == "phone"
    desk.s.rollback()
    # Room at request time, full at the decision: refused then, the request stays pending.
    other = "+33698765432"
    request = desk.ask("change_phone", {"phone": other})
    _fill(desk.app, other, prefix="late")
    _refused(desk, request, "number_full")
    assert desk.account.phone_e164 != other


def test_four_eyes_phone_change_to_a_number_with_room(desk: Desk) -> None:
    target = "+33612345678"
    _fill(desk.app, target, get_policies(desk.app).sms.max_accounts_per_number - 1)
    request = desk.ask("change_phone", {"phone": target})
    assert desk.decide(request).status == "approved"
    assert desk.account.phone_e164 == target


# --- My account ------------------------------------------------------------------------------


def _phone_page(app: Flask) -> tuple[Any, Any, str]:
    account_id = make_account(app)
    set_email(app, account_id)
    client = app.test_client()
    login_basis(client)
    page = client.get("/account/phone?lang=en", follow_redirects=True)
    page = step_up_with_sms(client, app, page)
    assert page.request.path == "/account/phone"
    return client, page, account_id


def test_my_account_phone_change_refused_for_a_full_number(app: Flask) -> None:
    client, page, _account_id = _phone_page(app)
    names = _fill(app, NEW_MOBILE)
    sent = len(outbox(app))
    answer = post_form(client, page, "/account/phone", {"phone": NEW_MOBILE})
    text = answer.get_data(as_text=True)
    assert answer.request.path == "/account/phone" and ENGLISH_FULL in text
    assert not any(name in text for name in names)
    assert len(outbox(app)) == sent  # no code sent to the full number
    assert str(NUMBER_FULL) in text


def test_my_account_phone_change_refused_when_the_number_filled_meanwhile(app: Flask) -> None:
    client, page, account_id = _phone_page(app)
    answer = post_form(client, page, "/account/phone", {"phone": NEW_MOBILE})
    assert answer.request.path == "/account/phone/code"
    code = last_code(app, NEW_MOBILE)
    _fill(app, NEW_MOBILE)
    refused = post_form(client, answer, "/account/phone/code", {"code": code})
    assert ENGLISH_FULL in refused.get_data(as_text=True)
    assert account_row(app, account_id).phone_e164 == MOBILE
    # A place comes free: the same code still works.
    with get_db(app).begin() as s:
        s.execute(sa.update(Account).where(Account.username == "holder0")
                  .values(status="deactivated"))
    done = post_form(client, refused, "/account/phone/code", {"code": code})
    assert done.request.path == "/account/settings"
    assert account_row(app, account_id).phone_e164 == NEW_MOBILE


def _spend(app: Flask, e164: str) -> None:
    """Use up what is left of the number's hourly budget."""
    phone = parse_phone(e164, get_policies(app).sms)
    with pytest.raises(LimitExceeded):  # counted until the limit refuses
        for _ in range(100):
            get_sms_service(app).count_message(phone=phone, text="x")


def test_my_account_notice_refused_changes_nothing_and_keeps_the_code(app: Flask) -> None:
    client, page, account_id = _phone_page(app)
    answer = post_form(client, page, "/account/phone", {"phone": NEW_MOBILE})
    assert answer.request.path == "/account/phone/code"
    code = last_code(app, NEW_MOBILE)
    # The old number's budget is spent: its notice cannot be sent, so the change is refused.
    with app.app_context():
        _spend(app, MOBILE)
    to_old_before = [e for e in outbox(app) if e["to"] == MOBILE]
    refused = post_form(client, answer, "/account/phone/code", {"code": code})
    text = refused.get_data(as_text=True)
    assert refused.request.path == "/account/phone/code"
    assert "we must first send a notice to your current number" in text
    account = account_row(app, account_id)
    assert account.phone_e164 == MOBILE and account.phone_verified_at is not None
    assert [e for e in outbox(app) if e["to"] == MOBILE] == to_old_before
    # The change is still pending (the code was not spent): the code page is still there.
    again = client.get("/account/phone/code?lang=en")
    assert again.status_code == 200 and 'autocomplete="one-time-code"' in again.get_data(
        as_text=True)
