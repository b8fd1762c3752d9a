"""The in-process XML-security backend for pysaml2 (issue 7 item 5).

Interop with pysaml2's stock xmlsec1 backend both ways, encryption, every refusal the backend
owes (tampering, wrong keys, KeyInfo keys, wrapping, weak algorithms, DTDs), and a full
pysaml2 IdP <-> SP round trip with signed, encrypted assertions.
"""

from __future__ import annotations

import base64
import copy
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, class_name, saml, samlp
from saml2.client import Saml2Client
from saml2.config import IdPConfig, SPConfig
from saml2.metadata import entity_descriptor
from saml2.response import IncorrectlySigned
from saml2.saml import NAMEID_FORMAT_PERSISTENT, NameID
from saml2.server import Server
from saml2.sigver import (
    CryptoBackendXmlSec1,
    CryptoBackendXMLSecurity,
    DecryptError,
    EncryptError,
    MissingKey,
    SignatureError,
    get_xmlsec_binary,
    pre_encrypt_assertion,
    pre_encryption_part,
    pre_signature_part,
)
from saml2.xmldsig import DIGEST_SHA1, DIGEST_SHA256, SIG_RSA_SHA1, SIG_RSA_SHA256

from gateway.idp.saml import crypto
from gateway.idp.saml.crypto import (
    AES256_CBC,
    CryptoBackendXmlSecInProcess,
    backend_from_settings,
    make_security_context,
    pysaml2_backend_name,
    use_crypto,
)
from gateway.keys import get_keys
from gateway.settings import Settings, SettingsError

HAVE_XMLSEC1 = shutil.which("xmlsec1") is not None
needs_xmlsec1 = pytest.mark.skipif(not HAVE_XMLSEC1, reason="the xmlsec1 program is not installed")

IDP = "https://idp.example.org/saml/idp/metadata"
SP = "https://sp.example.org/saml/metadata"
ACS = "https://sp.example.org/saml/acs"
SSO = "https://idp.example.org/saml/idp/sso"
ASSERTION = class_name(saml.Assertion())
RESPONSE = class_name(samlp.Response())
PASSWORD_PROTECTED = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"


@dataclass(frozen=True)
class Party:
    """A throwaway key pair on disk, as pysaml2 wants it."""

    key_file: str
    cert_file: str

    @property
    def cert_b64(self) -> str:
        return "".join(Path(self.cert_file).read_text().strip().splitlines()[1:-1])


def _party(folder: Path, name: str, *, curve: bool = False) -> Party:
    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if curve
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = folder / f"{name}.key.pem", folder / f"{name}.crt.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Party(str(key_file), str(cert_file))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Party]:
    folder = tmp_path_factory.mktemp("saml-pki")
    return {
        name: _party(folder, name, curve=name == "ec") for name in ("idp", "sp", "attacker", "ec")
    }


@pytest.fixture(scope="module")
def ours() -> CryptoBackendXmlSecInProcess:
    return CryptoBackendXmlSecInProcess()


@pytest.fixture(scope="module")
def stock() -> CryptoBackendXmlSec1:
    if not HAVE_XMLSEC1:
        pytest.skip("the xmlsec1 program is not installed")
    return CryptoBackendXmlSec1(get_xmlsec_binary())


# -- pysaml2 entities ---------------------------------------------------------------------


def _idp_dict(pki: dict[str, Party], backend: str) -> dict[str, Any]:
    return {
        "entityid": IDP,
        "key_file": pki["idp"].key_file,
        "cert_file": pki["idp"].cert_file,
        "crypto_backend": pysaml2_backend_name(backend),
        "signing_algorithm": SIG_RSA_SHA256,
        "digest_algorithm": DIGEST_SHA256,
        "service": {
            "idp": {
                "endpoints": {
                    "single_sign_on_service": [
                        (SSO, BINDING_HTTP_POST),
                        (SSO, BINDING_HTTP_REDIRECT),
                    ]
                },
                "want_authn_requests_signed": True,
                # pysaml2 reads an entity's algorithms from its service section only.
                "signing_algorithm": SIG_RSA_SHA256,
                "digest_algorithm": DIGEST_SHA256,
                "name_id_format": [NAMEID_FORMAT_PERSISTENT],
                "policy": {"default": {"lifetime": {"minutes": 5}}},
            }
        },
    }


def _sp_dict(pki: dict[str, Party], backend: str) -> dict[str, Any]:
    return {
        "entityid": SP,
        "key_file": pki["sp"].key_file,
        "cert_file": pki["sp"].cert_file,
        "encryption_keypairs": [{"key_file": pki["sp"].key_file, "cert_file": pki["sp"].cert_file}],
        "crypto_backend": pysaml2_backend_name(backend),
        "signing_algorithm": SIG_RSA_SHA256,
        "digest_algorithm": DIGEST_SHA256,
        "service": {
            "sp": {
                "endpoints": {"assertion_consumer_service": [(ACS, BINDING_HTTP_POST)]},
                "authn_requests_signed": True,
                "signing_algorithm": SIG_RSA_SHA256,
                "digest_algorithm": DIGEST_SHA256,
                "want_response_signed": True,
                "want_assertions_signed": True,
                "allow_unsolicited": False,
            }
        },
    }


@pytest.fixture(scope="module")
def metadata(pki: dict[str, Party]) -> dict[str, str]:
    """Each side's metadata, generated by pysaml2 from its configuration."""
    idp = IdPConfig().load(_idp_dict(pki, "inprocess"))
    sp = SPConfig().load(_sp_dict(pki, "inprocess"))
    return {"idp": str(entity_descriptor(idp)), "sp": str(entity_descriptor(sp))}


def make_idp(pki: dict[str, Party], metadata: dict[str, str], backend: str) -> Server:
    conf = _idp_dict(pki, backend) | {"metadata": {"inline": [metadata["sp"]]}}
    return use_crypto(Server(config=IdPConfig().load(conf)), backend)


def make_sp(pki: dict[str, Party], metadata: dict[str, str], backend: str) -> Saml2Client:
    conf = _sp_dict(pki, backend) | {"metadata": {"inline": [metadata["idp"]]}}
    return use_crypto(Saml2Client(config=SPConfig().load(conf)), backend)


@pytest.fixture(scope="module")
def idp(pki: dict[str, Party], metadata: dict[str, str]) -> Server:
    return make_idp(pki, metadata, "inprocess")


@pytest.fixture(scope="module")
def sp(pki: dict[str, Party], metadata: dict[str, str]) -> Saml2Client:
    return make_sp(pki, metadata, "inprocess")


def unsigned_response(idp: Server, *, issuer: str = IDP) -> samlp.Response:
    """A schema-valid authn response for the SP, not yet signed."""
    response = idp.create_authn_response(
        identity={"givenName": ["Jan"], "sn": ["Jansen"]},
        in_response_to="id-request-1",
        destination=ACS,
        sp_entity_id=SP,
        name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text="pairwise-123"),
        authn={"class_ref": PASSWORD_PROTECTED, "authn_auth": IDP},
        sign_response=False,
        sign_assertion=False,
        encrypt_assertion=False,
    )
    if isinstance(response, str):
        response = samlp.response_from_string(response)
    response.issuer.text = issuer
    response.assertion.issuer.text = issuer
    return response


def with_templates(
    response: samlp.Response,
    cert_b64: str,
    *,
    on_response: bool = True,
    on_assertion: bool = True,
    sign_alg: str = SIG_RSA_SHA256,
    digest_alg: str = DIGEST_SHA256,
) -> samlp.Response:
    response = copy.deepcopy(response)
    if on_assertion:
        response.assertion.signature = pre_signature_part(
            response.assertion.id, cert_b64, 2, sign_alg=sign_alg, digest_alg=digest_alg
        )
    if on_response:
        response.signature = pre_signature_part(
            response.id, cert_b64, 1, sign_alg=sign_alg, digest_alg=digest_alg
        )
    return response


def sign_both(backend: Any, response: samlp.Response, key_file: str) -> str:
    """Sign the assertion, then the response around it (the order pysaml2 uses)."""
    text = backend.sign_statement(str(response), ASSERTION, key_file, response.assertion.id)
    return str(backend.sign_statement(text, RESPONSE, key_file, response.id))


@pytest.fixture(scope="module")
def signed(idp: Server, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess) -> str:
    response = with_templates(unsigned_response(idp), pki["idp"].cert_b64)
    return sign_both(ours, response, pki["idp"].key_file)


def ids(xml: str) -> tuple[str, str]:
    root = etree.fromstring(xml.encode())
    assertion = root.find(f"{{{saml.NAMESPACE}}}Assertion")
    assert assertion is not None
    return root.get("ID") or "", assertion.get("ID") or ""


def refused_by_backend(backend: CryptoBackendXmlSecInProcess, xml: str, cert: str) -> str:
    response_id, assertion_id = ids(xml)
    messages = []
    for node_name, node_id in ((RESPONSE, response_id), (ASSERTION, assertion_id)):
        with pytest.raises(SignatureError) as caught:
            backend.validate_signature(xml, cert, "pem", node_name, node_id)
        messages.append(str(caught.value))
    return " | ".join(messages)


def refused_by_sp(sp: Saml2Client, xml: str) -> None:
    """The SP, through pysaml2's own checks (schema first, then the backend), refuses it."""
    with pytest.raises(Exception) as caught:
        sp.parse_authn_request_response(
            base64.b64encode(xml.encode()).decode(), BINDING_HTTP_POST, {"id-request-1": "/"}
        )
    assert not isinstance(caught.value, AssertionError)


def accepted_by_sp(sp: Saml2Client, xml: str) -> Any:
    return sp.parse_authn_request_response(
        base64.b64encode(xml.encode()).decode(), BINDING_HTTP_POST, {"id-request-1": "/"}
    )


def xmlsec_sign(
    root: etree._Element,
    host: etree._Element,
    uris_and_targets: list[tuple[str, etree._Element]],
    key_file: str,
    *,
    sign_method: Any = xmlsec.constants.TransformRsaSha256,
    digest: Any = xmlsec.constants.TransformSha256,
) -> None:
    """A cryptographically valid signature of any shape, placed after `host`'s Issuer, so a
    refusal can only come from the profile rules, never from a broken signature value."""
    signature = xmlsec.template.create(root, xmlsec.constants.TransformExclC14N, sign_method)
    for uri, _target in uris_and_targets:
        ref = xmlsec.template.add_reference(signature, digest, uri=uri)
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
    host.insert(1, signature)
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_file(key_file, xmlsec.constants.KeyDataFormatPem)
    for _uri, target in uris_and_targets:
        ctx.register_id(target, "ID")
    ctx.sign(signature)


# -- settings and wiring ------------------------------------------------------------------


def test_backend_setting_defaults_to_inprocess_and_names_the_variable() -> None:
    assert backend_from_settings(Settings()) == "inprocess"
    assert backend_from_settings(Settings(environ={"GATEWAY_SAML_CRYPTO": "xmlsec1"})) == "xmlsec1"
    for bad in ("XMLSecurity", "in-process", "xmlsec1; rm -rf /"):
        with pytest.raises(SettingsError, match="GATEWAY_SAML_CRYPTO"):
            backend_from_settings(Settings(environ={"GATEWAY_SAML_CRYPTO": bad}))
    with pytest.raises(SettingsError, match="GATEWAY_SAML_CRYPTO"):
        pysaml2_backend_name("nope")


def test_use_crypto_replaces_every_context_and_forces_metadata_keys(
    pki: dict[str, Party], metadata: dict[str, str]
) -> None:
    conf = _sp_dict(pki, "inprocess") | {
        "metadata": {"inline": [metadata["idp"]]},
        "only_use_keys_in_metadata": False,
    }
    client = use_crypto(Saml2Client(config=SPConfig().load(conf)), "inprocess")
    assert isinstance(client.sec.crypto, CryptoBackendXmlSecInProcess)
    assert client.metadata.security is client.sec
    assert client.sec.only_use_keys_in_metadata is True
    assert client.sec.sec_backend is not None  # HTTP-Redirect signing keeps working
    if HAVE_XMLSEC1:
        stock_client = make_sp(pki, metadata, "xmlsec1")
        assert isinstance(stock_client.sec.crypto, CryptoBackendXmlSec1)


def test_pysaml2_placeholder_backend_fails_closed(signed: str, pki: dict[str, Party]) -> None:
    """What pysaml2 builds before `use_crypto` runs can never verify anything."""
    response_id, _ = ids(signed)
    with pytest.raises(Exception):  # noqa: B017 - any failure will do, as long as it is not True
        CryptoBackendXMLSecurity().validate_signature(
            signed, pki["idp"].cert_file, "pem", RESPONSE, response_id
        )


def test_gateway_keys_sign_and_verify(
    app: Any, ours: CryptoBackendXmlSecInProcess, idp: Server
) -> None:
    key = get_keys(app).active("RS256")
    assert key.cert_path is not None
    pem = key.certificate_pem()
    assert pem is not None
    cert_b64 = "".join(pem.decode().strip().splitlines()[1:-1])
    response = with_templates(unsigned_response(idp), cert_b64)
    xml = sign_both(ours, response, str(key.key_path))
    response_id, assertion_id = ids(xml)
    assert ours.validate_signature(xml, str(key.cert_path), "pem", RESPONSE, response_id)
    assert ours.validate_signature(xml, str(key.cert_path), "pem", ASSERTION, assertion_id)


# -- interop with the stock backend -------------------------------------------------------


@needs_xmlsec1
@pytest.mark.parametrize("direction", ["ours-signs", "xmlsec1-signs"])
def test_interop_response_and_assertion(
    direction: str,
    idp: Server,
    pki: dict[str, Party],
    ours: CryptoBackendXmlSecInProcess,
    stock: CryptoBackendXmlSec1,
) -> None:
    signer, verifier = (ours, stock) if direction == "ours-signs" else (stock, ours)
    response = with_templates(unsigned_response(idp), pki["idp"].cert_b64)
    xml = sign_both(signer, response, pki["idp"].key_file)
    response_id, assertion_id = ids(xml)
    assert verifier.validate_signature(xml, pki["idp"].cert_file, "pem", RESPONSE, response_id)
    assert verifier.validate_signature(xml, pki["idp"].cert_file, "pem", ASSERTION, assertion_id)
    # ... and the other key does not verify it, on either side.
    for backend in (ours, stock):
        with pytest.raises(SignatureError):
            backend.validate_signature(xml, pki["sp"].cert_file, "pem", RESPONSE, response_id)


def test_ecdsa_sha256(
    idp: Server, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    ecdsa = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
    response = with_templates(
        unsigned_response(idp), pki["ec"].cert_b64, on_response=False, sign_alg=ecdsa
    )
    xml = ours.sign_statement(str(response), ASSERTION, pki["ec"].key_file, response.assertion.id)
    _, assertion_id = ids(xml)
    assert ours.validate_signature(xml, pki["ec"].cert_file, "pem", ASSERTION, assertion_id)
    with pytest.raises(SignatureError):
        ours.validate_signature(xml, pki["idp"].cert_file, "pem", ASSERTION, assertion_id)


# -- encryption ---------------------------------------------------------------------------


def _encrypted(
    backend: Any, idp: Server, pki: dict[str, Party], signer: CryptoBackendXmlSecInProcess
) -> tuple[str, str]:
    response = with_templates(unsigned_response(idp), pki["idp"].cert_b64, on_response=False)
    response = pre_encrypt_assertion(response)
    assertion_id = response.encrypted_assertion.extension_elements[0].attributes["ID"]
    xml = signer.sign_statement(str(response), ASSERTION, pki["idp"].key_file, assertion_id)
    template = pre_encryption_part(key_name="sp", encrypt_cert=pki["sp"].cert_b64)
    return backend.encrypt_assertion(xml, pki["sp"].cert_file, template), assertion_id


def test_sign_encrypt_decrypt(
    idp: Server, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    encrypted, assertion_id = _encrypted(ours, idp, pki, ours)
    assert "Jansen" not in encrypted and "pairwise-123" not in encrypted
    assert "xmlenc11#aes256-gcm" in encrypted and "rsa-oaep-mgf1p" in encrypted
    decrypted = ours.decrypt(encrypted, pki["sp"].key_file)
    assert "pairwise-123" in decrypted
    assert ours.validate_signature(decrypted, pki["idp"].cert_file, "pem", ASSERTION, assertion_id)
    with pytest.raises(DecryptError):
        ours.decrypt(encrypted, pki["attacker"].key_file)
    # GCM authenticates the ciphertext: one flipped bit and nothing comes out.
    root = etree.fromstring(encrypted.encode())
    value = root.findall(f".//{{{crypto.XENC_NS}}}CipherValue")[-1]
    raw = bytearray(base64.b64decode("".join((value.text or "").split())))
    raw[20] ^= 1
    value.text = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(DecryptError):
        ours.decrypt(etree.tostring(root).decode(), pki["sp"].key_file)


def test_decryption_failures_look_alike_and_cipher_references_refused(
    idp: Server, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    encrypted, _ = _encrypted(ours, idp, pki, ours)
    with pytest.raises(DecryptError) as wrong_key:
        ours.decrypt(encrypted, pki["attacker"].key_file)
    root = etree.fromstring(encrypted.encode())
    data_value = root.findall(f".//{{{crypto.XENC_NS}}}CipherValue")[-1]
    data_value.text = base64.b64encode(b"\x00" * 64).decode()
    with pytest.raises(DecryptError) as bad_data:
        ours.decrypt(etree.tostring(root).decode(), pki["sp"].key_file)
    assert str(wrong_key.value) == str(bad_data.value) == "cannot decrypt"
    # The ciphertext fetched from a URI of the sender's choosing: refused before any fetch.
    cipher_data = data_value.getparent()
    assert cipher_data is not None
    cipher_data.remove(data_value)
    etree.SubElement(cipher_data, f"{{{crypto.XENC_NS}}}CipherReference", URI="file:///etc/passwd")
    with pytest.raises(DecryptError, match="exactly one CipherValue"):
        ours.decrypt(etree.tostring(root).decode(), pki["sp"].key_file)


def test_encrypted_key_beside_the_encrypted_data(
    idp: Server, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    """Some IdPs put the EncryptedKey next to the EncryptedData, pointing back at it."""
    encrypted, assertion_id = _encrypted(ours, idp, pki, ours)
    root = etree.fromstring(encrypted.encode())
    data = root.find(f".//{{{crypto.XENC_NS}}}EncryptedData")
    key = root.find(f".//{{{crypto.XENC_NS}}}EncryptedKey")
    assert data is not None and key is not None and data.getparent() is not None
    key_info = key.getparent()
    assert key_info is not None
    key_info.remove(key)
    data.remove(key_info)
    references = etree.SubElement(key, f"{{{crypto.XENC_NS}}}ReferenceList")
    reference = etree.SubElement(references, f"{{{crypto.XENC_NS}}}DataReference")
    reference.set("URI", "#" + (data.get("Id") or ""))
    data.getparent().append(key)
    decrypted = ours.decrypt(etree.tostring(root).decode(), pki["sp"].key_file)
    assert ours.validate_signature(decrypted, pki["idp"].cert_file, "pem", ASSERTION, assertion_id)
    reference.set("URI", "#another")
    with pytest.raises(DecryptError, match="no usable EncryptedKey"):
        ours.decrypt(etree.tostring(root).decode(), pki["sp"].key_file)


def test_one_backend_shared_by_threads(
    idp: Server, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    response = with_templates(unsigned_response(idp), pki["idp"].cert_b64)

    def work(_: int) -> bool:
        xml = sign_both(ours, response, pki["idp"].key_file)
        response_id, _ignored = ids(xml)
        return bool(
            ours.validate_signature(xml, pki["idp"].cert_file, "pem", RESPONSE, response_id)
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(work, range(24)))


@needs_xmlsec1
def test_encryption_interop_and_legacy_algorithms_refused(
    idp: Server,
    pki: dict[str, Party],
    ours: CryptoBackendXmlSecInProcess,
    stock: CryptoBackendXmlSec1,
) -> None:
    encrypted, assertion_id = _encrypted(ours, idp, pki, ours)
    decrypted = stock.decrypt(encrypted, pki["sp"].key_file)
    assert stock.validate_signature(decrypted, pki["idp"].cert_file, "pem", ASSERTION, assertion_id)

    cbc = CryptoBackendXmlSecInProcess(data_encryption=AES256_CBC)
    encrypted_cbc, _ = _encrypted(cbc, idp, pki, ours)
    assert "aes256-cbc" in encrypted_cbc
    assert "pairwise-123" in stock.decrypt(encrypted_cbc, pki["sp"].key_file)

    # The stock backend with pysaml2's default template: 3DES, refused here.
    triple_des, _ = _encrypted(stock, idp, pki, ours)
    assert "tripledes-cbc" in triple_des
    with pytest.raises(DecryptError, match="not allowed"):
        ours.decrypt(triple_des, pki["sp"].key_file)
    # RSA PKCS#1 v1.5 key transport, refused as well.
    template = pre_encryption_part(
        msg_enc=crypto.AES128_CBC,
        key_enc="http://www.w3.org/2001/04/xmlenc#rsa-1_5",
        encrypt_cert=pki["sp"].cert_b64,
    )
    response = pre_encrypt_assertion(unsigned_response(idp))
    pkcs1 = stock.encrypt_assertion(
        str(response), pki["sp"].cert_file, template, key_type="aes-128"
    )
    assert "rsa-1_5" in pkcs1
    with pytest.raises(DecryptError, match="not allowed"):
        ours.decrypt(pkcs1, pki["sp"].key_file)


def test_encrypt_refuses_bad_input(
    idp: Server, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    template = pre_encryption_part(encrypt_cert=pki["sp"].cert_b64)
    no_assertion = str(samlp.Response(id="r1", version="2.0", issue_instant="2024-01-01T00:00:00Z"))
    with pytest.raises(EncryptError):
        ours.encrypt_assertion(no_assertion, pki["sp"].cert_file, template)
    response = str(pre_encrypt_assertion(unsigned_response(idp)))
    with pytest.raises(EncryptError):
        ours.encrypt_assertion(response, pki["ec"].cert_file, template)  # not an RSA key
    with pytest.raises(EncryptError):
        ours.encrypt_assertion(response, pki["sp"].cert_file, "<notEncryptedData/>")


# -- refusals -----------------------------------------------------------------------------


def test_valid_response_is_accepted_by_the_sp(sp: Saml2Client, signed: str) -> None:
    """The baseline every refusal below departs from: the unmodified response passes."""
    result = accepted_by_sp(sp, signed)
    assert result.name_id.text == "pairwise-123"
    assert result.ava["sn"] == ["Jansen"]


def test_tampered_value_refused(
    sp: Saml2Client, signed: str, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    tampered = signed.replace("pairwise-123", "pairwise-999")
    assert tampered != signed
    refused_by_backend(ours, tampered, pki["idp"].cert_file)
    refused_by_sp(sp, tampered)


def test_removed_signature_refused(
    sp: Saml2Client, signed: str, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    root = etree.fromstring(signed.encode())
    for signature in root.iter(f"{{{crypto.DS_NS}}}Signature"):
        signature.getparent().remove(signature)
    stripped = etree.tostring(root).decode()
    assert "exactly one Signature" in refused_by_backend(ours, stripped, pki["idp"].cert_file)
    refused_by_sp(sp, stripped)


def test_signature_by_another_key_refused(
    idp: Server, sp: Saml2Client, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    # Signed by a key the SP knows, but not the issuer's (the SP's own key).
    response = with_templates(unsigned_response(idp), pki["sp"].cert_b64)
    xml = sign_both(ours, response, pki["sp"].key_file)
    refused_by_backend(ours, xml, pki["idp"].cert_file)
    refused_by_sp(sp, xml)


def test_self_signed_certificate_in_keyinfo_refused(
    idp: Server,
    sp: Saml2Client,
    pki: dict[str, Party],
    ours: CryptoBackendXmlSecInProcess,
    metadata: dict[str, str],
) -> None:
    # The attacker signs with its own key and ships its self-signed certificate in KeyInfo.
    response = with_templates(unsigned_response(idp), pki["attacker"].cert_b64)
    xml = sign_both(ours, response, pki["attacker"].key_file)
    assert pki["attacker"].cert_b64[:40] in xml
    refused_by_backend(ours, xml, pki["idp"].cert_file)
    refused_by_sp(sp, xml)
    # From an issuer without metadata: no key at all, even with only_use_keys_in_metadata off.
    stranger = with_templates(
        unsigned_response(idp, issuer="https://evil.example"), pki["attacker"].cert_b64
    )
    conf = _sp_dict(pki, "inprocess") | {
        "metadata": {"inline": [metadata["idp"]]},
        "only_use_keys_in_metadata": False,
    }
    lax = use_crypto(Saml2Client(config=SPConfig().load(conf)), "inprocess")
    with pytest.raises(MissingKey):
        accepted_by_sp(lax, sign_both(ours, stranger, pki["attacker"].key_file))


def test_two_references_refused(
    idp: Server, sp: Saml2Client, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    root = etree.fromstring(str(unsigned_response(idp)).encode())
    assertion = root.find(f"{{{saml.NAMESPACE}}}Assertion")
    assert assertion is not None
    xmlsec_sign(
        root,
        root,
        [("#" + root.get("ID", ""), root), ("#" + assertion.get("ID", ""), assertion)],
        pki["idp"].key_file,
    )
    xml = etree.tostring(root).decode()
    with pytest.raises(SignatureError, match="exactly one Reference"):
        ours.validate_signature(xml, pki["idp"].cert_file, "pem", RESPONSE, root.get("ID"))
    refused_by_sp(sp, xml)


def test_reference_to_another_id_refused(
    idp: Server, sp: Saml2Client, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    # A valid signature in the Response that covers only the Assertion.
    root = etree.fromstring(str(unsigned_response(idp)).encode())
    assertion = root.find(f"{{{saml.NAMESPACE}}}Assertion")
    assert assertion is not None
    xmlsec_sign(root, root, [("#" + assertion.get("ID", ""), assertion)], pki["idp"].key_file)
    xml = etree.tostring(root).decode()
    with pytest.raises(SignatureError, match="does not point at the signed element"):
        ours.validate_signature(xml, pki["idp"].cert_file, "pem", RESPONSE, root.get("ID"))
    refused_by_sp(sp, xml)


def test_signature_wrapping_with_duplicate_id_refused(
    sp: Saml2Client, signed: str, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    """XSW: an evil assertion carries the signed one's ID; the signed original hides in it."""
    root = etree.fromstring(signed.encode())
    original = root.find(f"{{{saml.NAMESPACE}}}Assertion")
    assert original is not None
    evil = copy.deepcopy(original)
    evil.find(f".//{{{saml.NAMESPACE}}}NameID").text = "someone-else"  # type: ignore[union-attr]
    response_signature = root.find(f"{{{crypto.DS_NS}}}Signature")
    assert response_signature is not None
    root.remove(response_signature)  # the attacker cannot keep the response signature valid
    root.replace(original, evil)
    extensions = etree.SubElement(evil, f"{{{saml.NAMESPACE}}}Advice")
    extensions.append(original)
    xml = etree.tostring(root).decode()
    with pytest.raises(SignatureError, match="exactly once"):
        ours.validate_signature(xml, pki["idp"].cert_file, "pem", ASSERTION, original.get("ID"))
    refused_by_sp(sp, xml)


def test_sha1_refused_unless_allowed(
    idp: Server, sp: Saml2Client, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    legacy = CryptoBackendXmlSecInProcess(allow_sha1=True)
    response = with_templates(
        unsigned_response(idp), pki["idp"].cert_b64, sign_alg=SIG_RSA_SHA1, digest_alg=DIGEST_SHA1
    )
    with pytest.raises(SignatureError, match="not allowed"):
        ours.sign_statement(str(response), RESPONSE, pki["idp"].key_file, response.id)
    xml = sign_both(legacy, response, pki["idp"].key_file)
    response_id, _ = ids(xml)
    assert legacy.validate_signature(xml, pki["idp"].cert_file, "pem", RESPONSE, response_id)
    assert "method not allowed" in refused_by_backend(ours, xml, pki["idp"].cert_file)
    refused_by_sp(sp, xml)
    # Even with SHA-1 allowed, a SHA-1 digest under an RSA-SHA256 signature is refused by ours.
    mixed = with_templates(unsigned_response(idp), pki["idp"].cert_b64, digest_alg=DIGEST_SHA1)
    with pytest.raises(SignatureError, match="digest method not allowed"):
        ours.sign_statement(str(mixed), RESPONSE, pki["idp"].key_file, mixed.id)


def test_pysaml2_default_sha1_signing_fails_loudly(
    pki: dict[str, Party], metadata: dict[str, str]
) -> None:
    conf = _idp_dict(pki, "inprocess") | {"metadata": {"inline": [metadata["sp"]]}}
    del conf["signing_algorithm"], conf["digest_algorithm"]
    del conf["service"]["idp"]["signing_algorithm"], conf["service"]["idp"]["digest_algorithm"]
    server = use_crypto(Server(config=IdPConfig().load(conf)), "inprocess")
    with pytest.raises(SignatureError):
        server.create_authn_response(
            identity={"sn": ["Jansen"]},
            in_response_to="id-request-1",
            destination=ACS,
            sp_entity_id=SP,
            name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text="pairwise-123"),
            authn={"class_ref": PASSWORD_PROTECTED, "authn_auth": IDP},
            sign_response=True,
            sign_assertion=True,
            sign_alg=None,
            digest_alg=None,
        )


@pytest.mark.parametrize(
    "prolog",
    [
        '<!DOCTYPE r [<!ENTITY x "pairwise-123">]>',
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd">',
        '<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    ],
)
def test_dtd_and_entities_refused_everywhere(
    prolog: str, signed: str, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    body = signed.split("\n", 1)[1]
    if "ENTITY x" in prolog:
        body = body.replace("pairwise-123", "&x;")
    elif "ENTITY b" in prolog:
        body = body.replace("pairwise-123", "&b;")
    xml = prolog + body
    response_id, assertion_id = ids(signed)
    for node_name, node_id in ((RESPONSE, response_id), (ASSERTION, assertion_id)):
        with pytest.raises(SignatureError, match="DTD"):
            ours.validate_signature(xml, pki["idp"].cert_file, "pem", node_name, node_id)
    with pytest.raises(SignatureError, match="DTD"):
        ours.sign_statement(xml, RESPONSE, pki["idp"].key_file, response_id)
    with pytest.raises(DecryptError):
        ours.decrypt(xml, pki["sp"].key_file)
    with pytest.raises(EncryptError):
        ours.encrypt_assertion(xml, pki["sp"].cert_file, pre_encryption_part())


@pytest.mark.parametrize(
    "garbage",
    ["", "not xml", "<a>", "\x00\x01", "<a xmlns:x='y'><x:b/></a>" * 2, b"\xff\xfe<a/>"],
)
def test_garbage_refused(
    garbage: Any, pki: dict[str, Party], ours: CryptoBackendXmlSecInProcess
) -> None:
    with pytest.raises(SignatureError):
        ours.validate_signature(garbage, pki["idp"].cert_file, "pem", RESPONSE, "id-1")
    with pytest.raises(DecryptError):
        ours.decrypt(garbage, pki["sp"].key_file)


def test_oversized_document_refused(signed: str, pki: dict[str, Party]) -> None:
    small = CryptoBackendXmlSecInProcess(max_document_bytes=len(signed.encode()) - 1)
    response_id, _ = ids(signed)
    with pytest.raises(SignatureError, match="too large"):
        small.validate_signature(signed, pki["idp"].cert_file, "pem", RESPONSE, response_id)


# -- the whole exchange -------------------------------------------------------------------

ROUND_TRIPS = [
    ("inprocess", "inprocess", True),
    pytest.param("inprocess", "xmlsec1", True, marks=needs_xmlsec1),
    # pysaml2's stock encryption is 3DES, which this backend refuses: signed only.
    pytest.param("xmlsec1", "inprocess", False, marks=needs_xmlsec1),
]


@pytest.mark.parametrize(("idp_backend", "sp_backend", "encrypt"), ROUND_TRIPS)
def test_full_round_trip(
    idp_backend: str,
    sp_backend: str,
    encrypt: bool,
    pki: dict[str, Party],
    metadata: dict[str, str],
) -> None:
    server = make_idp(pki, metadata, idp_backend)
    client = make_sp(pki, metadata, sp_backend)

    request_id, request = client.create_authn_request(SSO, sign=True)
    assert isinstance(request, str) and "SignatureValue" in request
    parsed = server.parse_authn_request(
        base64.b64encode(request.encode()).decode(), BINDING_HTTP_POST
    )
    assert parsed.message.id == request_id
    assert parsed.message.issuer.text == SP
    # A request with its signature broken is refused by the IdP.
    forged = request.replace(f'Destination="{SSO}"', f'Destination="{SSO}/"')
    assert forged != request
    with pytest.raises(IncorrectlySigned):
        server.parse_authn_request(base64.b64encode(forged.encode()).decode(), BINDING_HTTP_POST)

    response = server.create_authn_response(
        identity={"givenName": ["Jan"], "sn": ["Jansen"]},
        in_response_to=request_id,
        destination=ACS,
        sp_entity_id=SP,
        name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text="pairwise-123"),
        authn={"class_ref": PASSWORD_PROTECTED, "authn_auth": IDP},
        sign_response=True,
        sign_assertion=True,
        encrypt_assertion=encrypt,
    )
    text = str(response)
    assert ("EncryptedData" in text) is encrypt
    assert ("pairwise-123" in text) is not encrypt
    result = client.parse_authn_request_response(
        base64.b64encode(text.encode()).decode(), BINDING_HTTP_POST, {request_id: "/"}
    )
    assert result.name_id.text == "pairwise-123"
    assert result.ava["givenName"] == ["Jan"]
    assert result.assertion.signature is not None
    assert result.authn_info()[0][0] == PASSWORD_PROTECTED


def test_xmlsec1_selected_without_the_program(
    pki: dict[str, Party], metadata: dict[str, str]
) -> None:
    conf = SPConfig().load(_sp_dict(pki, "inprocess") | {"xmlsec_binary": "/nonexistent/xmlsec1"})
    with pytest.raises(SettingsError, match="GATEWAY_SAML_CRYPTO"):
        make_security_context(conf, "xmlsec1")
