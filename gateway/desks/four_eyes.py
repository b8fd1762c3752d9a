"""Four-eyes requests for sensitive desk actions (issue 4, item 5).

An officer (or a supervisor) asks; a supervisor of the SAME desk who is not the requester
decides; approval executes the action in the same transaction as the decision:

- `reissue_activation`: ends the account's live activation codes and issues a new one, sent by
  SMS, voice call or PDF letter (the letter is returned to the deciding supervisor to print);
- `change_phone`: an active account gets a new phone number (checked against the phone policy
  and `max_accounts_per_number`, gateway.accounts.number_limit, at request and again at
  decision); the new number gets a one-time code (purpose
  `phone_change`, bound to "account:<id>", so the login flow can confirm it: until then
  `phone_verified_at` is empty), and the old number a notice, so a hijacked change is noticed;
- `unblock_account`: clears `blocked_until` and `failed_logins`;
- `lift_suspension`: clears a desk's suspension (gateway.desks.suspension) once the officer
  has checked the holder's identity document; refused for an account that is not suspended,
  at request and again at decision; the owner gets a notice by mail;
- `link_eidas`: links a foreign eID to the account (issue 8, item 4): the payload names the
  link code the person got after logging in with the eID (gateway.desks.eidas_links); the
  request keeps only the code's row id, never the code; the officer has compared the identity
  document with the account and with the eID's name and date of birth (shown from the code,
  mismatches marked); approval checks code, account and link again and writes the link.

Why the desk must match: a supervisor vouches for what happened at their own counter; a
supervisor elsewhere saw neither the person nor the document. A request older than
`REQUEST_VALIDITY` can only be refused: circumstances go stale.

Transactions and errors as in gateway.desks.service (these functions commit; DeskError means
nothing was written). Every request and decision is in the audit trail with the officer's desk.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from gateway import clock
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.number_limit import NumberFull, check_room
from gateway.desks import eidas_links, suspension
from gateway.desks.eidas_links import LinkError
from gateway.desks.models import (
    Application,
    FourEyesKind,
    FourEyesRequest,
    FourEyesStatus,
    StaffAccount,
    StaffRole,
)
from gateway.desks.service import (
    MAX_REASON_CHARS,
    PROCESSING_ROLES,
    DeskError,
    FourEyesOutcome,
    _clean_text,
    audit_record,
    count_activation_send,
    delivery_choice,
    issue_activation_code,
    letter_lines,
    send_activation_code,
    usable_phone,
    valid_id,
)
from gateway.i18n import lazy_gettext
from gateway.policy import Policies
from gateway.settings import Settings
from gateway.sms.phone import PhoneRejected, parse_phone

log = logging.getLogger(__name__)

#: A pending request older than this can no longer be approved, only refused.
REQUEST_VALIDITY = timedelta(days=14)
#: A payload is a few fields (a phone number, an address); anything bigger is refused.
MAX_PAYLOAD_CHARS = 2000

DECIDING_ROLES = frozenset({StaffRole.SUPERVISOR.value})

FOUR_EYES_MESSAGES: dict[str, Any] = {
    "bad_kind": lazy_gettext("Choose one of the actions that need a second person's approval."),
    "bad_object": lazy_gettext("No account matches this reference."),
    "bad_payload": lazy_gettext("The details given for this action are incomplete or invalid."),
    "bad_reason": lazy_gettext("Give a reason of at most 500 characters."),
    "already_pending": lazy_gettext(
        "A request for this action on this account is already waiting for a decision."
    ),
    "request_not_found": lazy_gettext("This four-eyes request does not exist."),
    "request_decided": lazy_gettext("This four-eyes request has already been decided."),
    "request_expired": lazy_gettext(
        "This request is older than 14 days and can no longer be approved. Refuse it and make"
        " a new request."
    ),
    "forbidden": lazy_gettext("Only a supervisor can decide on four-eyes requests."),
    "same_person": lazy_gettext(
        "You made this request yourself. Another supervisor of your desk must decide on it."
    ),
    "other_desk": lazy_gettext(
        "Only a supervisor of the desk where the request was made can decide on it."
    ),
    "not_pending_activation": lazy_gettext(
        "This account is already activated (or closed): an activation code cannot be reissued."
    ),
    "not_active": lazy_gettext("The phone number can only be changed for an active account."),
    "same_phone": lazy_gettext("The new phone number is the same as the current one."),
    "number_full": lazy_gettext(
        "The new phone number is already in use for as many accounts as one number may have."
        " Ask the account holder for another number."
    ),
    "notice_refused": lazy_gettext(
        "The phone number has not been changed: the notice to the current number cannot be"
        " sent now (the limit of messages to that number or its country has been reached, or"
        " messages cannot be sent at all). The request is still waiting; approve it later."
    ),
}


def _error(code: str, field: str | None = None) -> DeskError:
    return DeskError(code, FOUR_EYES_MESSAGES[code], field)


def _account_for(session: Session, object_ref: object) -> Account:
    """The account an object reference names: "account:<id>", or "application:<id>" of an
    approved application."""
    if not isinstance(object_ref, str) or ":" not in object_ref:
        raise _error("bad_object", "object_ref")
    kind, _, raw_id = object_ref.partition(":")
    object_id = valid_id(raw_id)
    account: Account | None = None
    if object_id is not None and kind == "account":
        account = session.get(Account, object_id)
    elif object_id is not None and kind == "application":
        application = session.get(Application, object_id)
        if application is not None and application.account_id is not None:
            account = session.get(Account, application.account_id)
    if account is None:
        raise _error("bad_object", "object_ref")
    return account


def _check_payload(
    kind: FourEyesKind, payload: object, policies: Policies | None
) -> dict[str, Any]:
    """The payload this kind needs, normalised; `bad_payload`, `bad_address`,
    `address_characters`, `bad_delivery` or `phone_unusable` otherwise."""
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise _error("bad_payload", "payload")
    try:
        size = len(json.dumps(payload))
    except (TypeError, ValueError):
        raise _error("bad_payload", "payload") from None
    if size > MAX_PAYLOAD_CHARS:
        raise _error("bad_payload", "payload")

    if kind is FourEyesKind.REISSUE_ACTIVATION:
        if set(payload) - {"delivery", "letter_address"}:
            raise _error("bad_payload", "payload")
        delivery = delivery_choice(payload.get("delivery"))
        if delivery == "letter":
            address = letter_lines(payload.get("letter_address"))
            return {"delivery": delivery, "letter_address": address}
        return {"delivery": delivery}
    if kind is FourEyesKind.CHANGE_PHONE:
        phone = payload.get("phone")
        if set(payload) != {"phone"} or not isinstance(phone, str):
            raise _error("bad_payload", "phone")
        if policies is not None:
            try:
                phone = parse_phone(phone, policies.sms).e164
            except PhoneRejected as exc:
                raise DeskError("phone_unusable", exc.message, "phone") from None
        elif len(phone) > 48:
            raise _error("bad_payload", "phone")
        return {"phone": phone}
    if kind in (FourEyesKind.UNBLOCK_ACCOUNT, FourEyesKind.LIFT_SUSPENSION):
        if payload:
            raise _error("bad_payload", "payload")
        return {}
    # link_eidas: {"link_code": "K..."}; request_four_eyes turns it into the code's row id.
    code = payload.get("link_code")
    if set(payload) != {"link_code"} or not isinstance(code, str) or len(code) > 64:
        raise _error("bad_payload", "link_code")
    return {"link_code": code}


def _check_room(session: Session, policies: Policies, account: Account, e164: str) -> None:
    """`number_full` when the new number already serves as many accounts as one may."""
    try:
        check_room(session, policies.sms.max_accounts_per_number, e164, exclude=account.id)
    except NumberFull:
        raise _error("number_full", "phone") from None


def _link_error(exc: LinkError) -> DeskError:
    return DeskError(exc.code, exc.message, "link_code")


def request_four_eyes(
    session: Session,
    *,
    staff: StaffAccount,
    kind: str,
    object_ref: str,
    payload: dict[str, Any] | None,
    reason: str,
    settings: Settings | None = None,
    policies: Policies | None = None,
) -> FourEyesRequest:
    """Ask for a sensitive action on an account (officers and supervisors).

    Payloads: reissue_activation {"delivery": "sms"|"voice"|"letter", "letter_address":
    [lines] for a letter}; change_phone {"phone": "+..."}; unblock_account {};
    lift_suspension {} (`not_suspended` for an account that is not suspended);
    link_eidas {"link_code": "K..."}. Pass `policies` to have a new phone number checked now
    (it is checked at the decision in any case). `settings` defaults to the current app's
    (for the audit chain).
    """
    from gateway.desks.service import require_role

    require_role(staff, PROCESSING_ROLES)
    try:
        action = FourEyesKind(kind)
    except ValueError:
        raise _error("bad_kind", "kind") from None
    text = _clean_text(reason, limit=MAX_REASON_CHARS)
    if text is None:
        raise _error("bad_reason", "reason")
    account = _account_for(session, object_ref)
    clean_payload = _check_payload(action, payload, policies)
    if action is FourEyesKind.LINK_EIDAS:
        try:
            link = eidas_links.pending_link(
                session, settings or _current_settings(), account, clean_payload["link_code"]
            )
        except LinkError as exc:
            raise _link_error(exc) from None
        # Never the code itself in the request (the table's rule): its row.
        clean_payload = {"link_code_id": link.code_id}
    if action is FourEyesKind.CHANGE_PHONE and policies is not None:
        _check_room(session, policies, account, clean_payload["phone"])
    if action is FourEyesKind.LIFT_SUSPENSION:
        suspension.check_suspended(account)
    ref = f"account:{account.id}"
    pending = session.scalar(
        sa.select(FourEyesRequest.id).where(
            FourEyesRequest.object_ref == ref,
            FourEyesRequest.kind == action.value,
            FourEyesRequest.status == FourEyesStatus.PENDING.value,
        )
    )
    if pending is not None:
        raise _error("already_pending", "kind")
    request = FourEyesRequest(
        kind=action.value,
        desk=staff.desk,
        status=FourEyesStatus.PENDING.value,
        requested_by=staff.id,
        object_ref=ref,
        payload=clean_payload,
        reason=text,
        created_at=clock.now(),
    )
    session.add(request)
    session.flush()
    audit_record(
        session, settings or _current_settings(), staff=staff,
        action=f"four_eyes.requested:{action.value}", object_ref=f"four_eyes:{request.id}",
        outcome="pending",
    )
    session.commit()
    return request


def pending_four_eyes(session: Session, *, staff: StaffAccount) -> list[FourEyesRequest]:
    """The requests waiting at the staff member's desk, oldest first (supervisors decide them;
    officers see what they and their colleagues asked)."""
    from gateway.desks.service import require_role

    require_role(staff, PROCESSING_ROLES)
    return list(
        session.scalars(
            sa.select(FourEyesRequest)
            .where(
                FourEyesRequest.desk == staff.desk,
                FourEyesRequest.status == FourEyesStatus.PENDING.value,
            )
            .order_by(FourEyesRequest.created_at, FourEyesRequest.id)
        )
    )


def decide_four_eyes(
    session: Session,
    settings: Settings,
    app: Flask,
    *,
    supervisor: StaffAccount,
    request_id: str,
    approve: bool,
) -> FourEyesOutcome:
    """Approve (and execute) or refuse a pending request. Refusals, nothing written:
    `forbidden` (not a supervisor), `request_not_found`, `request_decided`, `other_desk`,
    `same_person`, `request_expired`, and the action's own (`code_used`, `already_linked`,
    `no_bsn`, ..., `not_pending_activation`, `not_active`, `phone_unusable`, `same_phone`,
    `not_suspended`, ...)."""
    from gateway.app import get_policies

    if not isinstance(supervisor, StaffAccount) or not supervisor.active or (
        supervisor.role not in DECIDING_ROLES
    ):
        raise _error("forbidden")
    req_id = valid_id(request_id)
    request = (
        session.scalars(
            sa.select(FourEyesRequest).where(FourEyesRequest.id == req_id).with_for_update()
        ).one_or_none()
        if req_id is not None
        else None
    )
    if request is None:
        raise _error("request_not_found")
    if request.status != FourEyesStatus.PENDING.value:
        raise _error("request_decided")
    if request.desk != supervisor.desk:
        raise _error("other_desk")
    if request.requested_by == supervisor.id:
        raise _error("same_person")
    if not isinstance(approve, bool):
        raise _error("bad_payload", "approve")

    now = clock.now()
    request_ref = f"four_eyes:{request.id}"
    if not approve:
        request.status = FourEyesStatus.REFUSED.value
        request.decided_by = supervisor.id
        request.decided_at = now
        audit_record(
            session, settings, staff=supervisor, action=f"four_eyes.decided:{request.kind}",
            object_ref=request_ref, outcome="refused",
        )
        session.commit()
        return FourEyesOutcome(request_id=request.id, status=FourEyesStatus.REFUSED.value)

    if now - request.created_at > REQUEST_VALIDITY:
        raise _error("request_expired")
    kind = FourEyesKind(request.kind)
    policies = get_policies(app)
    account = _account_for(session, request.object_ref)
    payload = dict(request.payload or {})

    request.status = FourEyesStatus.APPROVED.value
    request.decided_by = supervisor.id
    request.decided_at = now
    audit_record(
        session, settings, staff=supervisor, action=f"four_eyes.decided:{kind.value}",
        object_ref=request_ref, outcome="approved",
    )
    account_ref = f"account:{account.id}"

    if kind is FourEyesKind.UNBLOCK_ACCOUNT:
        account.blocked_until = None
        account.failed_logins = 0
        audit_record(
            session, settings, staff=supervisor, action="account.unblocked",
            object_ref=account_ref, outcome="success",
        )
        session.commit()
        return FourEyesOutcome(request_id=request.id, status=request.status)

    if kind is FourEyesKind.LIFT_SUSPENSION:
        suspension.lift_suspension(session, settings, supervisor, account)
        session.commit()
        suspension.notify_lifted(session, app, account)
        return FourEyesOutcome(request_id=request.id, status=request.status)

    if kind is FourEyesKind.LINK_EIDAS:
        return _link_eidas(session, settings, supervisor, request, account, payload)
    if kind is FourEyesKind.REISSUE_ACTIVATION:
        return _reissue(session, settings, app, policies, supervisor, request, account, payload)
    return _change_phone(session, settings, app, policies, supervisor, request, account, payload)


def _reissue(
    session: Session,
    settings: Settings,
    app: Flask,
    policies: Policies,
    supervisor: StaffAccount,
    request: FourEyesRequest,
    account: Account,
    payload: dict[str, Any],
) -> FourEyesOutcome:
    if account.status != AccountStatus.PENDING_ACTIVATION.value:
        raise _error("not_pending_activation")
    delivery = delivery_choice(payload.get("delivery"))
    address = letter_lines(payload.get("letter_address")) if delivery == "letter" else None
    phone = usable_phone(account.phone_e164, policies, delivery) if address is None else None
    if phone is not None:
        # Before any write: a refusal leaves the request pending (the caller rolls back).
        count_activation_send(settings, app, phone=phone, delivery=delivery,
                              language=account.language, account_id=account.id)
    code, code_row = issue_activation_code(session, settings, account, delivery)
    account_ref = f"account:{account.id}"
    audit_record(
        session, settings, staff=supervisor, action="account.activation_reissued",
        object_ref=account_ref, outcome="success",
    )
    letter_pdf = None
    if address is not None:
        from gateway.desks.letters import activation_letter

        letter_pdf = activation_letter(
            code=code, address=address, expires_at=code_row.expires_at, issuer=settings.issuer,
            desk=supervisor.desk,
        )
        audit_record(
            session, settings, staff=supervisor, action="activation_code.delivered",
            object_ref=account_ref, outcome="letter",
        )
    session.commit()
    delivered: bool | None = None
    if phone is not None:
        delivered = send_activation_code(
            session, settings, app, account=account, phone=phone, delivery=delivery, code=code,
            code_row=code_row,
        )
        audit_record(
            session, settings, staff=supervisor, action="activation_code.delivered",
            object_ref=account_ref, outcome=f"{delivery}:{'sent' if delivered else 'failed'}",
        )
        session.commit()
    return FourEyesOutcome(
        request_id=request.id, status=request.status, letter_pdf=letter_pdf, delivered=delivered
    )


def _link_eidas(
    session: Session,
    settings: Settings,
    supervisor: StaffAccount,
    request: FourEyesRequest,
    account: Account,
    payload: dict[str, Any],
) -> FourEyesOutcome:
    code_id = payload.get("link_code_id")
    if not isinstance(code_id, str):
        raise _error("bad_payload", "link_code")
    try:
        eidas_links.execute_link(
            session, settings, account=account, code_id=code_id, supervisor_id=supervisor.id,
            request_id=request.id,
        )
    except LinkError as exc:
        raise _link_error(exc) from None
    audit_record(
        session, settings, staff=supervisor, action="eidas_link.code_used",
        object_ref=f"eidas_link_code:{code_id}", outcome="success",
    )
    audit_record(
        session, settings, staff=supervisor, action="account.eidas_linked",
        object_ref=f"account:{account.id}", outcome="success",
    )
    session.commit()
    return FourEyesOutcome(request_id=request.id, status=request.status)


_NOTICE = {
    "en": (
        "Abroad Gateway: the phone number of your account was changed at a desk. If you did"
        " not ask for this, contact a desk at once via {issuer}."
    ),
    "nl": (
        "Abroad Gateway: het telefoonnummer van uw account is bij een balie gewijzigd. Heeft u"
        " dit niet gevraagd? Neem dan direct contact op met een balie via {issuer}."
    ),
}


def _change_phone(
    session: Session,
    settings: Settings,
    app: Flask,
    policies: Policies,
    supervisor: StaffAccount,
    request: FourEyesRequest,
    account: Account,
    payload: dict[str, Any],
) -> FourEyesOutcome:
    from gateway.sms.dispatch import DeliveryFailed, get_dispatcher
    from gateway.sms.messages import message_language
    from gateway.sms.purposes import Purpose
    from gateway.sms.service import LimitExceeded, SendingUnavailable, get_sms_service

    if account.status != AccountStatus.ACTIVE.value:
        raise _error("not_active")
    raw = payload.get("phone")
    if not isinstance(raw, str):
        raise _error("bad_payload", "phone")
    try:
        new_phone = parse_phone(raw, policies.sms)
    except PhoneRejected as exc:
        raise DeskError("phone_unusable", exc.message, "phone") from None
    if new_phone.e164 == account.phone_e164:
        raise _error("same_phone", "phone")
    _check_room(session, policies, account, new_phone.e164)
    old_e164, old_channel = account.phone_e164, account.phone_channel
    notice_text = _NOTICE[message_language(account.language)].format(
        issuer=settings.issuer.rstrip("/")
    )
    notice_counted = False
    if old_e164:
        # Counted against the SMS abuse limits before anything is written: a desk must not
        # move a number without its owner hearing of it, so a refused notice refuses the
        # change and the request stays pending (the caller rolls back). No per-IP limit: the
        # supervisor is authenticated and shares the desk's address with every colleague.
        try:
            old_phone = parse_phone(old_e164, policies.sms)
        except PhoneRejected:
            # It could not receive a code either, and an uncounted SMS would bypass the limits.
            old_phone = None
        if old_phone is not None:
            try:
                get_sms_service(app).count_message(
                    phone=old_phone, text=notice_text, account_id=account.id
                )
            except (LimitExceeded, SendingUnavailable) as exc:
                log.warning("phone change notice refused by the SMS limits (%s)",
                            type(exc).__name__)
                raise _error("notice_refused", "phone") from None
            notice_counted = True
    account.phone_e164 = new_phone.e164
    account.phone_channel = new_phone.channel.value
    account.phone_verified_at = None
    account_ref = f"account:{account.id}"
    audit_record(
        session, settings, staff=supervisor, action="account.phone_changed",
        object_ref=account_ref, outcome="success",
    )
    session.commit()

    code_sent = True
    try:
        get_sms_service(app).send_code(
            purpose=Purpose.PHONE_CHANGE, flow_id=account_ref, phone=new_phone,
            language=account.language, account_id=account.id,
        )
    except (PhoneRejected, LimitExceeded, SendingUnavailable) as exc:
        log.warning("phone change code not sent (%s)", type(exc).__name__)
        code_sent = False
    audit_record(
        session, settings, staff=supervisor, action="phone_change.code_sent",
        object_ref=account_ref, outcome="sent" if code_sent else "failed",
    )
    session.commit()

    notice_sent: bool | None = None
    if old_e164 and notice_counted:
        try:
            get_dispatcher(app).send(
                session, to=old_e164, channel=old_channel or "sms", text=notice_text,
                purpose="phone_change_notice", idempotency_key=f"phone-notice:{request.id}",
            )
            notice_sent = True
        except DeliveryFailed:
            log.warning("phone change notice not delivered: every provider failed")
            notice_sent = False
        audit_record(
            session, settings, staff=supervisor, action="phone_change.notice_sent",
            object_ref=account_ref, outcome="sent" if notice_sent else "failed",
        )
        session.commit()
    return FourEyesOutcome(
        request_id=request.id, status=request.status, delivered=code_sent
    )


def _current_settings() -> Settings:
    from gateway.app import get_settings

    return get_settings()
