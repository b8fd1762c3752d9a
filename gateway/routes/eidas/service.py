"""The eIDAS route's glue: starting a login at the node, and turning its answer into the end
of the login flow (`gateway.flows.login.complete_external` / `fail_external`).

What this module adds to `response.check_response` (which needs no shared state):

- replay: the Response ID and the Assertion ID are remembered in the shared store
  (`add_once`, for `response.REPLAY_TTL`), so the same answer is accepted once across every
  instance;
- InResponseTo: it must name a pending request (`pending`), and that request must belong to
  a flow of THIS browser, in state `external`, on this route; the pending request is consumed
  atomically, so a second or late answer is refused;
- the LoA reached must be at least the one asked for (eIDAS low -> midden, substantial ->
  substantieel, high -> hoog), and the eID must come from the member state the person chose.

A refused answer changes nothing: no session, no flow move, no row. The person sees a page in
their language (the reason is logged only) and can start again from the flow's page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from flask import Flask, current_app, render_template, url_for
from werkzeug.wrappers import Response as BaseResponse

from gateway import clock
from gateway.i18n import lazy_gettext
from gateway.idp.saml.crypto import CryptoBackendXmlSecInProcess
from gateway.levels import Level
from gateway.routes.eidas import pending, saml
from gateway.routes.eidas.config import EidasConfig
from gateway.routes.eidas.node import NodeMetadataCache, NodeUnavailable
from gateway.routes.eidas.response import (
    REPLAY_TTL,
    CheckedAssertion,
    CheckedResponse,
    Expected,
    Refused,
    check_response,
)
from gateway.routes.eidas.spkeys import SpKeys, load_or_create
from gateway.settings import Settings
from gateway.store import get_store
from gateway.web import allow_form_action

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.flows.login import LoginFlow
    from gateway.routes.eidas import EidasRoute

log = logging.getLogger(__name__)

EXTENSION: Final = "gateway.routes.eidas"
#: Reasons this module adds to response.R_*.
R_REPLAY: Final = "replay"
R_REPLAY_ASSERTION: Final = "replay-assertion"
R_RELAY_STATE: Final = "relay-state"
R_FLOW: Final = "flow"
R_LOA_BELOW: Final = "loa-below-request"
R_COUNTRY: Final = "country"
R_LATE: Final = "late"
#: An answer to an older request of a flow that has since sent a newer one.
R_SUPERSEDED: Final = "superseded"
R_UNSOLICITED: Final = "unsolicited"
#: RelayState is echoed by the node; SAML Bindings 3.5.3 caps it at 80 bytes.
RELAY_STATE_BYTES: Final = 24

NODE_UNAVAILABLE = lazy_gettext(
    "Logging in with a European eID is not available at the moment. Try again later, or "
    "choose another way to log in."
)
CHOOSE_COUNTRY = lazy_gettext("Choose the country that issued your eID.")


@dataclass
class EidasState:
    """What one app's eIDAS route keeps (app.extensions[EXTENSION])."""

    config: EidasConfig
    issuer: str
    keys: SpKeys
    node: NodeMetadataCache
    backend: CryptoBackendXmlSecInProcess

    @property
    def entity_id(self) -> str:
        return saml.entity_id(self.issuer)

    @property
    def acs_url(self) -> str:
        return saml.acs_url(self.issuer)


def init_app(app: Flask, config: EidasConfig) -> EidasState:
    from gateway.app import get_settings

    settings: Settings = get_settings(app)
    keys = load_or_create(settings.instance_dir, saml.entity_id(settings.issuer))
    backend = CryptoBackendXmlSecInProcess()
    if not config.node_metadata_signing_certificates:
        # Allowed in dev only (EidasRoute.configure): TLS alone vouches for the node's keys.
        log.warning("eIDAS node metadata is used without checking its signature (dev)")
    state = EidasState(
        config=config,
        issuer=settings.issuer,
        keys=keys,
        node=NodeMetadataCache(
            config.node_metadata_url, keys.signing.key_path.parent / "node-certs",
            max_age=timedelta(seconds=config.metadata_cache_seconds),
            timeout=config.metadata_timeout_seconds,
            trust=config.node_metadata_signing_certificates, backend=backend,
        ),
        backend=backend,
    )
    app.extensions[EXTENSION] = state
    app.jinja_env.globals["eidas_countries"] = _countries
    return state


def get_state(app: Flask | None = None) -> EidasState:
    state: EidasState = (app or current_app).extensions[EXTENSION]
    return state


def _countries() -> list[tuple[str, str]]:
    """(code, name in the page's language) of the configured member states, by name."""
    from babel import Locale

    from gateway.i18n import current_language

    territories = Locale.parse(current_language()).territories
    names = {"EL": territories.get("GR", "EL")}
    found = [(code, names.get(code) or territories.get(code, code))
             for code in get_state().config.countries]
    return sorted(found, key=lambda item: item[1])


def subject_key(settings: Settings, person_identifier: str) -> str:
    """The contract's subject key: stable per person, never the identifier itself."""
    digest = hmac.new(settings.derive_key("eidas-subject"), person_identifier.encode("utf-8"),
                      hashlib.sha256).hexdigest()
    return "eidas:" + digest[:64]


# --- start ------------------------------------------------------------------------------


def start(route: EidasRoute, flow: LoginFlow, form: Mapping[str, str]) -> BaseResponse:
    """Send the browser to the node with a signed AuthnRequest (HTTP-POST binding)."""
    from gateway.flows.routes import RouteInputError, route_level

    state = get_state()
    country = (form.get("country") or "").strip().upper()
    if country not in state.config.countries:
        raise RouteInputError(CHOOSE_COUNTRY)
    level = route_level(flow, route)
    try:
        node = state.node.get()
    except NodeUnavailable:
        raise RouteInputError(NODE_UNAVAILABLE) from None
    now = clock.now()
    request_id = saml.new_message_id()
    xml = saml.build_authn_request(
        saml.AuthnRequestSpec(
            issuer=state.issuer, destination=node.sso_url, level=level,
            provider_name=state.config.provider_name, now=now, request_id=request_id,
        ),
        state.keys, state.backend,
    )
    relay_state = secrets.token_urlsafe(RELAY_STATE_BYTES)
    pending.remember(
        get_store(),
        pending.PendingRequest(request_id=request_id, flow_id=flow.id, level=int(level),
                               country=country, relay_state=relay_state),
        flow.expires_at - now,
    )
    allow_form_action(node.sso_url)
    fields = [
        ("SAMLRequest", base64.b64encode(xml).decode("ascii")),
        ("RelayState", relay_state),
        ("country", country),
    ]
    body = render_template(
        "eidas/post.html", action=node.sso_url, fields=fields,
        message=lazy_gettext("You are being sent to the login service of your country."),
    )
    return BaseResponse(body, status=200, mimetype="text/html")


# --- the answer ---------------------------------------------------------------------------


class AnswerRefused(Exception):
    def __init__(self, reason: str, flow: LoginFlow | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.flow = flow


@dataclass(frozen=True)
class Answer:
    """A checked answer that belongs to a flow of this browser."""

    flow: LoginFlow
    checked: CheckedResponse


def check_answer(saml_response: str, relay_state: str) -> Answer:
    """Everything short of ending the flow; AnswerRefused (reason) or NodeUnavailable."""
    from gateway import db
    from gateway.flows import login

    state = get_state()
    node = state.node.cached() or state.node.get()
    expected = Expected(
        sp_entity_id=state.entity_id, acs_url=state.acs_url, node=node, keys=state.keys,
        require_signed_response=state.config.require_signed_response,
        require_encrypted_assertion=state.config.require_encrypted_assertions,
    )
    try:
        checked = check_response(saml_response, expected, state.backend, clock.now())
    except Refused as exc:
        raise AnswerRefused(exc.reason) from None
    store = get_store()
    if not store.add_once(_seen("response", checked.response_id), REPLAY_TTL):
        raise AnswerRefused(R_REPLAY)
    if checked.assertion is not None and not store.add_once(
        _seen("assertion", checked.assertion.assertion_id), REPLAY_TTL
    ):
        raise AnswerRefused(R_REPLAY_ASSERTION)
    sent = pending.peek(store, checked.in_response_to)
    if sent is None:
        raise AnswerRefused(R_UNSOLICITED)
    s = db.session()
    flow = login.get_flow(s, sent.flow_id)
    if flow is None or not login.bound_to_browser(flow.id):
        raise AnswerRefused(R_FLOW)
    if flow.flow_state is not login.FlowState.EXTERNAL or flow.route != "eidas":
        raise AnswerRefused(R_LATE, flow)
    if not pending.is_current(store, sent):
        raise AnswerRefused(R_SUPERSEDED, flow)
    if not secrets.compare_digest(relay_state.encode(), sent.relay_state.encode()):
        raise AnswerRefused(R_RELAY_STATE, flow)
    assertion = checked.assertion
    if assertion is not None:
        if assertion.level < Level(sent.level):
            raise AnswerRefused(R_LOA_BELOW, flow)
        if assertion.country != sent.country:
            raise AnswerRefused(R_COUNTRY, flow)
    # Last: one answer per request, whatever runs in parallel.
    if not pending.take(store, checked.in_response_to):
        raise AnswerRefused(R_LATE, flow)
    return Answer(flow, checked)


def _seen(kind: str, message_id: str) -> str:
    return f"eidas:seen:{kind}:" + hashlib.sha256(message_id.encode("utf-8")).hexdigest()


def identity_for(settings: Settings, flow: LoginFlow, assertion: CheckedAssertion) -> Any:
    """The RouteIdentity of a checked assertion (the level capped to what the request takes:
    a "high" eID satisfies a request for substantieel only)."""
    from gateway import db
    from gateway.flows.routes import acceptable
    from gateway.flows.types import RouteIdentity

    level = assertion.level
    if not acceptable(flow.request, flow.level, level):
        level = max((lv for lv in (Level.MIDDEN, Level.SUBSTANTIEEL, Level.HOOG)
                     if lv <= assertion.level and acceptable(flow.request, flow.level, lv)),
                    default=level)
    key = subject_key(settings, assertion.person_identifier)
    return RouteIdentity(
        subject_key=key,
        level=level,
        amr=() if assertion.level <= Level.MIDDEN else ("mfa",),
        attributes=assertion.attributes,
        account_id=_linked_account(db.session(), key),
        auth_time=assertion.authn_instant,
    )


def _linked_account(s: Any, key: str) -> str | None:
    try:
        from gateway.desks.eidas_links import linked_account_id
    except ImportError:  # pragma: no cover - linking is an optional part (issue 8 item 4)
        return None
    result: str | None = linked_account_id(s, key)
    return result


def flow_url(flow: LoginFlow) -> str:
    return url_for("login.flow", flow_id=flow.id)
