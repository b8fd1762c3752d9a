"""The SAML IdP's endpoints (SAML 2.0 Bindings 3.4-3.6, Profiles 4.1 and 4.4) as a blueprint.

- `GET /saml/idp/metadata`: signed metadata (gateway.idp.saml.idp).
- `GET|POST /saml/idp/sso`: AuthnRequest over HTTP-Redirect or HTTP-POST. Checked before
  anything else happens: size (MAX_MESSAGE_BYTES, also after inflating), XML without DTD or
  entities, schema, a registered issuer, the signature (required when the SP's metadata says
  AuthnRequestsSigned, always checked when present; Redirect signatures over the query string
  as received, Bindings 3.4.4.1), Destination, IssueInstant within MAX_CLOCK_SKEW, the request
  ID unseen (replay cache in the shared store), RelayState at most 80 bytes (Bindings
  3.4.3), and an AssertionConsumerService from the SP's metadata. Any of those failing gives
  an error page: nothing is ever sent to an address the metadata does not name, and nothing
  is answered to an SP whose request could not be authenticated. Past those checks, errors go
  to the SP as SAML status codes (Responder/NoAuthnContext, Responder/NoPassive, ...).
- `GET /saml/idp/sso/resume`: the login flow's result turned into a Response, delivered by
  HTTP-POST (a form that submits itself; a button without JavaScript) or HTTP-Artifact.
- `POST /saml/idp/artifact`: ArtifactResolve over SOAP (Bindings 3.6.5), signed by the SP.
- `GET|POST /saml/idp/slo`: LogoutRequest over HTTP-Redirect (this browser's SSO session) and
  SOAP (the session the NameID was issued in), ending the SSO session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import zlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final
from urllib.parse import unquote_plus, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Blueprint, Flask, Response, redirect, render_template, request, url_for
from lxml import etree
from saml2 import BINDING_HTTP_REDIRECT
from saml2.sigver import SignatureError
from saml2.xml.schema import XMLSchemaError
from saml2.xml.schema import validate as validate_schema
from werkzeug.wrappers import Response as BaseResponse

from gateway import clock
from gateway.app import get_settings
from gateway.db import session as db_session
from gateway.flows.types import AuthnError, AuthnResult, RpProtocol, RpRequest
from gateway.i18n import lazy_gettext
from gateway.idp.saml import assertions, attributes, idp, registry
from gateway.levels import Level
from gateway.store import get_store
from gateway.web import allow_form_action, csrf_exempt, no_store
from gateway.web.logs import request_id

log = logging.getLogger(__name__)

bp = Blueprint(
    "saml", __name__, template_folder="templates", static_folder="static",
    static_url_path="/saml/static",
)

#: Largest SAML message accepted, before and after inflating (AuthnRequests are ~2 KiB).
MAX_MESSAGE_BYTES: Final = 64 * 1024
#: SAML 2.0 Bindings 3.4.3 / 3.5.3: RelayState MUST NOT exceed 80 bytes.
MAX_RELAY_STATE: Final = 80
#: A request older than this (plus skew) is refused, and its ID is remembered this long.
MAX_REQUEST_AGE: Final = timedelta(minutes=5)
REPLAY_TTL: Final = MAX_REQUEST_AGE + 2 * idp.MAX_CLOCK_SKEW
#: SOAP logout finds the SSO session of a NameID through the store; kept as long as an SSO
#: session can live at most (policies/accounts session.absolute_hours is 12 by default).
NAMEID_SESSION_TTL: Final = timedelta(hours=12)
#: Redirect-binding signature algorithms accepted (SHA-1 is not).
REDIRECT_SIG_ALGS: Final = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": hashes.SHA256,
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": hashes.SHA512,
}

SAMLP_NS: Final = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML_NS: Final = "urn:oasis:names:tc:SAML:2.0:assertion"
SOAP_NS: Final = assertions.SOAP_NS

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
    dtd_validation=False,
)

_BAD_REQUEST = (
    lazy_gettext("This login request is not valid"),
    lazy_gettext(
        "The website that sent you here made an error in its request, so you cannot log in "
        "this way. Go back to that website and try again; if it keeps happening, tell them."
    ),
)


class Refused(Exception):
    """The message cannot be trusted or answered; the reason is for the log, not the user."""


# --- the login flow's entry points (tests may replace them) ---------------------------------


def start_login(rp_request: RpRequest) -> BaseResponse:
    from gateway.flows import login

    return login.start_login(rp_request)


def finish_login(flow_id: str) -> tuple[RpRequest, AuthnResult | AuthnError] | None:
    from gateway.flows import login

    flow = login.get_flow(db_session(), flow_id)
    if flow is None:
        return None
    rp_request = flow.request
    try:
        return rp_request, login.finish(flow_id)
    except login.LoginError as exc:
        return (rp_request, exc.error) if exc.error is not None else None


def has_sso_session() -> bool:
    from gateway.app import get_policies
    from gateway.flows import sessions

    return sessions.current_sso(db_session(), get_settings(), get_policies().accounts.session) \
        is not None


def reachable_levels() -> frozenset[Level]:
    from gateway.flows.routes import reachable_levels as reachable

    return reachable()


# --- decoding and checking messages ---------------------------------------------------------


def error_page(status: int = 400) -> Response:
    title, message = _BAD_REQUEST
    body = render_template(
        "error.html", code=status, title=title, message=message, reference=request_id()
    )
    return Response(body, status=status, mimetype="text/html")


def decode(value: str, *, deflated: bool) -> bytes:
    """Base64 (and for HTTP-Redirect, DEFLATE) decoding with a bound on both sizes."""
    if len(value) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
        raise Refused("message too large")
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Refused("not base64") from None
    if not deflated:
        return raw
    inflater = zlib.decompressobj(-15)
    try:
        data = inflater.decompress(raw, MAX_MESSAGE_BYTES + 1)
    except zlib.error:
        raise Refused("not DEFLATE") from None
    if len(data) > MAX_MESSAGE_BYTES or inflater.unconsumed_tail:
        raise Refused("message too large after inflating")  # a deflate bomb stops here
    return data


def parse_xml(data: bytes) -> etree._Element:
    if len(data) > MAX_MESSAGE_BYTES:
        raise Refused("message too large")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError:
        raise Refused("not well-formed XML") from None
    tree = root.getroottree()
    if getattr(tree.docinfo, "doctype", "") or tree.docinfo.internalDTD is not None:
        raise Refused("DOCTYPE not allowed")
    if any(isinstance(node, etree._Entity | etree._ProcessingInstruction) for node in root.iter()):
        raise Refused("entities and processing instructions not allowed")
    try:
        validate_schema(data.decode("utf-8"))
    except (XMLSchemaError, UnicodeDecodeError, ValueError):
        raise Refused("not valid against the SAML schema") from None
    return root


def issuer_of(root: etree._Element) -> str:
    element = root.find(f"{{{SAML_NS}}}Issuer")
    text = (element.text or "").strip() if element is not None else ""
    if not text:
        raise Refused("no Issuer")
    return text


def check_timing_and_replay(root: etree._Element, sp_entity_id: str) -> str:
    from saml2.time_util import str_to_time

    message_id = root.get("ID") or ""
    if not 0 < len(message_id) <= 256:
        raise Refused("bad ID")
    try:
        issued = str_to_time(root.get("IssueInstant") or "")
    except (ValueError, TypeError):
        raise Refused("bad IssueInstant") from None
    import calendar

    issued_at = calendar.timegm(issued)
    now = clock.now().timestamp()
    skew = idp.MAX_CLOCK_SKEW.total_seconds()
    if issued_at > now + skew or issued_at < now - skew - MAX_REQUEST_AGE.total_seconds():
        raise Refused("IssueInstant outside the accepted window")
    key = "saml:seen:" + hashlib.sha256(
        sp_entity_id.encode() + b"\x00" + message_id.encode()
    ).hexdigest()
    if not get_store().add_once(key, REPLAY_TTL):
        raise Refused("replayed request")
    return message_id


def check_destination(root: etree._Element, path: str) -> None:
    expected = idp.endpoint(get_settings(), path)
    if root.get("Destination") != expected:
        raise Refused("wrong or missing Destination")


def _raw_query_params() -> dict[str, str]:
    """The query's parameters as sent (still URL-encoded): a Redirect signature covers the
    bytes the SP produced, whatever its URL-encoding choices (Bindings 3.4.4.1)."""
    raw = request.query_string.decode("ascii", "replace")
    params: dict[str, str] = {}
    for part in raw.split("&"):
        name, _, value = part.partition("=")
        if name in params:
            raise Refused("parameter given twice")
        params[name] = value
    return params


def verify_redirect_signature(kind: str, sp: registry.SpMetadata) -> bool:
    """Check the query-string signature; False when there is none."""
    raw = _raw_query_params()
    if "Signature" not in raw:
        return False
    sig_alg = unquote_plus(raw.get("SigAlg", ""))
    if sig_alg not in REDIRECT_SIG_ALGS:
        raise Refused("signature algorithm not allowed")
    signed = f"{kind}={raw[kind]}"
    if "RelayState" in raw:
        signed += f"&RelayState={raw['RelayState']}"
    signed += f"&SigAlg={raw['SigAlg']}"
    try:
        signature = base64.b64decode(unquote_plus(raw["Signature"]), validate=True)
    except (binascii.Error, ValueError):
        raise Refused("signature not base64") from None
    for cert in sp.signing_certificates:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(
                signature, signed.encode("ascii"), padding.PKCS1v15(), REDIRECT_SIG_ALGS[sig_alg]()
            )
            return True
        except InvalidSignature:
            continue
    raise Refused("signature does not verify")


def _binding_value(name: str) -> tuple[str, str | None, str] | None:
    """(binding, RelayState, encoded message) of the request, or None without a message."""
    if request.method == "GET":
        value = request.args.get(name)
        binding = registry.BINDING_REDIRECT
        relay_state = request.args.get("RelayState")
    else:
        value = request.form.get(name)
        binding = registry.BINDING_POST
        relay_state = request.form.get("RelayState")
    if value is None:
        return None
    return binding, relay_state, value


def check_signed(
    server: Any, xml: bytes, root: etree._Element, binding: str, kind: str, msgtype: str,
    sp: registry.SpMetadata, *, required: bool,
) -> None:
    """Enforce the signature rules for a message of `sp` (see the module docstring)."""
    enveloped = root.find("{http://www.w3.org/2000/09/xmldsig#}Signature") is not None
    if binding == registry.BINDING_REDIRECT:
        if enveloped:
            raise Refused("HTTP-Redirect messages carry no XML signature")  # Bindings 3.4.4.1
        if not verify_redirect_signature(kind, sp) and required:
            raise Refused("signature required")
        return
    if not enveloped:
        if required:
            raise Refused("signature required")
        return
    try:
        server.sec.correctly_signed_message(xml.decode("utf-8"), msgtype, must=True)
    except (SignatureError, Exception) as exc:  # pysaml2 raises many kinds; all mean "no"
        raise Refused(f"signature does not verify ({type(exc).__name__})") from None


# --- RequestedAuthnContext -----------------------------------------------------------------


def requested_levels(root: etree._Element) -> tuple[tuple[Level, ...], bool] | None:
    """Acceptable levels (preferred first) and whether they are essential; None when the
    request names only contexts this IdP does not know (NoAuthnContext).

    SAML 2.0 Core 3.3.2.2.1: exact (default), minimum, maximum, better. A class ref is one
    of the levels' AuthnContextClassRefs or an eIDAS LoA URI (shared/INTERFACE.md, "eIDAS LoA
    accepted as request": low = midden, substantial = substantieel, high = hoog); the answer
    always carries the level's AuthnContextClassRef.
    """
    element = root.find(f"{{{SAMLP_NS}}}RequestedAuthnContext")
    if element is None:
        return tuple(Level), False
    comparison = element.get("Comparison") or "exact"
    refs = [(e.text or "").strip() for e in element.findall(f"{{{SAML_NS}}}AuthnContextClassRef")]
    named = [lv for lv in (Level.from_context_class(r) or Level.from_eidas_loa(r) for r in refs)
             if lv is not None]
    if not named:
        return None
    if comparison == "exact":
        levels = tuple(dict.fromkeys(named))
    elif comparison == "minimum":
        levels = tuple(lv for lv in Level if lv >= min(named))
    elif comparison == "better":
        levels = tuple(lv for lv in Level if lv > min(named))
    elif comparison == "maximum":
        levels = tuple(sorted((lv for lv in Level if lv <= max(named)), reverse=True))
    else:
        return None
    return (levels, True) if levels else None


def _bool(value: str | None) -> bool:
    return (value or "").strip() in ("true", "1")


# --- SSO ------------------------------------------------------------------------------------


@bp.get("/saml/idp/metadata")
def metadata() -> Response:
    from gateway.keys import get_keys

    server = idp.get_server()
    body = idp.metadata_xml(get_settings(), get_keys(), server)
    response = Response(body, mimetype="application/samlmetadata+xml")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


# Every POST here authenticates its message by signature (or needs none), not by a form token.
@bp.route(idp.SSO_PATH, methods=["GET", "POST"])
@csrf_exempt
@no_store
def sso() -> BaseResponse:
    found = _binding_value("SAMLRequest")
    if found is None:
        return error_page()
    binding, relay_state, value = found
    try:
        return _sso(binding, relay_state, value)
    except Refused as exc:
        log.info("SAML AuthnRequest refused: %s", exc)
        return error_page()


def _sso(binding: str, relay_state: str | None, value: str) -> BaseResponse:
    if relay_state is not None and len(relay_state.encode("utf-8")) > MAX_RELAY_STATE:
        raise Refused("RelayState longer than 80 bytes")
    xml = decode(value, deflated=binding == registry.BINDING_REDIRECT)
    root = parse_xml(xml)
    if root.tag != f"{{{SAMLP_NS}}}AuthnRequest":
        raise Refused("not an AuthnRequest")
    db = db_session()
    row = registry.get_sp(db, issuer_of(root))
    if row is None:
        raise Refused("unknown service provider")
    sp = row.parsed
    server = idp.get_server()
    check_signed(
        server, xml, root, binding, "SAMLRequest", "authn_request", sp,
        required=sp.want_authn_requests_signed,
    )
    check_destination(root, idp.SSO_PATH)
    message_id = check_timing_and_replay(root, sp.entity_id)
    index_text = root.get("AssertionConsumerServiceIndex")
    acs = sp.find_acs(
        root.get("AssertionConsumerServiceURL"),
        root.get("ProtocolBinding"),
        int(index_text) if index_text and index_text.isdigit() else None,
    )
    if acs is None or acs.binding not in registry.ACS_BINDINGS:
        raise Refused("AssertionConsumerService not in the SP's metadata")
    state = {
        "sp": sp.entity_id, "id": message_id, "acs": acs.location, "binding": acs.binding,
        "relay_state": relay_state,
    }
    wanted = requested_levels(root)
    reachable = reachable_levels()
    passive = _bool(root.get("IsPassive"))
    if wanted is None or (wanted[1] and not set(wanted[0]) & reachable):
        return deliver_error(state, (assertions.STATUS_RESPONDER,
                                     assertions.STATUS_NO_AUTHN_CONTEXT))
    if passive and not has_sso_session():
        return deliver_error(state, (assertions.STATUS_RESPONDER, assertions.STATUS_NO_PASSIVE))
    levels, essential = wanted
    rp_request = RpRequest(
        rp_id=sp.entity_id,
        protocol=RpProtocol.SAML,
        levels=levels,
        essential=essential,
        resume_url=url_for("saml.resume"),
        # The POST binding's form goes to the ACS: the login pages must allow its origin.
        return_origin=acs.location,
        force_authn=_bool(root.get("ForceAuthn")),
        passive=passive,
        state=state,
        needs_bsn=bool(row.bsn),
    )
    return start_login(rp_request)


@bp.get("/saml/idp/sso/resume")
@no_store
def resume() -> BaseResponse:
    flow_id = request.args.get("flow", "")
    finished = finish_login(flow_id) if 0 < len(flow_id) < 100 else None
    if finished is None:
        return error_page()
    rp_request, outcome = finished
    if rp_request.protocol is not RpProtocol.SAML:
        return error_page()
    state = dict(rp_request.state)
    db = db_session()
    row = registry.get_sp(db, str(state.get("sp", "")))
    if row is None or row.parsed.find_acs(state.get("acs"), state.get("binding"), None) is None:
        return error_page()  # removed or changed while the person was logging in
    if isinstance(outcome, AuthnError):
        return deliver_error(state, assertions.FLOW_STATUS[outcome.code])
    result = outcome
    if rp_request.essential and result.level not in rp_request.levels:
        return deliver_error(state, (assertions.STATUS_RESPONDER,
                                     assertions.STATUS_NO_AUTHN_CONTEXT))
    account = _account(result.account_id)
    settings = get_settings()
    server = idp.get_server()
    name_id = assertions.name_id_for(
        settings, server.config.entityid, row, result,
        account.bsn if account is not None else None,
    )
    if name_id is None:
        # A --bsn SP and a person without a BSN: a desk account without one, or an eIDAS
        # login not linked to an account (docs/saml-idp.md). DigiD SPs read the NameID as
        # `<sector>:<number>`; a pairwise identifier there would be misread, so they get a
        # clean SAML error instead.
        log.info("SAML: no BSN for a --bsn SP (route %s)", result.route)
        return deliver_error(state, (assertions.STATUS_RESPONDER,
                                     assertions.STATUS_REQUEST_DENIED))
    xml = assertions.authn_response(
        server, sp=row, in_response_to=str(state["id"]), destination=str(state["acs"]),
        name_id=name_id, result=result,
        attributes=attributes.released(row.attribute_names, account, result.attributes),
        encrypt=bool(row.parsed.encryption_certificates),
    )
    if result.sso_session_id is not None:
        get_store().set(
            _nameid_key(row.entity_id, name_id.text), result.sso_session_id.encode(),
            NAMEID_SESSION_TTL,
        )
    return deliver(state, xml)


def _account(account_id: str | None) -> Any:
    if account_id is None:
        return None
    from gateway.accounts.models import Account

    return db_session().get(Account, account_id)


def _nameid_key(sp_entity_id: str, name_id: str) -> str:
    digest = hashlib.sha256(sp_entity_id.encode() + b"\x00" + name_id.encode()).hexdigest()
    return "saml:nameid-session:" + digest


def deliver_error(state: Mapping[str, Any], status: tuple[str, str]) -> BaseResponse:
    xml = assertions.error_response(
        idp.get_server(), in_response_to=str(state["id"]), destination=str(state["acs"]),
        status=status,
    )
    return deliver(state, xml)


def deliver(state: Mapping[str, Any], response_xml: str) -> BaseResponse:
    """Send a Response to the SP's ACS by its binding (Bindings 3.5 POST, 3.6 Artifact)."""
    acs = str(state["acs"])
    relay_state = state.get("relay_state")
    if state.get("binding") == registry.BINDING_ARTIFACT:
        server = idp.get_server()
        artifact = assertions.store_artifact(
            get_store(), server.config.entityid, idp.ARTIFACT_RESOLUTION_INDEX,
            str(state["sp"]), response_xml,
        )
        params = [("SAMLart", artifact)]
        if isinstance(relay_state, str):
            params.append(("RelayState", relay_state))
        separator = "&" if urlsplit(acs).query else "?"
        response = redirect(acs + separator + urlencode(params), code=303)
        allow_form_action(acs)
        response.headers["Cache-Control"] = "no-store"
        return response
    fields = [("SAMLResponse", base64.b64encode(response_xml.encode()).decode())]
    if isinstance(relay_state, str):
        fields.append(("RelayState", relay_state))
    allow_form_action(acs)
    body = render_template("saml/post.html", action=acs, fields=fields)
    page = Response(body, mimetype="text/html")
    page.headers["Cache-Control"] = "no-store"
    return page


# --- SOAP: ArtifactResolve and LogoutRequest ---------------------------------------------------


def _soap_body() -> tuple[bytes, etree._Element]:
    """The one message inside a SOAP 1.1 envelope (SAML 2.0 Bindings 3.2)."""
    data = request.get_data(cache=False)
    if len(data) > MAX_MESSAGE_BYTES:
        raise Refused("message too large")
    try:
        envelope = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError:
        raise Refused("not well-formed XML") from None
    tree = envelope.getroottree()
    if getattr(tree.docinfo, "doctype", "") or tree.docinfo.internalDTD is not None:
        raise Refused("DOCTYPE not allowed")
    if envelope.tag != f"{{{SOAP_NS}}}Envelope":
        raise Refused("not a SOAP envelope")
    body = envelope.find(f"{{{SOAP_NS}}}Body")
    children = [c for c in body if isinstance(c.tag, str)] if body is not None else []
    if len(children) != 1:
        raise Refused("SOAP body must hold one message")
    message = etree.tostring(children[0])
    return message, parse_xml(message)


def _soap(xml: str, status: int = 200) -> Response:
    return Response(xml, status=status, mimetype="text/xml")


@bp.post(idp.ARTIFACT_PATH)
@csrf_exempt
def artifact_resolve() -> Response:
    try:
        xml, root = _soap_body()
        if root.tag != f"{{{SAMLP_NS}}}ArtifactResolve":
            raise Refused("not an ArtifactResolve")
        row = registry.get_sp(db_session(), issuer_of(root))
        if row is None:
            raise Refused("unknown service provider")
        sp = row.parsed
        server = idp.get_server()
        # Back channel without TLS client authentication: the SP's signature is what tells
        # us who asks, so an SP without a signing key cannot resolve artifacts.
        if not sp.signing_certificates:
            raise Refused("SP has no signing key")
        check_signed(server, xml, root, registry.BINDING_SOAP, "", "artifact_resolve", sp,
                     required=True)
        check_destination_optional(root, idp.ARTIFACT_PATH)
        message_id = check_timing_and_replay(root, sp.entity_id)
        element = root.find(f"{{{SAMLP_NS}}}Artifact")
        artifact = (element.text or "").strip() if element is not None else ""
    except Refused as exc:
        log.info("SAML ArtifactResolve refused: %s", exc)
        return _soap(assertions.soap_fault("request refused"), 400)
    response_xml = assertions.take_artifact(get_store(), artifact, sp.entity_id)
    return _soap(
        assertions.artifact_response(server, in_response_to=message_id, response_xml=response_xml)
    )


def check_destination_optional(root: etree._Element, path: str) -> None:
    """Over SOAP, Destination is optional (Core 3.2.1); when present it must be ours."""
    if root.get("Destination") is not None:
        check_destination(root, path)


@bp.route(idp.SLO_PATH, methods=["GET", "POST"])
@csrf_exempt
@no_store
def slo() -> BaseResponse:
    if request.method == "POST" and request.mimetype in ("text/xml", "application/soap+xml"):
        return _slo_soap()
    raw = request.args.get("SAMLRequest") if request.method == "GET" else None
    if raw is None:
        return error_page()
    try:
        xml = decode(raw, deflated=True)
        root = parse_xml(xml)
        if root.tag != f"{{{SAMLP_NS}}}LogoutRequest":
            raise Refused("not a LogoutRequest")
        row = registry.get_sp(db_session(), issuer_of(root))
        if row is None:
            raise Refused("unknown service provider")
        sp = row.parsed
        server = idp.get_server()
        # SAML 2.0 Profiles 4.4.4.1: the requester must authenticate itself: signed always.
        check_signed(server, xml, root, registry.BINDING_REDIRECT, "SAMLRequest",
                     "logout_request", sp, required=True)
        check_destination(root, idp.SLO_PATH)
        check_timing_and_replay(root, sp.entity_id)
        target = sp.slo_endpoint(registry.BINDING_REDIRECT)
        if target is None:
            raise Refused("SP has no HTTP-Redirect SingleLogoutService")
        relay_state = request.args.get("RelayState")
        if relay_state is not None and len(relay_state.encode()) > MAX_RELAY_STATE:
            raise Refused("RelayState longer than 80 bytes")
    except Refused as exc:
        log.info("SAML LogoutRequest refused: %s", exc)
        return error_page()
    _end_browser_session()
    request_obj = _logout_request_object(server, xml)
    response = server.create_logout_response(
        request_obj, bindings=[BINDING_HTTP_REDIRECT], sign=False,
    )
    response.destination = target.location
    info = server.apply_binding(
        BINDING_HTTP_REDIRECT, str(response), target.location, relay_state or "",
        response=True, sign=True, sigalg=idp.SIGNING["signing_algorithm"],
    )
    location = dict(info["headers"])["Location"]
    allow_form_action(target.location)
    return redirect(location, code=303)


def _logout_request_object(server: Any, xml: bytes) -> Any:
    from saml2 import samlp

    return samlp.logout_request_from_string(xml.decode("utf-8"))


def _end_browser_session() -> None:
    from gateway.flows import sessions

    db = db_session()
    sessions.logout(db, get_settings())
    db.commit()


def _slo_soap() -> Response:
    from gateway.flows import sessions

    try:
        xml, root = _soap_body()
        if root.tag != f"{{{SAMLP_NS}}}LogoutRequest":
            raise Refused("not a LogoutRequest")
        row = registry.get_sp(db_session(), issuer_of(root))
        if row is None:
            raise Refused("unknown service provider")
        sp = row.parsed
        server = idp.get_server()
        check_signed(server, xml, root, registry.BINDING_SOAP, "", "logout_request", sp,
                     required=True)
        check_destination_optional(root, idp.SLO_PATH)
        check_timing_and_replay(root, sp.entity_id)
        name_id = root.find(f"{{{SAML_NS}}}NameID")
        name_text = (name_id.text or "").strip() if name_id is not None else ""
        if not name_text:
            raise Refused("no NameID")
    except Refused as exc:
        log.info("SAML SOAP LogoutRequest refused: %s", exc)
        return _soap(assertions.soap_fault("request refused"), 400)
    session_id = get_store().take(_nameid_key(sp.entity_id, name_text))
    db = db_session()
    if session_id is not None:
        sso_row = db.get(sessions.SsoSession, session_id.decode())
        if sso_row is not None:
            sessions.end_session(sso_row, sessions.EndReason.LOGOUT)
            db.commit()
    # Success either way: the session is gone (Profiles 4.4.3.4 allows no "unknown" oracle).
    response = server.create_logout_response(
        _logout_request_object(server, xml), bindings=[registry.BINDING_SOAP], sign=True,
        sign_alg=idp.SIGNING["signing_algorithm"], digest_alg=idp.SIGNING["digest_algorithm"],
    )
    return _soap(assertions.soap_envelope(_strip(str(response))))


def _strip(xml: str) -> str:
    text = xml.lstrip()
    if text.startswith("<?xml"):
        text = text[text.index("?>") + 2:].lstrip()
    return text


def init_app(app: Flask) -> None:
    idp.init_app(app)
    app.register_blueprint(bp)


__all__ = ["bp", "init_app"]
