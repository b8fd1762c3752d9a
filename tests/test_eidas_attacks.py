"""Issue 8, "Bad input": every attack on the eIDAS route's answer is refused with a clear page
(4xx, no stack trace), the flow does not reach `done`, and nothing is stored (no SSO session).

Each test also checks the logged refusal reason, so it fails when the check that should catch
it is removed (a later check catching it instead changes the reason); docs/eidas.md maps each
test to the line it guards. `test_wrapping_is_refused_even_without_the_shape_check` shows the
second line of defence against XSW: the signature is verified over the very element used.
"""

from __future__ import annotations

import base64
import copy
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from gateway import clock
from gateway.settings import Settings
from tests.eidas_helpers import (
    Env,
    Started,
    continued,
    encode,
    flow_state,
    make_env,
    post_answer,
    sso_count,
    start_at_node,
)

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
PERSON_ID = "http://eidas.europa.eu/attributes/naturalperson/PersonIdentifier"
LOW = "http://eidas.europa.eu/LoA/low"
REASON_LOGGER = "gateway.routes.eidas.views"



@pytest.fixture
def plain_env(make_app: Any, settings: Settings, tmp_path: Path, sp_keys_template: Path,
              node_key_dir: Path) -> Env:
    """A route that accepts unencrypted assertions (a node configured so): the wrapping
    attacks then meet the signature checks alone, without the encryption layer."""
    return make_env(make_app, settings, tmp_path, sp_keys_template, node_key_dir,
                    require_encrypted_assertions=False)


def refused(env: Env, started: Started, saml_response: str, reason: str,
            caplog: pytest.LogCaptureFixture, *, relay_state: str | None = None,
            sso_before: int = 0) -> Any:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=REASON_LOGGER):
        page = post_answer(env, started, saml_response, relay_state)
    body = page.get_data(as_text=True)
    assert 400 <= page.status_code < 500, (page.status_code, body[:500])
    assert "Traceback" not in body and "Error" not in page.headers.get("Content-Type", "")
    assert "Your European login could not be used" in body
    reasons = [r.getMessage() for r in caplog.records if r.name == REASON_LOGGER]
    assert reasons == [f"eIDAS response refused: {reason}"], reasons
    assert flow_state(env.app, started.flow_id) == ("external", None)
    assert sso_count(env.app) == sso_before
    return page


def _request(env: Env, started: Started) -> Any:
    return env.node.parse_request(started.saml_request)


def _person(name: str = "de-substantial") -> Any:
    from gateway.eidas_sim.persons import PERSONS

    return PERSONS[name]


def _xml(env: Env, started: Started, **kwargs: Any) -> str:
    return str(env.node.response_xml(_request(env, started), _person(), **kwargs))


def _root(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode("utf-8"))


def _b64(root: etree._Element) -> str:
    return encode(etree.tostring(root))


def _assertion(root: etree._Element) -> etree._Element:
    found = root.find(f"{{{SAML}}}Assertion")
    assert found is not None
    return found


def _evil(assertion: etree._Element, *, keep_signature: bool = False,
          new_id: bool = True) -> etree._Element:
    """A copy of `assertion` naming someone else, unsigned unless `keep_signature`."""
    evil = copy.deepcopy(assertion)
    if new_id:
        evil.set("ID", "_evil" + "0" * 40)
    if not keep_signature:
        for signature in evil.findall(f"{{{DS}}}Signature"):
            evil.remove(signature)
    for attribute in evil.iter(f"{{{SAML}}}Attribute"):
        if attribute.get("Name") == PERSON_ID:
            attribute[0].text = "DE/NL/victim-0001"
    return evil


def _without_signature(element: etree._Element) -> etree._Element:
    clean = copy.deepcopy(element)
    for signature in clean.findall(f"{{{DS}}}Signature"):
        clean.remove(signature)
    return clean


# --- XML Signature Wrapping (Somorovsky et al. 2012; SAML Raider's XSW1-XSW8) --------------


def xsw1(root: etree._Element) -> etree._Element:
    """Response wrapping: an evil Response is the root; the original signed Response hides in
    a ds:Object of the signature copied into the evil one."""
    original = copy.deepcopy(root)
    evil = copy.deepcopy(root)
    evil.set("ID", "_evilresponse" + "0" * 30)
    _assertion(evil).getparent().replace(_assertion(evil), _evil(_assertion(evil)))
    signature = evil.find(f"{{{DS}}}Signature")
    assert signature is not None
    obj = etree.SubElement(signature, f"{{{DS}}}Object")
    obj.append(original)
    return evil


def xsw2(root: etree._Element) -> etree._Element:
    """Response wrapping, detached: the original Response is a sibling before the signature
    inside the evil root."""
    original = copy.deepcopy(root)
    evil = copy.deepcopy(root)
    evil.set("ID", "_evilresponse" + "0" * 30)
    _assertion(evil).getparent().replace(_assertion(evil), _evil(_assertion(evil)))
    signature = evil.find(f"{{{DS}}}Signature")
    assert signature is not None
    signature.addprevious(original)
    return evil


def xsw3(root: etree._Element) -> etree._Element:
    """An unsigned evil Assertion before the signed one."""
    original = _assertion(root)
    original.addprevious(_evil(original))
    return root


def xsw4(root: etree._Element) -> etree._Element:
    """The signed Assertion moved inside an unsigned evil one."""
    original = _assertion(root)
    evil = _evil(original)
    root.replace(original, evil)
    evil.append(original)
    return root


def xsw5(root: etree._Element) -> etree._Element:
    """The signed copy's values changed (its signature kept), and an unsigned copy of the
    original Assertion appended at the end of the Response."""
    original = _assertion(root)
    unsigned_original = _without_signature(original)
    root.replace(original, _evil(original, keep_signature=True, new_id=False))
    root.append(unsigned_original)
    return root


def xsw6(root: etree._Element) -> etree._Element:
    """The evil Assertion keeps the signature; the original Assertion inside its ds:Object."""
    original = _assertion(root)
    evil = _evil(original, keep_signature=True, new_id=False)
    root.replace(original, evil)
    signature = evil.find(f"{{{DS}}}Signature")
    assert signature is not None
    etree.SubElement(signature, f"{{{DS}}}Object").append(copy.deepcopy(original))
    return root


def xsw7(root: etree._Element) -> etree._Element:
    """An Extensions block holds the signed Assertion; the evil one takes its place."""
    original = _assertion(root)
    root.replace(original, _evil(original))
    extensions = etree.Element(f"{{{SAMLP}}}Extensions")
    extensions.append(original)
    status = root.find(f"{{{SAMLP}}}Status")
    assert status is not None
    status.addprevious(extensions)
    return root


def xsw8(root: etree._Element) -> etree._Element:
    """The evil Assertion carries the signature, with a ds:Object holding the original
    Assertion (its signature removed)."""
    original = _assertion(root)
    evil = _evil(original, keep_signature=True, new_id=False)
    root.replace(original, evil)
    signature = evil.find(f"{{{DS}}}Signature")
    assert signature is not None
    etree.SubElement(signature, f"{{{DS}}}Object").append(_without_signature(original))
    return root


XSW: dict[str, tuple[Callable[[etree._Element], etree._Element], str]] = {
    # name: (transformation, the first check that refuses it)
    "XSW1": (xsw1, "wrapping-response"),
    "XSW2": (xsw2, "schema"),  # a Response is not allowed inside a Response
    "XSW3": (xsw3, "wrapping-assertions"),
    "XSW4": (xsw4, "schema"),  # an Assertion is not allowed inside an Assertion
    "XSW5": (xsw5, "schema"),  # the signed ID occurs twice (xs:ID must be unique)
    "XSW6": (xsw6, "schema"),  # the same
    "XSW7": (xsw7, "wrapping-assertions"),
    "XSW8": (xsw8, "schema"),  # the same
}


@pytest.mark.parametrize("name", sorted(XSW))
def test_signature_wrapping_is_refused(
    plain_env: Env, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    transform, reason = XSW[name]
    started = start_at_node(plain_env, "substantieel", "DE")
    root = transform(_root(_xml(plain_env, started, encrypt=False)))
    refused(plain_env, started, _b64(root), reason, caplog)


#: What refuses a wrapped assertion in an unsigned Response when the schema and shape checks
#: are off: the assertion used is the first one, and it must itself be signed (XSW3, XSW7), its
#: signature must cover exactly it (XSW5), and the element taken out alone must hold no
#: second assertion or ds:Object (XSW4, XSW6, XSW8).
DEEPER_DEFENCE = {
    "XSW3": "assertion-unsigned", "XSW4": "wrapping-inner", "XSW5": "assertion-signature",
    "XSW6": "wrapping-inner", "XSW7": "assertion-unsigned", "XSW8": "wrapping-inner",
}


@pytest.fixture
def assertion_only_env(make_app: Any, settings: Settings, tmp_path: Path,
                       sp_keys_template: Path, node_key_dir: Path) -> Env:
    """A route that takes an unsigned Response with a signed, unencrypted assertion: the
    assertion's own signature is then the only thing that vouches for it."""
    return make_env(make_app, settings, tmp_path, sp_keys_template, node_key_dir,
                    require_encrypted_assertions=False, require_signed_response=False)


def _without_outer_checks(env: Env, caplog: pytest.LogCaptureFixture,
                          monkeypatch: pytest.MonkeyPatch, name: str,
                          signed_response: bool) -> str:
    from gateway.routes.eidas import response

    monkeypatch.setattr(response, "_check_shape", lambda root: None)
    monkeypatch.setattr(response, "_schema", lambda data: None)
    transform, _ = XSW[name]
    started = start_at_node(env, "substantieel", "DE")
    root = transform(_root(_xml(env, started, encrypt=False, sign_response=signed_response)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=REASON_LOGGER):
        page = post_answer(env, started, _b64(root))
    assert page.status_code == 400
    reasons = [r.getMessage() for r in caplog.records if r.name == REASON_LOGGER]
    assert len(reasons) == 1, reasons
    assert flow_state(env.app, started.flow_id) == ("external", None)
    assert sso_count(env.app) == 0
    return reasons[0].rsplit(": ", 1)[1]


@pytest.mark.parametrize("name", sorted(XSW))
def test_wrapping_is_refused_even_without_the_schema_and_shape_checks(
    plain_env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    """Defence in depth: with the schema and shape checks switched off, the Response's
    signature (one Reference, to the root's own ID, which must occur once) still refuses
    every variant."""
    reason = _without_outer_checks(plain_env, caplog, monkeypatch, name, True)
    assert reason == "response-signature"


@pytest.mark.parametrize("name", sorted(set(XSW) - {"XSW1", "XSW2"}))
def test_assertion_wrapping_is_refused_without_a_response_signature_too(
    assertion_only_env: Env, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    """The same with an unsigned Response: the assertion's own signature is all there is."""
    reason = _without_outer_checks(assertion_only_env, caplog, monkeypatch, name, False)
    assert reason == DEEPER_DEFENCE[name]


def test_an_assertion_out_of_its_place_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The only assertion moved into the Response's Extensions: not where one is read from."""
    started = start_at_node(env, "substantieel", "DE")
    root = _root(_xml(env, started))
    encrypted = root.find(f"{{{SAML}}}EncryptedAssertion")
    assert encrypted is not None
    extensions = etree.Element(f"{{{SAMLP}}}Extensions")
    extensions.append(encrypted)
    status = root.find(f"{{{SAMLP}}}Status")
    assert status is not None
    status.addprevious(extensions)
    refused(env, started, _b64(root), "wrapping-place", caplog)


def test_an_encrypted_assertion_wrapping_the_signed_one_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone can encrypt for our public key: an attacker's encrypted evil assertion that
    carries the genuine signed one inside is opened and refused (the shape is checked again
    after decryption)."""
    started = start_at_node(env, "substantieel", "DE")
    plain = _root(_xml(env, started, encrypt=False, sign_response=False))
    original = _assertion(plain)
    evil = _evil(original)
    plain.replace(original, evil)
    # An Extensions-like hiding place inside the assertion is not schema-valid; hide it in
    # the evil assertion's Advice, which takes any assertion.
    advice = etree.Element(f"{{{SAML}}}Advice")
    advice.append(original)
    conditions = evil.find(f"{{{SAML}}}Conditions")
    assert conditions is not None
    conditions.addnext(advice)
    encrypted = env.node.encrypt_assertion(etree.tostring(plain, encoding="unicode"))
    signed = env.node.sign_response(encrypted)  # even a node-signed Response cannot help
    refused(env, started, encode(signed), "wrapping-inner", caplog)


# --- signatures ---------------------------------------------------------------------------


def test_a_response_without_its_signature_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial",
                                             sign_response=False)
    refused(env, started, saml_response, "response-unsigned", caplog)


def test_an_assertion_without_its_signature_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial",
                                             sign_assertion=False)
    refused(env, started, saml_response, "assertion-unsigned", caplog)


def test_a_signature_removed_from_a_signed_response_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    root = _root(_xml(env, started))
    signature = root.find(f"{{{DS}}}Signature")
    assert signature is not None
    root.remove(signature)
    refused(env, started, _b64(root), "response-unsigned", caplog)


def test_a_changed_signed_response_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    root = _root(_xml(env, started))
    root.set("Consent", "urn:oasis:names:tc:SAML:2.0:consent:prior")
    refused(env, started, _b64(root), "response-signature", caplog)


def test_a_self_signed_certificate_in_keyinfo_is_ignored(
    env: Env, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """An attacker's own node (same entity ID, its own key, its certificate in KeyInfo)."""
    from gateway.eidas_sim.node import SimulatedNode

    started = start_at_node(env, "substantieel", "DE")
    metadata = env.client.get("/eidas/metadata").data
    forger = SimulatedNode(env.node.base_url, tmp_path / "forger", metadata)
    saml_response, _ = forger.response_for(started.saml_request, "de-substantial")
    assert forger.keys.cert_b64 in base64.b64decode(saml_response).decode()
    refused(env, started, saml_response, "response-signature", caplog)


def test_a_self_signed_assertion_in_an_unsigned_response_is_refused(
    assertion_only_env: Env, caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    """Only the assertion signed, by the attacker's key (its certificate in KeyInfo), on a
    route that does not insist on a signed Response."""
    from gateway.eidas_sim.node import SimulatedNode

    env = assertion_only_env
    started = start_at_node(env, "substantieel", "DE")
    forger = SimulatedNode(env.node.base_url, tmp_path / "forger",
                           env.client.get("/eidas/metadata").data)
    saml_response, _ = forger.response_for(started.saml_request, "de-substantial",
                                           sign_response=False)
    refused(env, started, saml_response, "assertion-signature", caplog)


# --- XML parsing --------------------------------------------------------------------------


@pytest.mark.parametrize("doctype", [
    '<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    '<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd">',
])
def test_dtd_and_external_entities_are_refused(
    env: Env, caplog: pytest.LogCaptureFixture, doctype: str
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    xml = _xml(env, started)
    refused(env, started, encode(doctype + xml), "dtd", caplog)


def test_an_oversized_response_is_refused(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    started = start_at_node(env, "substantieel", "DE")
    refused(env, started, "A" * 180_000, "size", caplog)


@pytest.mark.parametrize(("value", "reason"), [
    ("not base64!", "encoding"),
    (encode("<not-closed"), "xml"),
    (encode("<samlp:Response xmlns:samlp='urn:oasis:names:tc:SAML:2.0:protocol'/>"), "schema"),
    (encode("<saml:Issuer xmlns:saml='urn:oasis:names:tc:SAML:2.0:assertion'>x</saml:Issuer>"),
     "not-response"),
], ids=["encoding", "xml", "schema", "not-response"])
def test_garbage_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture, value: str, reason: str
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    refused(env, started, value, reason, caplog)


# --- who it is for, and when ---------------------------------------------------------------


@pytest.mark.parametrize(("override", "reason"), [
    ({"audience": "http://127.0.0.1:8000/saml/idp/metadata"}, "audience"),
    ({"destination": "http://127.0.0.1:8000/saml/idp/sso"}, "destination"),
    ({"recipient": "http://127.0.0.1:8000/saml/idp/sso"}, "recipient"),
    ({"issuer": "http://127.0.0.1:8003/metadata"}, "issuer"),
])
def test_an_answer_for_somebody_else_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture, override: dict[str, str], reason: str
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    refused(env, started, encode(_xml(env, started, **override)), reason, caplog)


def test_an_answer_to_another_browsers_request_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong InResponseTo: a genuine answer to a request a different browser sent."""
    other = Env(env.app, env.app.test_client(), env.node)
    theirs = start_at_node(other, "substantieel", "DE")
    mine = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(theirs.saml_request, "de-substantial")
    refused(env, mine, saml_response, "flow", caplog, relay_state=theirs.relay_state)
    assert flow_state(env.app, theirs.flow_id) == ("external", None)


def test_an_assertion_answering_another_request_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong InResponseTo inside the assertion (the Response's own is right)."""
    started = start_at_node(env, "substantieel", "DE")
    xml = env.node.unsigned_response_xml(_request(env, started), _person())
    root = _root(xml)
    data = root.find(f".//{{{SAML}}}SubjectConfirmationData")
    assert data is not None
    data.set("InResponseTo", "_another" + "0" * 40)
    signed = env.node.sign_response(env.node.encrypt_assertion(
        env.node.sign_assertion(etree.tostring(root, encoding="unicode"))))
    refused(env, started, encode(signed), "in-response-to", caplog)


def test_an_answer_to_an_unknown_request_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    xml = _xml(env, started, in_response_to="_unknown" + "0" * 40)
    refused(env, started, encode(xml), "unsolicited", caplog)


def test_an_unsolicited_answer_is_refused(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """IdP-initiated: no InResponseTo at all."""
    started = start_at_node(env, "substantieel", "DE")
    root = _root(env.node.unsigned_response_xml(_request(env, started), _person()))
    del root.attrib["InResponseTo"]
    data = root.find(f".//{{{SAML}}}SubjectConfirmationData")
    assert data is not None
    del data.attrib["InResponseTo"]
    signed = env.node.sign_response(env.node.encrypt_assertion(
        env.node.sign_assertion(etree.tostring(root, encoding="unicode"))))
    refused(env, started, encode(signed), "unsolicited", caplog)


def test_an_expired_assertion_is_refused(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    started = start_at_node(env, "substantieel", "DE")
    xml = _xml(env, started, lifetime=timedelta(minutes=1))
    with clock.frozen(clock.now() + timedelta(minutes=5)):
        refused(env, started, encode(xml), "confirmation-expired", caplog)


def _resigned(env: Env, root: etree._Element) -> str:
    """An unsigned Response changed by a test, then signed and encrypted as the node would."""
    xml = etree.tostring(root, encoding="unicode")
    return encode(env.node.sign_response(env.node.encrypt_assertion(
        env.node.sign_assertion(xml))))


def _unsigned_root(env: Env, started: Started, person: str = "de-substantial") -> Any:
    return _root(env.node.unsigned_response_xml(_request(env, started), _person(person)))


@pytest.mark.parametrize(("attribute", "shift", "reason"), [
    ("NotOnOrAfter", timedelta(minutes=-4), "expired"),
    ("NotBefore", timedelta(minutes=4), "not-yet-valid"),
])
def test_conditions_outside_their_window_are_refused(
    env: Env, caplog: pytest.LogCaptureFixture, attribute: str, shift: timedelta, reason: str,
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    root = _unsigned_root(env, started)
    conditions = root.find(f".//{{{SAML}}}Conditions")
    assert conditions is not None
    conditions.set(attribute, (clock.now() + shift).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    refused(env, started, _resigned(env, root), reason, caplog)


def test_an_assertion_from_another_issuer_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    root = _unsigned_root(env, started)
    issuer = root.find(f"{{{SAML}}}Assertion/{{{SAML}}}Issuer")
    assert issuer is not None
    issuer.text = "http://127.0.0.1:8003/metadata"
    refused(env, started, _resigned(env, root), "assertion-issuer", caplog)


def test_a_malformed_person_identifier_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The receiving state must be NL: an identifier minted for another connector."""
    started = start_at_node(env, "substantieel", "DE")
    root = _unsigned_root(env, started)
    for attribute in root.iter(f"{{{SAML}}}Attribute"):
        if attribute.get("Name") == PERSON_ID:
            attribute[0].text = "DE/BE/123456"
    refused(env, started, _resigned(env, root), "attributes", caplog)


def test_a_plain_assertion_is_refused_when_encryption_is_required(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial",
                                             encrypt=False)
    refused(env, started, saml_response, "not-encrypted", caplog)


def test_an_assertion_encrypted_for_another_key_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    xml = env.node.sign_assertion(env.node.unsigned_response_xml(_request(env, started),
                                                                 _person()))
    other = env.node.keys.cert_path.read_bytes()  # the node's own certificate, not ours
    saml_response = encode(env.node.sign_response(env.node.encrypt_assertion(xml, other)))
    refused(env, started, saml_response, "decrypt", caplog)


def test_an_assertion_from_the_future_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    xml = _xml(env, started, now=clock.now() + timedelta(minutes=10))
    refused(env, started, encode(xml), "issue-instant", caplog)


def test_a_replayed_answer_is_refused(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A genuine answer used once by its owner, then replayed in the attacker's browser."""
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial")
    continued(post_answer(env, started, saml_response))
    attacker = Env(env.app, env.app.test_client(), env.node)
    theirs = start_at_node(attacker, "substantieel", "DE")
    refused(attacker, theirs, saml_response, "replay", caplog, sso_before=1,
            relay_state=started.relay_state)


def test_a_replayed_assertion_in_a_new_response_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The assertion ID is remembered too: a used assertion wrapped in a fresh Response (new
    ID, signed by the node) to the same request is refused before anything else is looked at."""
    started = start_at_node(env, "substantieel", "DE")
    request = _request(env, started)
    used = _root(env.node.response_xml(request, _person()))
    continued(post_answer(env, started, _b64(used)))
    fresh = _root(env.node.unsigned_response_xml(request, _person()))
    fresh.replace(_assertion(fresh), copy.deepcopy(used.find(f"{{{SAML}}}EncryptedAssertion")))
    saml_response = encode(env.node.sign_response(etree.tostring(fresh, encoding="unicode")))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=REASON_LOGGER):
        page = post_answer(env, started, saml_response)
    assert page.status_code == 400
    assert [r.getMessage() for r in caplog.records if r.name == REASON_LOGGER] == [
        "eIDAS response refused: replay-assertion"]
    assert sso_count(env.app) == 1


def test_a_second_answer_to_one_request_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Two genuine answers to one request (a node retrying): only the first counts."""
    started = start_at_node(env, "substantieel", "DE")
    request = _request(env, started)
    first = encode(env.node.response_xml(request, _person()))
    second = encode(env.node.response_xml(request, _person()))
    continued(post_answer(env, started, first))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=REASON_LOGGER):
        page = post_answer(env, started, second)
    assert page.status_code == 400
    assert [r.getMessage() for r in caplog.records if r.name == REASON_LOGGER] == [
        "eIDAS response refused: unsolicited"]
    assert sso_count(env.app) == 1


def test_an_answer_after_choosing_another_way_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.eidas_helpers import csrf

    started = start_at_node(env, "substantieel", "DE")
    page = env.client.get(f"/login/{started.flow_id}?lang=en")
    env.client.post(f"/login/{started.flow_id}/again",
                    data={"csrf_token": csrf(page.get_data(as_text=True))})
    assert flow_state(env.app, started.flow_id)[0] == "choose_route"
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=REASON_LOGGER):
        page = post_answer(env, started, saml_response)
    assert page.status_code == 400
    assert [r.getMessage() for r in caplog.records if r.name == REASON_LOGGER] == [
        "eIDAS response refused: late"]
    assert flow_state(env.app, started.flow_id)[0] == "choose_route"
    assert sso_count(env.app) == 0


def test_an_answer_to_an_older_request_of_the_flow_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Back to the choice and eIDAS again: the flow sent a second request. The answer to the
    first (still unanswered, still unexpired) is late; the answer to the second logs in."""
    from tests.eidas_helpers import csrf, post_fields

    first = start_at_node(env, "substantieel", "DE")
    page = env.client.get(f"/login/{first.flow_id}?lang=en")
    env.client.post(f"/login/{first.flow_id}/again",
                    data={"csrf_token": csrf(page.get_data(as_text=True))})
    page = env.client.get(f"/login/{first.flow_id}?lang=en")
    page = env.client.post(f"/login/{first.flow_id}/route?lang=en", data={
        "csrf_token": csrf(page.get_data(as_text=True)), "route": "eidas", "country": "DE",
    })
    _action, fields = post_fields(page.get_data(as_text=True))
    assert fields["SAMLRequest"] != first.saml_request
    old, _ = env.node.response_for(first.saml_request, "de-substantial")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=REASON_LOGGER):
        answer = post_answer(env, first, old)
    assert answer.status_code == 400
    assert [r.getMessage() for r in caplog.records if r.name == REASON_LOGGER] == [
        "eIDAS response refused: superseded"]
    assert flow_state(env.app, first.flow_id)[0] == "external"
    assert sso_count(env.app) == 0
    new, _ = env.node.response_for(fields["SAMLRequest"], "de-substantial")
    answer = env.client.post("/eidas/acs?lang=en", data={
        "SAMLResponse": new, "RelayState": fields["RelayState"]})
    assert answer.status_code == 200
    assert sso_count(env.app) == 1


def test_a_wrong_relay_state_is_refused(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial")
    refused(env, started, saml_response, "relay-state", caplog, relay_state="x" * 32)


# --- what it proves -----------------------------------------------------------------------


def test_a_loa_below_the_request_is_refused(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial", loa=LOW)
    refused(env, started, saml_response, "loa-below-request", caplog)


def test_an_eid_of_another_country_than_chosen_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "es-substantial")
    refused(env, started, saml_response, "country", caplog)


def test_an_answer_without_the_browsers_session_is_posted_again_same_site(env: Env) -> None:
    """The session cookie is SameSite=Lax: a cross-site POST arrives without it. The ACS then
    posts the same fields again from our own origin; a browser without any login is refused."""
    started = start_at_node(env, "substantieel", "DE")
    saml_response, _ = env.node.response_for(started.saml_request, "de-substantial")
    stranger = env.app.test_client()
    page = stranger.post("/eidas/acs?lang=en", data={
        "SAMLResponse": saml_response, "RelayState": started.relay_state})
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and 'name="continue" value="1"' in body
    page = stranger.post("/eidas/acs?lang=en", data={
        "SAMLResponse": saml_response, "RelayState": started.relay_state, "continue": "1"})
    assert page.status_code == 400
    assert flow_state(env.app, started.flow_id) == ("external", None)
