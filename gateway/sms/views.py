"""Delivery reports from the SMS providers: `/sms/dlr/kannel` and `/sms/dlr/http`.

Each report URL was built by us (`gateway.sms.providers.base.DlrUrls`) and carries our message
id and `token` = HMAC(derive_key("sms-dlr"), id). The token is checked in constant time before
anything else, so nobody can forge a report (or learn which message ids exist) without the key.
The endpoints are exempt from CSRF: the caller is a provider, authenticated by the token.

Kannel statuses (dlr-mask 31; Kannel user guide, "Delivery reports"): 1 delivered to the phone,
2 not deliverable, 4 queued on the SMSC, 8 accepted by the SMSC, 16 rejected by the SMSC. A
report never moves a message backwards (`gateway.sms.models.ALLOWED`): a late "accepted" after
"delivered" is ignored.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, Response, abort, request

from gateway.db import session as db_session
from gateway.sms.dispatch import DELIVERY_REPORTS, get_dispatcher
from gateway.sms.models import Status
from gateway.sms.providers.base import DLR_KEY_PURPOSE, check_dlr_token
from gateway.sms.providers.http import HttpProvider

bp = Blueprint("sms_dlr", __name__, url_prefix="/sms/dlr")

KANNEL_STATUSES: dict[int, Status] = {
    1: Status.DELIVERED,
    2: Status.UNDELIVERABLE,
    4: Status.SENT,
    8: Status.SENT,
    16: Status.FAILED,
}

_MESSAGE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOKEN = re.compile(r"[0-9a-f]{64}")


def _plain(text: str, status: int = 200) -> Response:
    return Response(text + "\n", status=status, mimetype="text/plain")


def _authenticated_id(provider: str) -> str:
    message_id = request.args.get("id", "")
    token = request.args.get("token", "")
    if not _MESSAGE_ID.fullmatch(message_id) or not _TOKEN.fullmatch(token):
        DELIVERY_REPORTS.labels(provider=provider, status="forged").inc()
        abort(_plain("malformed report", 400))
    key = get_dispatcher().settings.derive_key(DLR_KEY_PURPOSE)
    if not check_dlr_token(key, message_id, token):
        DELIVERY_REPORTS.labels(provider=provider, status="forged").inc()
        abort(_plain("forbidden", 403))
    return message_id


def _apply(message_id: str, status: Status, provider: str) -> Response:
    s = db_session()
    get_dispatcher().apply_report(s, message_id, status, provider)
    s.commit()
    return _plain("ok")


@bp.route("/kannel", methods=["GET", "POST"])
def kannel_report() -> Response:
    message_id = _authenticated_id("kannel")
    raw = request.args.get("status", "")
    status = KANNEL_STATUSES.get(int(raw)) if raw.isdigit() and len(raw) <= 3 else None
    if status is None:
        DELIVERY_REPORTS.labels(provider="kannel", status="ignored").inc()
        return _plain("unknown status", 400)
    return _apply(message_id, status, "kannel")


@bp.route("/http", methods=["GET", "POST"])
def http_report() -> Response:
    message_id = _authenticated_id("http")
    provider = get_dispatcher().provider("http")
    if not isinstance(provider, HttpProvider):
        abort(404)
    body: Any = None
    if request.method == "POST":
        body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    status = provider.report_status(request.args, body)
    if status is None:
        DELIVERY_REPORTS.labels(provider="http", status="ignored").inc()
        return _plain("unknown status", 400)
    return _apply(message_id, Status(status), "http")


def init_app(app: Flask) -> None:
    from gateway.web.csrf import csrf_exempt

    app.register_blueprint(csrf_exempt(bp))  # type: ignore[type-var]
