"""An in-process XML Signature and XML Encryption backend for pysaml2, and how to plug it in.

pysaml2's stock backend (`saml2.sigver.CryptoBackendXmlSec1`) writes temporary files and runs
the `xmlsec1` program for every signature, verification, encryption and decryption: about
70 ms each. `CryptoBackendXmlSecInProcess` does the same work through python-xmlsec (libxmlsec1
bound to lxml's libxml2) in the calling thread, and is stricter than the stock backend:

- XML is parsed without DTDs, entity expansion, network access or huge-tree mode, and a
  document that carries a DOCTYPE is refused outright (XXE, billion laughs).
- Verification follows the XML Signature profile of SAML 2.0 Core, section 5.4: the signed
  element is found by its ID, which must occur exactly once in the document; it carries exactly
  one `ds:Signature` child, with exactly one `ds:Reference` whose URI is `#<that ID>`, only the
  enveloped-signature and exclusive-c14n transforms, exclusive c14n as canonicalization and no
  `ds:Object`. Only the signed element's ID is registered, so a reference can resolve to nothing
  else (signature wrapping, CVE-2021-21239's family).
- The verification key is only the certificate pysaml2 passes in (from the peer's metadata);
  the document's `ds:KeyInfo` is never read, so a certificate an attacker embeds is ignored
  (CVE-2021-21239: xmlsec1 used to accept keys from KeyInfo).
- RSA-SHA256 and ECDSA-SHA256 signatures with SHA-256 digests; SHA-1 only when a caller
  explicitly allows it. The same rules apply when signing, so a misconfigured pysaml2 (whose own
  default is still RSA-SHA1) fails loudly instead of producing weak signatures.
- Encryption uses AES-GCM (XML Encryption 1.1) by default with RSA-OAEP key transport, never
  3DES or RSA PKCS#1 v1.5 (Bleichenbacher); decryption refuses those as well.

Schema validation before verification (CVE-2021-21238) is done by pysaml2 itself in
`SecurityContext._check_signature`, which calls this backend's `validate_signature` only after
`saml2.xml.schema.validate` passed; the backend is therefore used through a `SecurityContext`,
never around it. Build one with `make_security_context`, or give a pysaml2 `Server`/`Saml2Client`
this backend with `use_crypto` (see docs/saml-crypto.md):

    config = IdPConfig().load({..., "crypto_backend": pysaml2_backend_name(backend)})
    server = use_crypto(Server(config=config), backend)

`backend` comes from `backend_from_settings(settings)` (GATEWAY_SAML_CRYPTO = inprocess |
xmlsec1, default inprocess); the xmlsec1 backend stays selectable.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, TypeVar

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from saml2 import SamlBase
from saml2.sigver import (
    ASSERT_XPATH,
    CryptoBackend,
    CryptoBackendXmlSec1,
    DecryptError,
    EncryptError,
    RSACrypto,
    SecurityContext,
    SignatureError,
    SigverError,
    get_xmlsec_binary,
    import_rsa_key_from_file,
    pre_encrypt_assertion,
)

from gateway.settings import Settings, SettingsError

#: The settings variable that selects the backend, and its values.
SETTING: Final = "GATEWAY_SAML_CRYPTO"
INPROCESS: Final = "inprocess"
XMLSEC1: Final = "xmlsec1"
BACKENDS: Final = (INPROCESS, XMLSEC1)

DS_NS: Final = "http://www.w3.org/2000/09/xmldsig#"
XENC_NS: Final = "http://www.w3.org/2001/04/xmlenc#"
XENC11_NS: Final = "http://www.w3.org/2009/xmlenc11#"

SIG_RSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SIG_ECDSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
SIG_RSA_SHA1: Final = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
DIGEST_SHA256: Final = "http://www.w3.org/2001/04/xmlenc#sha256"
DIGEST_SHA1: Final = "http://www.w3.org/2000/09/xmldsig#sha1"
TRANSFORM_ENVELOPED: Final = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
EXC_C14N: Final = "http://www.w3.org/2001/10/xml-exc-c14n#"
EXC_C14N_COMMENTS: Final = "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"

AES128_CBC: Final = XENC_NS + "aes128-cbc"
AES192_CBC: Final = XENC_NS + "aes192-cbc"
AES256_CBC: Final = XENC_NS + "aes256-cbc"
AES128_GCM: Final = XENC11_NS + "aes128-gcm"
AES192_GCM: Final = XENC11_NS + "aes192-gcm"
AES256_GCM: Final = XENC11_NS + "aes256-gcm"
RSA_OAEP_MGF1P: Final = XENC_NS + "rsa-oaep-mgf1p"
RSA_OAEP_11: Final = XENC11_NS + "rsa-oaep"

#: SAML 2.0 Core 5.4.1-5.4.4: exclusive canonicalization, and only the enveloped-signature and
#: exclusive-c14n transforms. Comments may be kept: that only makes more of the document signed.
CANONICALIZATIONS: Final = frozenset({EXC_C14N, EXC_C14N_COMMENTS})
REFERENCE_TRANSFORMS: Final = frozenset({TRANSFORM_ENVELOPED, EXC_C14N, EXC_C14N_COMMENTS})
SIGNATURE_METHODS: Final = frozenset({SIG_RSA_SHA256, SIG_ECDSA_SHA256})
DIGEST_METHODS: Final = frozenset({DIGEST_SHA256})

#: Content-encryption algorithms and their key sizes in bytes. CBC stays for SPs that cannot do
#: GCM yet (XML Encryption 1.1 section 5.2); 3DES is left out (64-bit blocks, no integrity).
DATA_ALGORITHMS: Final = {
    AES128_CBC: 16,
    AES192_CBC: 24,
    AES256_CBC: 32,
    AES128_GCM: 16,
    AES192_GCM: 24,
    AES256_GCM: 32,
}
#: Key transport: OAEP only; RSA PKCS#1 v1.5 is open to Bleichenbacher-style oracles
#: (XML Encryption 1.1 section 5.5.1 makes it optional and warns against it).
KEY_TRANSPORTS: Final = frozenset({RSA_OAEP_MGF1P, RSA_OAEP_11})

#: Larger documents are refused before parsing. SAML messages are a few kilobytes; signed
#: metadata aggregates of a federation reach megabytes, so the bound leaves them room while
#: the HTTP layer bounds protocol messages far tighter.
MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024

#: Parsed keys, by a digest of the file's bytes (a rotated key has new bytes, so it never
#: meets a stale entry). Bounded because pysaml2 writes metadata certificates to fresh
#: temporary files for every verification.
KEY_CACHE_SIZE: Final = 64

_IDENTIFYING_ATTRIBUTES: Final = ("ID", "Id", "id", "{http://www.w3.org/XML/1998/namespace}id")

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    huge_tree=False,
    load_dtd=False,
    dtd_validation=False,
    remove_blank_text=False,
)

_T = TypeVar("_T")


def backend_from_settings(settings: Settings) -> str:
    """The crypto backend named by GATEWAY_SAML_CRYPTO (default `inprocess`)."""
    value = settings.environ.get(SETTING, "").strip()
    if not value:
        return INPROCESS
    if value not in BACKENDS:
        raise SettingsError(f"{SETTING}: must be one of {', '.join(BACKENDS)}")
    return value


def pysaml2_backend_name(backend: str) -> str:
    """The `crypto_backend` value to put in a pysaml2 configuration for `backend`.

    pysaml2 builds security contexts of its own while loading a configuration and an entity
    (`Config.load`, `Entity.__init__`, `MetadataStore`), and knows only "xmlsec1" (which needs
    the program installed) and "XMLSecurity". For the in-process backend those placeholder
    contexts get "XMLSecurity", which needs nothing at construction and cannot verify anything
    with python-xmlsec installed (it calls functions python-xmlsec does not have), so a context
    that `use_crypto` failed to replace fails closed. `use_crypto` replaces them all.
    """
    _check_backend(backend)
    return "XMLSecurity" if backend == INPROCESS else "xmlsec1"


def make_security_context(
    config: Any, backend: str = INPROCESS, *, crypto: CryptoBackend | None = None
) -> SecurityContext:
    """A pysaml2 `SecurityContext` for `config` (a loaded `saml2.config.Config`) on `backend`.

    Mirrors `saml2.sigver.security_context` except for the backend, and always sets
    `only_use_keys_in_metadata`: pysaml2 would otherwise verify an unknown issuer's message with
    the certificate the message itself carries.
    """
    _check_backend(backend)
    if crypto is None:
        crypto = CryptoBackendXmlSecInProcess() if backend == INPROCESS else _xmlsec1(config)
    key_file = config.getattr("key_file", "") or ""
    sec_backend = None
    if key_file:
        # The HTTP-Redirect binding signs the query string outside XML (SAML Bindings 3.4.4.1).
        key = import_rsa_key_from_file(key_file)
        if _is_rsa(key):
            sec_backend = RSACrypto(key)
    encryption_keypairs = config.encryption_keypairs
    enc_key_files = [pair["key_file"] for pair in encryption_keypairs or () if "key_file" in pair]
    return SecurityContext(
        crypto,
        key_file,
        cert_file=config.cert_file,
        metadata=getattr(config, "metadata", None),
        only_use_keys_in_metadata=True,
        cert_handler_extra_class=config.cert_handler_extra_class,
        generate_cert_info=config.generate_cert_info,
        tmp_cert_file=config.tmp_cert_file,
        tmp_key_file=config.tmp_key_file,
        validate_certificate=config.validate_certificate,
        enc_key_files=enc_key_files,
        encryption_keypairs=encryption_keypairs,
        sec_backend=sec_backend,
        delete_tmpfiles=config.delete_tmpfiles,
    )


def use_crypto(entity: _T, backend: str = INPROCESS, *, crypto: CryptoBackend | None = None) -> _T:
    """Give a pysaml2 entity (`Server`, `Saml2Client`, ...) a security context on `backend`.

    Replaces the context pysaml2 built in `Entity.__init__` and the one its metadata store uses
    to check signed remote metadata. Returns the entity, for `use_crypto(Server(config=c), b)`.
    """
    config: Any = getattr(entity, "config")  # noqa: B009 - `entity` is typed loosely on purpose
    context = make_security_context(config, backend, crypto=crypto)
    setattr(entity, "sec", context)  # noqa: B010
    metadata = getattr(entity, "metadata", None)
    if metadata is not None and hasattr(metadata, "security"):
        metadata.security = context
    return entity


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise SettingsError(f"{SETTING}: must be one of {', '.join(BACKENDS)}")


def _xmlsec1(config: Any) -> CryptoBackend:
    binary = config.xmlsec_binary
    try:
        if not binary:
            binary = get_xmlsec_binary(getattr(config, "xmlsec_path", None) or [])
    except SigverError as exc:
        raise SettingsError(
            f"{SETTING}: xmlsec1 is selected but the program is not installed"
        ) from exc
    if not os.path.exists(binary):
        raise SettingsError(f"{SETTING}: xmlsec1 is selected but {binary} does not exist")
    return CryptoBackendXmlSec1(binary, delete_tmpfiles=config.delete_tmpfiles)


def _is_rsa(key: Any) -> bool:
    return isinstance(key, rsa.RSAPrivateKey)


class CryptoBackendXmlSecInProcess(CryptoBackend):  # type: ignore[misc]  # pysaml2 is untyped
    """pysaml2's `CryptoBackend` interface, done in-process with python-xmlsec and lxml.

    Thread-safe: every call builds its own xmlsec context; only parsed keys are shared.

    `signature_methods`/`digest_methods` widen what is accepted and produced, e.g. for a
    relying party that cannot do better than SHA-1 (`allow_sha1=True`, logged by the caller);
    `data_encryption` picks the content-encryption algorithm for SPs without AES-GCM.
    """

    def __init__(
        self,
        *,
        allow_sha1: bool = False,
        signature_methods: Iterable[str] = SIGNATURE_METHODS,
        digest_methods: Iterable[str] = DIGEST_METHODS,
        data_encryption: str = AES256_GCM,
        max_document_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        super().__init__()
        self.signature_methods = frozenset(signature_methods) | (
            {SIG_RSA_SHA1} if allow_sha1 else set()
        )
        self.digest_methods = frozenset(digest_methods) | ({DIGEST_SHA1} if allow_sha1 else set())
        if data_encryption not in DATA_ALGORITHMS:
            raise ValueError(f"unsupported data encryption algorithm {data_encryption}")
        self.data_encryption = data_encryption
        self.max_document_bytes = max_document_bytes
        self._keys: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self._keys_lock = threading.Lock()
        self._reference_transforms = _transforms(REFERENCE_TRANSFORMS | self.digest_methods)
        self._signature_transforms = _transforms(CANONICALIZATIONS | self.signature_methods)

    @property
    def version(self) -> str:
        # Missing from python-xmlsec's type stubs, present in the module.
        version: tuple[int, ...] = getattr(xmlsec, "get_libxmlsec_version")()  # noqa: B009
        return ".".join(str(part) for part in version)

    # -- signatures ------------------------------------------------------------------------

    def sign_statement(
        self, statement: Any, node_name: str, key_file: str, node_id: str | None
    ) -> str:
        """Fill in the `ds:Signature` template of the element `node_name` with ID `node_id`.

        The template comes from `saml2.sigver.pre_signature_part`; it must already name the
        algorithms, which are held to the same rules as a signature being verified.
        """
        if isinstance(statement, SamlBase):
            statement = str(statement)
        try:
            root = self._parse(statement)
            target = _target(root, node_name, node_id, signing=True)
            signature = _only_signature(target)
            self._check_profile(signature, target)
            ctx = xmlsec.SignatureContext()
            ctx.key = self._key(key_file, xmlsec.constants.KeyDataFormatPem)
            ctx.register_id(target, "ID")
            ctx.sign(signature)
        except (xmlsec.Error, _Refused, OSError, ValueError) as exc:
            raise SignatureError(f"cannot sign {node_name}: {_reason(exc)}") from exc
        return _serialize(root)

    def validate_signature(
        self,
        signedtext: Any,
        cert_file: str,
        cert_type: str,
        node_name: str,
        node_id: str | None,
    ) -> bool:
        """True if the element `node_name` with ID `node_id` is signed by `cert_file`'s key.

        Raises `SignatureError` (an `XmlsecError`, as pysaml2 expects) on any failure.
        """
        formats = {
            "pem": xmlsec.constants.KeyDataFormatCertPem,
            "der": xmlsec.constants.KeyDataFormatCertDer,
        }
        try:
            if cert_type not in formats:
                raise _Refused("unsupported certificate type")
            root = self._parse(signedtext)
            target = _target(root, node_name, node_id, signing=False)
            signature = _only_signature(target)
            self._check_profile(signature, target)
            ctx = xmlsec.SignatureContext()
            # The key is set on the context, so xmlsec never looks at the document's KeyInfo.
            ctx.key = self._key(cert_file, formats[cert_type])
            ctx.set_enabled_key_data([xmlsec.constants.KeyDataRawX509Cert])
            for transform in self._reference_transforms:
                ctx.enable_reference_transform(transform)
            for transform in self._signature_transforms:
                ctx.enable_signature_transform(transform)
            ctx.register_id(target, "ID")
            ctx.verify(signature)
        except (xmlsec.Error, _Refused, OSError, ValueError) as exc:
            raise SignatureError(f"{node_name} signature not valid: {_reason(exc)}") from None
        return True

    def _check_profile(self, signature: etree._Element, target: etree._Element) -> None:
        """SAML 2.0 Core 5.4 and this backend's algorithm rules, before any cryptography."""
        signed_info = _only_child(signature, "SignedInfo", DS_NS)
        c14n = _algorithm(_only_child(signed_info, "CanonicalizationMethod", DS_NS))
        if c14n not in CANONICALIZATIONS:
            raise _Refused("canonicalization method not allowed")
        if _algorithm(_only_child(signed_info, "SignatureMethod", DS_NS)) not in (
            self.signature_methods
        ):
            raise _Refused("signature method not allowed")
        reference = _only_child(signed_info, "Reference", DS_NS)
        target_id = target.get("ID")
        uri = reference.get("URI")
        # An empty URI is the whole document (XML Signature 4.4.3.2): the same as the root's ID.
        empty_allowed = target.getparent() is None and target_id is None
        if not ((target_id and uri == "#" + target_id) or (empty_allowed and uri == "")):
            raise _Refused("the reference does not point at the signed element")
        transforms = reference.findall(f"{{{DS_NS}}}Transforms/{{{DS_NS}}}Transform")
        if len(reference.findall(f"{{{DS_NS}}}Transforms")) != 1:
            raise _Refused("one Transforms element expected")
        algorithms = [_algorithm(transform) for transform in transforms]
        if (
            not 1 <= len(algorithms) <= 2
            or len(set(algorithms)) != len(algorithms)
            or TRANSFORM_ENVELOPED not in algorithms
            or not set(algorithms) <= REFERENCE_TRANSFORMS
        ):
            raise _Refused("transforms not allowed")
        if _algorithm(_only_child(reference, "DigestMethod", DS_NS)) not in self.digest_methods:
            raise _Refused("digest method not allowed")
        if signature.find(f"{{{DS_NS}}}Object") is not None:
            raise _Refused("ds:Object is not allowed")

    # -- encryption ------------------------------------------------------------------------

    def encrypt(
        self, text: Any, recv_key: str, template: Any, session_key_type: str, xpath: str = ""
    ) -> str:
        """Encrypt the element `xpath` selects (the document element without one) for the
        certificate in `recv_key`, using `template` (an `xenc:EncryptedData` as XML text, a
        file holding it, or a pysaml2 element). `session_key_type` is pysaml2's xmlsec1 hint
        ("des-192"); this backend always uses `data_encryption` instead."""
        try:
            root = self._parse(text)
            node = _select(root, xpath) if xpath else root
            encrypted = self._encrypt_element(node, recv_key, template)
        except (xmlsec.Error, _Refused, OSError, ValueError) as exc:
            raise EncryptError(f"cannot encrypt: {_reason(exc)}") from exc
        return _serialize(encrypted.getroottree().getroot())

    def encrypt_assertion(
        self,
        statement: Any,
        enc_key: str,
        template: Any,
        key_type: str = "des-192",
        node_xpath: str | None = None,
        node_id: str | None = None,
    ) -> str:
        """Replace the assertion at `node_xpath` (default Response/EncryptedAssertion/
        Assertion, as pysaml2's `pre_encrypt_assertion` arranges it) by its encryption."""
        if isinstance(statement, SamlBase):
            statement = pre_encrypt_assertion(statement)
        try:
            root = self._parse(str(statement) if isinstance(statement, SamlBase) else statement)
            node = _select(root, node_xpath or ASSERT_XPATH)
            if node_id is not None and node.get("ID") != node_id:
                raise _Refused("the selected assertion has another ID")
            self._encrypt_element(node, enc_key, template)
        except (xmlsec.Error, _Refused, OSError, ValueError) as exc:
            raise EncryptError(f"cannot encrypt the assertion: {_reason(exc)}") from exc
        return _serialize(root)

    def _encrypt_element(
        self, node: etree._Element, cert_file: str, template: Any
    ) -> etree._Element:
        encrypted_data = self._encryption_template(template)
        key_info = encrypted_data.find(f"{{{DS_NS}}}KeyInfo")
        encrypted_key = (
            key_info.find(f"{{{XENC_NS}}}EncryptedKey") if key_info is not None else None
        )
        if key_info is None or encrypted_key is None:
            raise _Refused("the template has no EncryptedKey")
        # xmlsec would try to resolve the KeyInfo templates against a keys manager; both parts
        # are encrypted with explicit keys instead, and the KeyInfo put back afterwards.
        encrypted_data.remove(key_info)
        recipient_key_info = encrypted_key.find(f"{{{DS_NS}}}KeyInfo")
        if recipient_key_info is not None:
            encrypted_key.remove(recipient_key_info)
        _set_method(encrypted_data, self.data_encryption)
        _set_method(encrypted_key, RSA_OAEP_MGF1P)

        session = secrets.token_bytes(DATA_ALGORITHMS[self.data_encryption])
        plaintext = etree.tostring(node)  # lxml declares every namespace the node uses
        data_ctx = xmlsec.EncryptionContext()
        data_ctx.key = xmlsec.Key.from_binary_data(xmlsec.constants.KeyDataAes, session)
        encrypted_data = data_ctx.encrypt_binary(encrypted_data, plaintext)
        # libxmlsec1 only encrypts a key inside its own key lookup; OAEP is done here instead
        # (XML Encryption 1.1 section 5.5.2: MGF1 and digest SHA-1, empty OAEPparams).
        recipient = self._cached("cert", cert_file, _load_certificate).public_key()
        if not isinstance(recipient, rsa.RSAPublicKey):
            raise _Refused("the encryption certificate does not hold an RSA key")
        # SHA-1 inside OAEP is a mask generator, not a signature digest: no collision risk.
        oaep = _oaep(hashes.SHA1(), hashes.SHA1(), None)  # noqa: S303
        wrapped = recipient.encrypt(session, oaep)
        _cipher_value(encrypted_key).text = base64.b64encode(wrapped).decode("ascii")

        if recipient_key_info is not None:
            encrypted_key.insert(1, recipient_key_info)
        encrypted_data.insert(1, key_info)
        parent = node.getparent()
        if parent is None:
            node.getroottree()._setroot(encrypted_data)
        else:
            encrypted_data.tail = node.tail
            parent.replace(node, encrypted_data)
        return encrypted_data

    def _encryption_template(self, template: Any) -> etree._Element:
        if isinstance(template, SamlBase):
            template = str(template)
        elif isinstance(template, (str, Path)) and not str(template).lstrip().startswith("<"):
            template = Path(template).read_bytes()
        element = self._parse(template)
        if element.tag != f"{{{XENC_NS}}}EncryptedData":
            raise _Refused("the template is not an EncryptedData")
        # A private copy: encrypt_binary fills the template in place.
        return etree.fromstring(etree.tostring(element), _PARSER)

    def decrypt(self, enctext: Any, key_file: str) -> str:
        """Decrypt the document's first `xenc:EncryptedData` with the private key in
        `key_file`, returning the whole document, as pysaml2's xmlsec1 backend does."""
        try:
            root = self._parse(enctext)
            encrypted_data = next(root.iter(f"{{{XENC_NS}}}EncryptedData"), None)
            if encrypted_data is None:
                raise _Refused("nothing to decrypt")
            method = _algorithm(_only_child(encrypted_data, "EncryptionMethod", XENC_NS))
            if method not in DATA_ALGORITHMS:
                raise _Refused("content encryption algorithm not allowed")
            # Inline ciphertext only: a CipherReference would make libxmlsec1 fetch a URI
            # (a local file or an internal URL) chosen by the sender.
            _cipher_value(encrypted_data)
            encrypted_key = _encrypted_key(root, encrypted_data)
            transport = _algorithm(_only_child(encrypted_key, "EncryptionMethod", XENC_NS))
            if transport not in KEY_TRANSPORTS:
                raise _Refused("key transport algorithm not allowed")
            private = self._cached("private", key_file, _load_private_key)
            if not isinstance(private, rsa.RSAPrivateKey):
                raise _Refused("the decryption key is not an RSA key")
            wrapped = base64.b64decode(
                "".join((_cipher_value(encrypted_key).text or "").split()), validate=True
            )
            session = private.decrypt(wrapped, _oaep_of(encrypted_key, transport))
            if len(session) != DATA_ALGORITHMS[method]:
                raise ValueError("wrong session key length")
            data_ctx = xmlsec.EncryptionContext()
            data_ctx.key = xmlsec.Key.from_binary_data(xmlsec.constants.KeyDataAes, session)
            decrypted: Any = data_ctx.decrypt(encrypted_data)
            if not isinstance(decrypted, etree._Element):
                raise _Refused("the encrypted data is not an element")
            result = decrypted.getroottree().getroot()
        except _Refused as exc:
            raise DecryptError(f"cannot decrypt: {exc}") from None
        except (xmlsec.Error, OSError, ValueError):
            # One message for every cryptographic failure: telling a key-transport error from
            # a padding or tag error would hand the sender a decryption oracle.
            raise DecryptError("cannot decrypt") from None
        return _serialize(result)

    # -- shared ----------------------------------------------------------------------------

    def _parse(self, text: Any) -> etree._Element:
        if isinstance(text, str):
            data = text.encode("utf-8")
        elif isinstance(text, bytes):
            data = text
        else:
            raise _Refused("not an XML document")
        if len(data) > self.max_document_bytes:
            raise _Refused("document too large")
        try:
            tree = etree.ElementTree(etree.fromstring(data, _PARSER))
        except etree.XMLSyntaxError as exc:
            raise _Refused("not well-formed XML") from exc
        docinfo = tree.docinfo
        if getattr(docinfo, "doctype", "") or docinfo.internalDTD is not None:
            raise _Refused("a DTD is not allowed")
        root = tree.getroot()
        if any(isinstance(node, etree._Entity) for node in root.iter()):
            raise _Refused("entity references are not allowed")
        return root

    def _key(self, path: str, key_format: int) -> xmlsec.Key:
        def load(data: bytes) -> xmlsec.Key:
            return xmlsec.Key.from_memory(data, key_format)

        key: xmlsec.Key = self._cached(f"xmlsec-{key_format}", path, load)
        return key

    def _cached(self, kind: str, path: str, load: Callable[[bytes], Any]) -> Any:
        data = Path(path).read_bytes()
        cache_key = (kind, hashlib.sha256(data).digest())
        with self._keys_lock:
            found = self._keys.get(cache_key)
            if found is not None:
                self._keys.move_to_end(cache_key)
                return found
        loaded = load(data)
        with self._keys_lock:
            self._keys[cache_key] = loaded
            while len(self._keys) > KEY_CACHE_SIZE:
                self._keys.popitem(last=False)
        return loaded


class _Refused(Exception):
    """The document breaks a rule of this backend; the message names the rule, not the data."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Refused):
        return str(exc)
    if isinstance(exc, OSError):
        return "key or certificate file cannot be read"
    return type(exc).__name__


def _transforms(hrefs: Iterable[str]) -> list[Any]:
    by_href: dict[str, Any] = {}
    for name in dir(xmlsec.constants):
        value = getattr(xmlsec.constants, name)
        if name.startswith("Transform") and getattr(value, "href", None):
            by_href[value.href] = value
    missing = set(hrefs) - by_href.keys()
    if missing:
        raise ValueError(f"libxmlsec1 lacks {sorted(missing)}")
    return [by_href[href] for href in sorted(hrefs)]


def _algorithm(element: etree._Element) -> str:
    return element.get("Algorithm") or ""


def _only_child(parent: etree._Element, name: str, namespace: str) -> etree._Element:
    found = parent.findall(f"{{{namespace}}}{name}")
    if len(found) != 1:
        raise _Refused(f"exactly one {name} expected")
    return found[0]


def _only_signature(target: etree._Element) -> etree._Element:
    return _only_child(target, "Signature", DS_NS)


def _qualified(node_name: str) -> str:
    namespace, _, local = node_name.rpartition(":")
    if not namespace or not local:
        raise _Refused("node name must be namespace:local-name")
    return f"{{{namespace}}}{local}"


def _target(
    root: etree._Element, node_name: str, node_id: str | None, *, signing: bool
) -> etree._Element:
    """The one element to sign or verify.

    With an ID, the ID must occur once in the whole document, in any attribute an XML tool
    might treat as an ID, so no second element can stand in for the signed one.
    """
    tag = _qualified(node_name)
    if node_id is None:
        if signing:
            candidates = [e for e in root.iter(tag) if e.find(f"{{{DS_NS}}}Signature") is not None]
            if not candidates:
                raise _Refused("no element to sign")
            return candidates[0]
        # pysaml2 verifies signed metadata without an ID: then the document element is meant.
        if root.tag != tag:
            raise _Refused("the document element is not the expected element")
        node_id = root.get("ID")
        if node_id is None:
            return root
    holders = [
        element
        for element in root.iter()
        if isinstance(element.tag, str)
        and any(element.get(attribute) == node_id for attribute in _IDENTIFYING_ATTRIBUTES)
    ]
    if len(holders) != 1:
        raise _Refused("the ID must occur exactly once")
    if holders[0].tag != tag or holders[0].get("ID") != node_id:
        raise _Refused("the ID belongs to another element")
    return holders[0]


def _select(root: etree._Element, xpath: str) -> etree._Element:
    found = root.getroottree().xpath(xpath)
    if not isinstance(found, list) or not found or not isinstance(found[0], etree._Element):
        raise _Refused("nothing to encrypt at the given path")
    return found[0]


def _set_method(element: etree._Element, algorithm: str) -> None:
    method = element.find(f"{{{XENC_NS}}}EncryptionMethod")
    if method is None:
        method = etree.Element(f"{{{XENC_NS}}}EncryptionMethod")
        element.insert(0, method)
    for child in list(method):
        method.remove(child)  # e.g. an OAEP DigestMethod that belonged to the old algorithm
    method.set("Algorithm", algorithm)


def _encrypted_key(root: etree._Element, encrypted_data: etree._Element) -> etree._Element:
    """The EncryptedKey for `encrypted_data`: inside its KeyInfo, or (as some IdPs send it) a
    sibling inside the same EncryptedAssertion/EncryptedID that points back at it."""
    key_info = encrypted_data.find(f"{{{DS_NS}}}KeyInfo")
    if key_info is not None:
        inside = key_info.findall(f"{{{XENC_NS}}}EncryptedKey")
        if len(inside) == 1:
            return inside[0]
        if inside:
            raise _Refused("more than one EncryptedKey")
    parent = encrypted_data.getparent()
    data_id = encrypted_data.get("Id")
    siblings = [] if parent is None else parent.findall(f"{{{XENC_NS}}}EncryptedKey")
    if len(siblings) == 1:
        references = [ref.get("URI") for ref in siblings[0].iter(f"{{{XENC_NS}}}DataReference")]
        if not references or (data_id is not None and f"#{data_id}" in references):
            return siblings[0]
    raise _Refused("no usable EncryptedKey")


_OAEP_DIGESTS: Final[dict[str, Callable[[], hashes.HashAlgorithm]]] = {
    DIGEST_SHA1: hashes.SHA1,
    DIGEST_SHA256: hashes.SHA256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashes.SHA384,
    "http://www.w3.org/2001/04/xmlenc#sha512": hashes.SHA512,
}
_MGF_DIGESTS: Final[dict[str, Callable[[], hashes.HashAlgorithm]]] = {
    XENC11_NS + "mgf1sha1": hashes.SHA1,
    XENC11_NS + "mgf1sha256": hashes.SHA256,
    XENC11_NS + "mgf1sha384": hashes.SHA384,
    XENC11_NS + "mgf1sha512": hashes.SHA512,
}


def _oaep(
    digest: hashes.HashAlgorithm, mgf_digest: hashes.HashAlgorithm, label: bytes | None
) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=mgf_digest), algorithm=digest, label=label)


def _oaep_of(encrypted_key: etree._Element, transport: str) -> padding.OAEP:
    """OAEP parameters from an EncryptedKey's EncryptionMethod (XML Encryption 1.1, 5.5.2)."""
    method = _only_child(encrypted_key, "EncryptionMethod", XENC_NS)
    digest_method = method.find(f"{{{DS_NS}}}DigestMethod")
    digest_uri = DIGEST_SHA1 if digest_method is None else _algorithm(digest_method)
    mgf = method.find(f"{{{XENC11_NS}}}MGF")
    mgf_uri = XENC11_NS + "mgf1sha1" if mgf is None else _algorithm(mgf)
    if transport == RSA_OAEP_MGF1P and mgf is not None:
        raise _Refused("rsa-oaep-mgf1p takes no MGF")
    if digest_uri not in _OAEP_DIGESTS or mgf_uri not in _MGF_DIGESTS:
        raise _Refused("OAEP parameters not allowed")
    params = method.find(f"{{{XENC_NS}}}OAEPparams")
    label = None
    if params is not None and (params.text or "").strip():
        label = base64.b64decode("".join((params.text or "").split()), validate=True)
    return _oaep(_OAEP_DIGESTS[digest_uri](), _MGF_DIGESTS[mgf_uri](), label)


def _cipher_value(element: etree._Element) -> etree._Element:
    cipher_data = _only_child(element, "CipherData", XENC_NS)
    return _only_child(cipher_data, "CipherValue", XENC_NS)


def _load_certificate(data: bytes) -> x509.Certificate:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _load_private_key(data: bytes) -> Any:
    return serialization.load_pem_private_key(data, password=None)


def _serialize(root: etree._Element) -> str:
    # The same shape xmlsec1 writes, and no encoding in the declaration, so the text can be
    # parsed again as a Python str by lxml.
    return '<?xml version="1.0"?>\n' + etree.tostring(root.getroottree(), encoding="unicode")


__all__ = [
    "BACKENDS",
    "INPROCESS",
    "SETTING",
    "XMLSEC1",
    "CryptoBackendXmlSecInProcess",
    "backend_from_settings",
    "make_security_context",
    "pysaml2_backend_name",
    "use_crypto",
]
