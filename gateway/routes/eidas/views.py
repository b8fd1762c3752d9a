"""The eIDAS route's HTTP endpoints (SAML 2.0 Bindings 3.5, HTTP-POST; Profiles 4.1.4).

- `GET /eidas/metadata`: the SP's signed metadata (the entity ID is this URL).
- `POST /eidas/acs`: the node's Response. The session cookie is SameSite=Lax, so a browser
  does not send it with a cross-site POST from the node: when the answer arrives without the
  session, the page posts the same fields once more to this address from our own origin
  (`continue=1`), and then the cookie comes along. Every refusal is a page in the person's
  language with a 4xx status, never a stack trace; nothing is stored for it. A good answer
  gets a page that moves on to the login flow by itself (`eidas/continue.html` says why that
  is not an HTTP redirect).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from flask import Blueprint, Flask, Response, render_template, request, url_for
from flask import session as flask_session
from werkzeug.wrappers import Response as BaseResponse

from gateway import clock
from gateway.i18n import lazy_gettext
from gateway.routes.eidas import saml, service
from gateway.routes.eidas.node import NodeUnavailable
from gateway.store import StoreUnavailable
from gateway.web import csrf_exempt, no_store

log = logging.getLogger(__name__)

bp = Blueprint(
    "eidas", __name__, template_folder="templates", static_folder="static",
    static_url_path="/eidas/static",
)

#: The largest form field accepted (a Response with an encrypted assertion is ~20 KiB);
#: the app's MAX_CONTENT_LENGTH bounds the whole body before this.
MAX_FIELD: Final = 200 * 1024
MAX_RELAY_STATE: Final = 80

REFUSED_TITLE = lazy_gettext("Your European login could not be used")
REFUSED_TEXT = lazy_gettext(
    "The answer from the login service of your country could not be checked, so you are not "
    "logged in. Nothing was saved. Start again, or choose another way to log in."
)
UNKNOWN_TEXT = lazy_gettext(
    "This answer does not belong to a login you started in this browser, or it came too "
    "late. You are not logged in and nothing was saved. Go back to the website you came from "
    "and log in again."
)
UNAVAILABLE_TITLE = lazy_gettext("European login not available")
CANCELLED_TITLE = lazy_gettext("You stopped logging in")
CANCELLED_TEXT = lazy_gettext(
    "You stopped logging in at the login service of your country. You are not logged in. "
    "Go back to the service to try again or to choose another way."
)
FAILED_TITLE = lazy_gettext("Logging in did not succeed")
FAILED_TEXT = lazy_gettext(
    "The login service of your country could not log you in. You are not logged in. Go back "
    "to the service to try again or to choose another way."
)


def _page(status: int, title: Any, message: Any, *, flow_url: str | None = None,
          resume_url: str | None = None) -> Response:
    body = render_template("eidas/message.html", title=title, message=message,
                           flow_url=flow_url, resume_url=resume_url)
    return Response(body, status=status, mimetype="text/html")


@bp.get(saml.METADATA_PATH)
def metadata() -> Response:
    state = service.get_state()
    body = saml.sp_metadata(state.issuer, state.keys, state.backend, clock.now())
    response = Response(body, mimetype="application/samlmetadata+xml")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


# The Response authenticates itself by the node's signature and the pending request, not by a
# form token: the node cannot know our CSRF token.
@bp.post(saml.ACS_PATH)
@csrf_exempt
@no_store
def acs() -> BaseResponse:
    from gateway.flows import login

    saml_response = request.form.get("SAMLResponse", type=str)
    relay_state = request.form.get("RelayState", "", type=str)
    if not saml_response or len(saml_response) > MAX_FIELD or len(relay_state) > MAX_RELAY_STATE:
        log.warning("eIDAS response refused: %s", "form")
        return _page(400, REFUSED_TITLE, UNKNOWN_TEXT)
    if request.form.get("continue") != "1" and not flask_session.get(login.SESSION_FLOWS_KEY):
        # Arrived without our session cookie (a cross-site POST): post again, same-site.
        fields = [("SAMLResponse", saml_response), ("RelayState", relay_state),
                  ("continue", "1")]
        body = render_template(
            "eidas/post.html", action=url_for("eidas.acs"), fields=fields,
            message=lazy_gettext("You are coming back from the login service of your country."),
        )
        return Response(body, status=200, mimetype="text/html")
    try:
        answer = service.check_answer(saml_response, relay_state)
    except service.AnswerRefused as exc:
        log.warning("eIDAS response refused: %s", exc.reason)
        flow = exc.flow
        if flow is None or exc.reason == service.R_LATE:
            return _page(400, REFUSED_TITLE, UNKNOWN_TEXT)
        return _page(400, REFUSED_TITLE, REFUSED_TEXT, flow_url=service.flow_url(flow))
    except NodeUnavailable:
        return _page(503, UNAVAILABLE_TITLE, service.NODE_UNAVAILABLE)
    except StoreUnavailable:
        log.warning("eIDAS response refused: %s", "store unavailable")
        return _page(503, UNAVAILABLE_TITLE, service.NODE_UNAVAILABLE)
    return _finish(answer)


def _finish(answer: service.Answer) -> BaseResponse:
    from gateway import db
    from gateway.app import get_policies, get_settings
    from gateway.flows import login
    from gateway.flows.types import ErrorCode
    from gateway.web.sessions import regenerate_session

    s = db.session()
    flow = answer.flow
    checked = answer.checked
    try:
        if checked.assertion is None:
            cancelled = checked.outcome == "cancelled"
            login.fail_external(s, flow, ErrorCode.CANCELLED if cancelled else ErrorCode.FAILED)
            s.commit()
            log.info("eIDAS login ended at the node: %s", checked.outcome)
            return _page(
                200, CANCELLED_TITLE if cancelled else FAILED_TITLE,
                CANCELLED_TEXT if cancelled else FAILED_TEXT,
                resume_url=login.resume_location(flow),
            )
        identity = service.identity_for(get_settings(), flow, checked.assertion)
        login.complete_external(s, get_settings(), get_policies(), flow, identity)
    except (login.IllegalTransition, login.FlowExpired):
        s.commit()  # an expiry the transition recorded
        log.warning("eIDAS response refused: %s", "late-transition")
        return _page(400, REFUSED_TITLE, UNKNOWN_TEXT)
    s.commit()
    regenerate_session()
    body = render_template("eidas/continue.html", location=service.flow_url(flow))
    return Response(body, status=200, mimetype="text/html")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
