"""Checking an eIDAS node's SAML Response, completely, before anything in it is believed.

SAML 2.0 Core (3.2.2, 2.3.3-2.7), Profiles 4.1.4.2-4.1.4.3 and the eIDAS SAML Message
Format v1.2 (section 3.4), in this order; the first failure refuses the answer with a
`Refused(reason)` whose reason is one of the `R_*` codes (logged, never shown: telling a
sender which check tripped helps it tune a forgery):

1. Size (`MAX_RESPONSE_BYTES`), strict base64, XML without DOCTYPE, entities or processing
   instructions (XXE, billion laughs), then the SAML schema (before any signature work:
   CVE-2021-21238's lesson).
2. Shape (`_check_shape`, the XML Signature Wrapping defence, XSW1-XSW8): exactly one
   samlp:Response in the whole document and it is the root; at most one Assertion or
   EncryptedAssertion anywhere, and only as a direct child of the root; ds:Signature only as
   a direct child of the Response or of that Assertion, one each; no ds:Object.
3. The Response signature, by a signing key from the node's metadata only (the document's
   KeyInfo is never read), over the root itself: its one Reference must point at the root's
   ID, and that ID must occur once (`gateway.idp.saml.crypto`). Required unless the route is
   configured otherwise; always required for a status other than Success.
4. Issuer = the node's entity ID; Destination = our ACS; IssueInstant within
   `MAX_RESPONSE_AGE` (plus `MAX_CLOCK_SKEW`); InResponseTo present (otherwise unsolicited).
5. Status: Success, or an error (RequestDenied: the person cancelled).
6. The assertion: encrypted unless configured otherwise, decrypted with the SP's key
   (AES-GCM/CBC with RSA-OAEP only), then again parsed, schema-checked and shape-checked,
   and its own signature verified by the node's key over that very element. Everything the
   gateway uses is read from this verified element, never found again in the document.
7. Assertion content: Issuer; one bearer SubjectConfirmation whose Recipient is our ACS,
   whose InResponseTo is the Response's, and whose NotOnOrAfter has not passed; Conditions
   with NotBefore/NotOnOrAfter (skew `MAX_CLOCK_SKEW`) and an AudienceRestriction naming us;
   one AuthnStatement with a recent AuthnInstant and an eIDAS LoA; the mandatory attributes.

Replay, the pending request (InResponseTo bound to this browser's flow) and the level asked
for are checked by the caller (`gateway.routes.eidas.service`), which owns the shared state.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from lxml import etree
from saml2.sigver import DecryptError, SignatureError
from saml2.xml.schema import XMLSchemaError
from saml2.xml.schema import validate as validate_schema

from gateway.idp.saml.crypto import CryptoBackendXmlSecInProcess
from gateway.levels import Level
from gateway.routes.eidas.node import NodeInfo
from gateway.routes.eidas.saml import DS_NS, NATURAL_PERSON, SAML_NS, SAMLP_NS
from gateway.routes.eidas.spkeys import SpKeys

XENC_NS: Final = "http://www.w3.org/2001/04/xmlenc#"
#: A Response with one encrypted assertion is 10-20 KiB; the bound leaves room, no more.
MAX_RESPONSE_BYTES: Final = 128 * 1024
#: Clock difference tolerated between the node and the gateway.
MAX_CLOCK_SKEW: Final = timedelta(minutes=3)
#: A Response (and its Assertion) issued longer ago than this is refused; the replay cache
#: keeps IDs for REPLAY_TTL, which covers the whole window in which one could be accepted.
MAX_RESPONSE_AGE: Final = timedelta(minutes=10)
REPLAY_TTL: Final = MAX_RESPONSE_AGE + 2 * MAX_CLOCK_SKEW
#: Longest attribute value kept (names, places, addresses); longer is refused, not cut.
MAX_ATTRIBUTE_CHARS: Final = 512
#: The receiving member state in PersonIdentifier "XX/YY/...": the Netherlands.
RECEIVING_COUNTRY: Final = "NL"

STATUS_SUCCESS: Final = "urn:oasis:names:tc:SAML:2.0:status:Success"
STATUS_REQUEST_DENIED: Final = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
CM_BEARER: Final = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
RESPONSE_NODE: Final = f"{SAMLP_NS}:Response"
ASSERTION_NODE: Final = f"{SAML_NS}:Assertion"

_RESPONSE: Final = f"{{{SAMLP_NS}}}Response"
_ASSERTION: Final = f"{{{SAML_NS}}}Assertion"
_ENCRYPTED_ASSERTION: Final = f"{{{SAML_NS}}}EncryptedAssertion"
_SIGNATURE: Final = f"{{{DS_NS}}}Signature"
_OBJECT: Final = f"{{{DS_NS}}}Object"

# Refusal reasons (for logs and tests; docs/eidas.md maps each to its attack).
R_SIZE = "size"
R_ENCODING = "encoding"
R_XML = "xml"
R_DTD = "dtd"
R_SCHEMA = "schema"
R_NOT_RESPONSE = "not-response"
R_WRAPPING = "wrapping"
# The shape check's parts, each with its own reason (tests tell them apart).
R_WRAPPING_RESPONSE = "wrapping-response"
R_WRAPPING_ASSERTIONS = "wrapping-assertions"
R_WRAPPING_PLACE = "wrapping-place"
R_WRAPPING_SIGNATURE = "wrapping-signature"
R_WRAPPING_INNER = "wrapping-inner"
R_RESPONSE_UNSIGNED = "response-unsigned"
R_RESPONSE_SIGNATURE = "response-signature"
R_ISSUER = "issuer"
R_DESTINATION = "destination"
R_ISSUE_INSTANT = "issue-instant"
R_UNSOLICITED = "unsolicited"
R_STATUS = "status"
R_NO_ASSERTION = "no-assertion"
R_NOT_ENCRYPTED = "not-encrypted"
R_DECRYPT = "decrypt"
R_ASSERTION_UNSIGNED = "assertion-unsigned"
R_ASSERTION_SIGNATURE = "assertion-signature"
R_ASSERTION_ISSUER = "assertion-issuer"
R_SUBJECT = "subject"
R_RECIPIENT = "recipient"
R_IN_RESPONSE_TO = "in-response-to"
R_EXPIRED = "expired"
R_CONFIRMATION_EXPIRED = "confirmation-expired"
R_NOT_YET_VALID = "not-yet-valid"
R_AUDIENCE = "audience"
R_AUTHN_STATEMENT = "authn-statement"
R_LOA = "loa"
R_ATTRIBUTES = "attributes"

_PERSON_ID: Final = re.compile(r"\A([A-Z]{2})/([A-Z]{2})/([^\s/][^\s]{0,255})\Z")
_DATE: Final = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
    dtd_validation=False, remove_comments=False,
)

#: eIDAS attribute (friendly) names and the neutral names of AuthnResult.attributes.
NEUTRAL_NAMES: Final = {
    "CurrentGivenName": "given_name",
    "CurrentFamilyName": "family_name",
    "DateOfBirth": "birthdate",
    "BirthName": "birth_name",
    "PlaceOfBirth": "place_of_birth",
    "CurrentAddress": "address",
    "Gender": "gender",
}
_GENDERS: Final = frozenset({"Male", "Female", "Unspecified"})


class Refused(Exception):
    """The answer cannot be believed; `reason` is an R_* code (for the log, not the page)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Expected:
    """What the answer must say about us, and the keys to check and open it with."""

    sp_entity_id: str
    acs_url: str
    node: NodeInfo
    keys: SpKeys
    require_signed_response: bool = True
    require_encrypted_assertion: bool = True


@dataclass(frozen=True)
class CheckedAssertion:
    assertion_id: str
    level: Level
    loa: str
    authn_instant: datetime
    person_identifier: str
    #: The issuing member state (PersonIdentifier's first part).
    country: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckedResponse:
    response_id: str
    in_response_to: str
    #: "success", "cancelled" or "failed".
    outcome: str
    assertion: CheckedAssertion | None


def check_response(
    saml_response: str, expected: Expected, backend: CryptoBackendXmlSecInProcess,
    now: datetime,
) -> CheckedResponse:
    """Run checks 1-7 of the module docstring on the form field's value."""
    data = _decode(saml_response)
    root = _parse(data)
    _schema(data)
    if root.tag != _RESPONSE:
        raise Refused(R_NOT_RESPONSE)
    _check_shape(root)
    response_id = root.get("ID") or ""
    signed = root.find(_SIGNATURE) is not None
    if signed:
        _verify(backend, data, RESPONSE_NODE, response_id, expected.node, R_RESPONSE_SIGNATURE)
    status = _status(root)
    if not signed and (expected.require_signed_response or status != STATUS_SUCCESS):
        raise Refused(R_RESPONSE_UNSIGNED)
    if _text(root.find(f"{{{SAML_NS}}}Issuer")) != expected.node.entity_id:
        raise Refused(R_ISSUER)
    if root.get("Destination") != expected.acs_url:
        raise Refused(R_DESTINATION)
    _check_issued(root, now)
    in_response_to = root.get("InResponseTo") or ""
    if not in_response_to:
        raise Refused(R_UNSOLICITED, "no InResponseTo")
    if status != STATUS_SUCCESS:
        outcome = "cancelled" if _second_level(root) == STATUS_REQUEST_DENIED else "failed"
        return CheckedResponse(response_id, in_response_to, outcome, None)
    assertion = _assertion(root, expected, backend)
    checked = _check_assertion(assertion, in_response_to, expected, now)
    return CheckedResponse(response_id, in_response_to, "success", checked)


# --- 1: decoding and parsing ---------------------------------------------------------------


def _decode(value: str) -> bytes:
    if len(value) > MAX_RESPONSE_BYTES * 4 // 3 + 4:
        raise Refused(R_SIZE)
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(R_ENCODING) from None
    if len(data) > MAX_RESPONSE_BYTES:
        raise Refused(R_SIZE)
    return data


def _parse(data: bytes) -> etree._Element:
    # Looked for before parsing too: a DOCTYPE is refused whatever the parser would make of it.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise Refused(R_DTD)
    try:
        root = etree.fromstring(data, _PARSER)
    except (etree.XMLSyntaxError, ValueError):
        raise Refused(R_XML) from None
    docinfo = root.getroottree().docinfo
    if getattr(docinfo, "doctype", "") or docinfo.internalDTD is not None:
        raise Refused(R_DTD)
    if any(isinstance(n, etree._Entity | etree._ProcessingInstruction) for n in root.iter()):
        raise Refused(R_DTD, "entity or processing instruction")
    return root


def _schema(data: bytes) -> None:
    try:
        validate_schema(data.decode("utf-8"))
    except (XMLSchemaError, UnicodeDecodeError, ValueError):
        raise Refused(R_SCHEMA) from None


# --- 2: shape (XSW) -----------------------------------------------------------------------


def _check_shape(root: etree._Element) -> None:
    """The one structure a genuine answer has; anything else is a wrapping attempt."""
    if any(e is not root for e in root.iter(_RESPONSE)):
        raise Refused(R_WRAPPING_RESPONSE)
    assertions = [e for e in root.iter(_ASSERTION, _ENCRYPTED_ASSERTION) if e is not root]
    if len(assertions) > 1:
        raise Refused(R_WRAPPING_ASSERTIONS)
    if assertions and assertions[0].getparent() is not root:
        raise Refused(R_WRAPPING_PLACE)
    _check_signatures(root, allowed_parents={root, *assertions})


def _check_signatures(root: etree._Element, allowed_parents: set[etree._Element]) -> None:
    parents: list[etree._Element] = []
    for signature in root.iter(_SIGNATURE):
        parent = signature.getparent()
        if parent is None or parent not in allowed_parents or parent in parents:
            raise Refused(R_WRAPPING_SIGNATURE, "a signature outside its place")
        parents.append(parent)
    if next(root.iter(_OBJECT), None) is not None:
        raise Refused(R_WRAPPING_SIGNATURE, "ds:Object")


def _verify(
    backend: CryptoBackendXmlSecInProcess, data: bytes, node_name: str, element_id: str,
    node: NodeInfo, reason: str,
) -> None:
    """The element with `element_id` is signed by one of the node's metadata keys."""
    if not element_id:
        raise Refused(reason, "no ID")
    text = data.decode("utf-8")
    for cert_file in node.signing_cert_files:
        try:
            if backend.validate_signature(text, cert_file, "pem", node_name, element_id):
                return
        except SignatureError:
            continue
    raise Refused(reason)


# --- 4-5: the Response's own fields ---------------------------------------------------------


def _text(element: etree._Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


def _time(value: str | None, reason: str) -> datetime:
    if not value:
        raise Refused(reason, "time missing")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Refused(reason, "malformed time") from None
    if parsed.tzinfo is None:
        raise Refused(reason, "time without zone")
    return parsed.astimezone(UTC)


def _check_issued(element: etree._Element, now: datetime) -> None:
    issued = _time(element.get("IssueInstant"), R_ISSUE_INSTANT)
    if issued > now + MAX_CLOCK_SKEW or issued < now - MAX_RESPONSE_AGE - MAX_CLOCK_SKEW:
        raise Refused(R_ISSUE_INSTANT)


def _status(root: etree._Element) -> str:
    code = root.find(f"{{{SAMLP_NS}}}Status/{{{SAMLP_NS}}}StatusCode")
    value = code.get("Value") if code is not None else None
    if not value:
        raise Refused(R_STATUS)
    return value


def _second_level(root: etree._Element) -> str:
    path = f"{{{SAMLP_NS}}}Status/{{{SAMLP_NS}}}StatusCode/{{{SAMLP_NS}}}StatusCode"
    code = root.find(path)
    return (code.get("Value") or "") if code is not None else ""


# --- 6: the assertion ---------------------------------------------------------------------


def _assertion(
    root: etree._Element, expected: Expected, backend: CryptoBackendXmlSecInProcess
) -> etree._Element:
    """The one assertion, decrypted, re-parsed on its own and verified: the element to use."""
    children = [e for e in root if e.tag in (_ASSERTION, _ENCRYPTED_ASSERTION)]
    if not children:
        raise Refused(R_NO_ASSERTION)
    found = children[0]
    if found.tag == _ASSERTION:
        if expected.require_encrypted_assertion:
            raise Refused(R_NOT_ENCRYPTED)
        plain = etree.tostring(found)
    else:
        plain = _decrypt(found, expected.keys, backend)
    assertion = _parse(plain)
    _schema(plain)
    if assertion.tag != _ASSERTION:
        raise Refused(R_WRAPPING, "the encrypted element is not an Assertion")
    if any(e is not assertion for e in assertion.iter(_ASSERTION, _ENCRYPTED_ASSERTION,
                                                      _RESPONSE)):
        raise Refused(R_WRAPPING_INNER)
    _check_signatures(assertion, allowed_parents={assertion})
    if assertion.find(_SIGNATURE) is None:
        raise Refused(R_ASSERTION_UNSIGNED)
    _verify(backend, plain, ASSERTION_NODE, assertion.get("ID") or "", expected.node,
            R_ASSERTION_SIGNATURE)
    return assertion


def _decrypt(
    encrypted: etree._Element, keys: SpKeys, backend: CryptoBackendXmlSecInProcess
) -> bytes:
    data_elements = encrypted.findall(f"{{{XENC_NS}}}EncryptedData")
    if len(data_elements) != 1:
        raise Refused(R_DECRYPT, "one EncryptedData expected")
    try:
        opened = backend.decrypt(
            etree.tostring(encrypted).decode("utf-8"), str(keys.encryption.key_path)
        )
    except DecryptError:
        raise Refused(R_DECRYPT) from None
    holder = _parse(opened.encode("utf-8"))
    inside = [e for e in holder if isinstance(e.tag, str) and e.tag != f"{{{XENC_NS}}}EncryptedKey"]
    if holder.tag != _ENCRYPTED_ASSERTION or len(inside) != 1:
        raise Refused(R_WRAPPING, "the encrypted assertion held more than one element")
    return etree.tostring(inside[0])


# --- 7: the assertion's content -----------------------------------------------------------


def _check_assertion(
    assertion: etree._Element, in_response_to: str, expected: Expected, now: datetime
) -> CheckedAssertion:
    if _text(assertion.find(f"{{{SAML_NS}}}Issuer")) != expected.node.entity_id:
        raise Refused(R_ASSERTION_ISSUER)
    _check_issued(assertion, now)
    subject = assertion.find(f"{{{SAML_NS}}}Subject")
    if subject is None or not _text(subject.find(f"{{{SAML_NS}}}NameID")):
        raise Refused(R_SUBJECT, "no NameID")
    bearers = [c for c in subject.findall(f"{{{SAML_NS}}}SubjectConfirmation")
               if c.get("Method") == CM_BEARER]
    if len(bearers) != 1:
        raise Refused(R_SUBJECT, "one bearer confirmation expected")
    data = bearers[0].find(f"{{{SAML_NS}}}SubjectConfirmationData")
    if data is None:
        raise Refused(R_SUBJECT, "no SubjectConfirmationData")
    if data.get("Recipient") != expected.acs_url:
        raise Refused(R_RECIPIENT)
    if data.get("InResponseTo") != in_response_to:
        raise Refused(R_IN_RESPONSE_TO, "the assertion answers another request")
    if data.get("NotBefore") is not None:
        raise Refused(R_SUBJECT, "NotBefore on a bearer confirmation")  # Profiles 4.1.4.2
    if _time(data.get("NotOnOrAfter"), R_CONFIRMATION_EXPIRED) <= now - MAX_CLOCK_SKEW:
        raise Refused(R_CONFIRMATION_EXPIRED)
    _check_conditions(assertion.find(f"{{{SAML_NS}}}Conditions"), expected, now)
    statements = assertion.findall(f"{{{SAML_NS}}}AuthnStatement")
    if len(statements) != 1:
        raise Refused(R_AUTHN_STATEMENT, "one AuthnStatement expected")
    authn_instant = _time(statements[0].get("AuthnInstant"), R_AUTHN_STATEMENT)
    if not now - MAX_RESPONSE_AGE - MAX_CLOCK_SKEW <= authn_instant <= now + MAX_CLOCK_SKEW:
        raise Refused(R_AUTHN_STATEMENT, "AuthnInstant not recent (ForceAuthn)")
    loa = _text(statements[0].find(
        f"{{{SAML_NS}}}AuthnContext/{{{SAML_NS}}}AuthnContextClassRef"))
    level = Level.from_eidas_loa(loa)
    if level is None:
        raise Refused(R_LOA, "not an eIDAS LoA")
    values = _attributes(assertion)
    person_id = values.get("PersonIdentifier", "")
    match = _PERSON_ID.match(person_id)
    if match is None or match.group(2) != RECEIVING_COUNTRY:
        raise Refused(R_ATTRIBUTES, "PersonIdentifier malformed")
    attributes: dict[str, str] = {}
    for eidas_name, neutral in NEUTRAL_NAMES.items():
        if eidas_name in values:
            attributes[neutral] = values[eidas_name]
    for name in ("given_name", "family_name", "birthdate"):
        if not attributes.get(name):
            raise Refused(R_ATTRIBUTES, f"{name} missing")
    if not _DATE.match(attributes["birthdate"]):
        raise Refused(R_ATTRIBUTES, "DateOfBirth malformed")
    if "gender" in attributes and attributes["gender"] not in _GENDERS:
        del attributes["gender"]
    if "address" in attributes:
        attributes["address"] = _address(attributes["address"])
    attributes["country"] = match.group(1)
    return CheckedAssertion(
        assertion_id=assertion.get("ID") or "", level=level, loa=loa,
        authn_instant=authn_instant, person_identifier=person_id, country=match.group(1),
        attributes=attributes,
    )


def _check_conditions(
    conditions: etree._Element | None, expected: Expected, now: datetime
) -> None:
    if conditions is None:
        raise Refused(R_EXPIRED, "no Conditions")
    not_before = conditions.get("NotBefore")
    if not_before is not None and _time(not_before, R_NOT_YET_VALID) > now + MAX_CLOCK_SKEW:
        raise Refused(R_NOT_YET_VALID)
    if _time(conditions.get("NotOnOrAfter"), R_EXPIRED) <= now - MAX_CLOCK_SKEW:
        raise Refused(R_EXPIRED, "conditions")
    restrictions = conditions.findall(f"{{{SAML_NS}}}AudienceRestriction")
    # Core 2.5.1.4: every AudienceRestriction must name us; eIDAS requires at least one.
    if not restrictions or any(
        expected.sp_entity_id not in {_text(a) for a in r.findall(f"{{{SAML_NS}}}Audience")}
        for r in restrictions
    ):
        raise Refused(R_AUDIENCE)


def _attributes(assertion: etree._Element) -> dict[str, str]:
    """Attribute friendly name -> first value, for the eIDAS natural-person attributes."""
    values: dict[str, str] = {}
    statements = assertion.findall(f"{{{SAML_NS}}}AttributeStatement")
    for attribute in _iter_attributes(statements):
        name = attribute.get("Name") or ""
        if not name.startswith(NATURAL_PERSON):
            continue
        short = name[len(NATURAL_PERSON):]
        if short in values:
            raise Refused(R_ATTRIBUTES, "an attribute given twice")
        value = _text(attribute.find(f"{{{SAML_NS}}}AttributeValue"))
        if len(value) > MAX_ATTRIBUTE_CHARS * 4 or _CONTROL.search(value):
            raise Refused(R_ATTRIBUTES, "attribute value not acceptable")
        values[short] = value
    for short, value in values.items():
        if short != "CurrentAddress" and len(value) > MAX_ATTRIBUTE_CHARS:
            raise Refused(R_ATTRIBUTES, "attribute value too long")
    return values


def _iter_attributes(statements: Iterable[etree._Element]) -> Iterable[etree._Element]:
    for statement in statements:
        yield from statement.findall(f"{{{SAML_NS}}}Attribute")


def _address(value: str) -> str:
    """eIDAS CurrentAddress (Attribute Profile v1.2, 2.2.3.3): base64 of address elements;
    one line of text, parts joined with ", ", or the value itself when it is plain text."""
    try:
        decoded = base64.b64decode("".join(value.split()), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return value[:MAX_ATTRIBUTE_CHARS]
    if "<" not in decoded or "<!" in decoded:
        return decoded.strip()[:MAX_ATTRIBUTE_CHARS]
    wrapper = (
        '<a xmlns:eidas="http://eidas.europa.eu/attributes/naturalperson" '
        'xmlns="http://eidas.europa.eu/attributes/naturalperson">' + decoded + "</a>"
    )
    try:
        parsed = etree.fromstring(wrapper.encode("utf-8"), _PARSER)
    except etree.XMLSyntaxError:
        return ""
    full = [e for e in parsed.iter() if isinstance(e.tag, str) and e.tag.endswith("}FullCvaddress")]
    if full and _text(full[0]):
        return _text(full[0])[:MAX_ATTRIBUTE_CHARS]
    parts = [_text(e) for e in parsed.iter() if e is not parsed and _text(e)]
    return ", ".join(parts)[:MAX_ATTRIBUTE_CHARS]
