"""SMS sent by a desk go through the SMS abuse limits (gateway.sms.limits): the activation code
at approval and at a four-eyes reissue, and the notice to the old number of a four-eyes phone
change. A refusal is a clear DeskError, writes nothing, and no provider (the outbox) is
called."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from gateway import clock
from gateway.app import get_policies, get_settings
from gateway.desks import service
from gateway.desks.service import DeskError
from gateway.sms.phone import parse_phone
from gateway.sms.service import get_sms_service
from tests.test_desk_flow import outbox
from tests.test_desk_service import (
    MOBILE,
    NOW,
    World,
    add_register_person,
    check,
    make_application,
    make_staff,
    session_of,
    snapshot,
)
from tests.test_four_eyes import Desk, _refused


def spend_number(app: Flask, e164: str = MOBILE) -> None:
    """Use up the hourly per-number budget of `e164` (policies/sms.yaml: 5 an hour)."""
    phone = parse_phone(e164, get_policies(app).sms)
    sms = get_sms_service(app)
    for _ in range(get_policies(app).sms.per_number.hour):
        sms.count_message(phone=phone, text="x")


@pytest.fixture
def world(app: Flask) -> Iterator[World]:
    with clock.frozen(NOW):
        s = session_of(app)
        officer = make_staff(s)
        add_register_person(s)
        application, code = make_application(s, get_settings(app))
        yield World(app, s, officer, application, code)
        s.close()


@pytest.fixture
def desk(app: Flask) -> Iterator[Desk]:
    with clock.frozen(NOW):
        d = Desk(app)
        yield d
        d.s.close()


def _approve(world: World, delivery: str) -> service.Approval:
    return service.approve(world.s, get_settings(world.app), get_policies(world.app), world.app,
                           staff=world.officer, application_id=world.application.id,
                           delivery=delivery, letter_address=["Rue 1", "Paris"])


def test_approval_refused_by_the_limits_writes_and_sends_nothing(world: World) -> None:
    assert check(world.app, world.s, world.officer, world.application).passed
    spend_number(world.app)
    before = snapshot(world.s)
    with pytest.raises(DeskError) as exc:
        _approve(world, "sms")
    assert exc.value.code == "sms_limited" and exc.value.field == "delivery"
    assert "letter" in str(exc.value.message)
    world.s.rollback()
    assert snapshot(world.s) == before
    assert outbox(world.app) == []
    # The way out the message names works.
    approval = _approve(world, "letter")
    assert approval.letter_pdf is not None and outbox(world.app) == []


def test_approval_within_the_limits_still_sends(world: World) -> None:
    assert check(world.app, world.s, world.officer, world.application).passed
    approval = _approve(world, "sms")
    assert approval.delivered is True
    assert [m["to"] for m in outbox(world.app)] == [MOBILE]


def test_reissue_refused_by_the_limits(desk: Desk) -> None:
    request = desk.ask("reissue_activation", {"delivery": "sms"})
    spend_number(desk.app)
    before = snapshot(desk.s)
    _refused(desk, request, "sms_limited")
    assert snapshot(desk.s) == before
    assert outbox(desk.app) == []


def test_four_eyes_phone_change_refused_when_the_old_number_cannot_be_told(
    desk: Desk,
) -> None:
    request = desk.ask("change_phone", {"phone": "+33 6 12 34 56 78"})
    account = desk.account
    account.status = "active"
    account.phone_verified_at = clock.now()
    desk.s.commit()
    spend_number(desk.app, MOBILE)
    _refused(desk, request, "notice_refused")
    assert desk.account.phone_e164 == MOBILE
    assert outbox(desk.app) == []  # no code to the new number, no notice to the old
