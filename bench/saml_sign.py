"""Signed SAML responses per second: the in-process backend against pysaml2's xmlsec1 backend.

Issue 7, "Performance": side by side in one run, on one core, with the same keys and the same
response; prints both rates and their ratio (the goal is at least 10x), for signed responses
and for signed + encrypted ones.

Two levels are measured:
- "sign only": the crypto step of one response, i.e. signing its Assertion and then the Response
  around it through pysaml2's `SecurityContext`, on a prepared response with signature templates;
- "gateway": what the IdP's views call for every answer, `gateway.idp.saml.assertions.
  authn_response`: pysaml2 builds the assertion, the gateway adds its AttributeStatement, signs
  the assertion on its own, (encrypts it: AES-256-GCM + RSA-OAEP for the SP's key from its
  metadata,) and signs the Response. The Python work is the same for both backends; only the
  crypto backend differs, as when GATEWAY_SAML_CRYPTO=xmlsec1.

Run: .venv/bin/python bench/saml_sign.py [--seconds 4]
Keys are throwaway RSA-2048 keys made at start (the gateway's keys are RSA-2048 too).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, class_name, saml, samlp
from saml2.config import IdPConfig, SPConfig
from saml2.metadata import entity_descriptor
from saml2.saml import NAMEID_FORMAT_PERSISTENT, NameID
from saml2.server import Server
from saml2.sigver import pre_signature_part
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

from gateway import clock
from gateway.flows.types import AuthnResult
from gateway.idp.saml import assertions, attributes
from gateway.idp.saml.crypto import pysaml2_backend_name, use_crypto
from gateway.idp.saml.registry import SamlServiceProvider
from gateway.levels import Level

IDP = "https://idp.example.org/saml/idp/metadata"
SP = "https://sp.example.org/saml/metadata"
ACS = "https://sp.example.org/saml/acs"
PASSWORD_PROTECTED = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"


def key_pair(folder: Path, name: str) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
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
    return str(key_file), str(cert_file)


def configs(folder: Path, backend: str) -> tuple[dict[str, Any], dict[str, Any]]:
    idp_key, idp_cert = str(folder / "idp.key.pem"), str(folder / "idp.crt.pem")
    sp_key, sp_cert = str(folder / "sp.key.pem"), str(folder / "sp.crt.pem")
    algorithms = {"signing_algorithm": SIG_RSA_SHA256, "digest_algorithm": DIGEST_SHA256}
    idp = {
        "entityid": IDP,
        "key_file": idp_key,
        "cert_file": idp_cert,
        "crypto_backend": pysaml2_backend_name(backend),
        **algorithms,
        "service": {
            "idp": {
                "endpoints": {"single_sign_on_service": [(IDP + "/sso", BINDING_HTTP_POST)]},
                "policy": {"default": {"lifetime": {"minutes": 5}}},
                **algorithms,
            }
        },
    }
    sp = {
        "entityid": SP,
        "key_file": sp_key,
        "cert_file": sp_cert,
        "encryption_keypairs": [{"key_file": sp_key, "cert_file": sp_cert}],
        "crypto_backend": pysaml2_backend_name(backend),
        **algorithms,
        "service": {
            "sp": {"endpoints": {"assertion_consumer_service": [(ACS, BINDING_HTTP_POST)]}}
        },
    }
    return idp, sp


def sp_metadata(folder: Path) -> str:
    _, sp = configs(folder, "inprocess")
    return str(entity_descriptor(SPConfig().load(sp)))


def server(folder: Path, backend: str) -> Server:
    idp, _ = configs(folder, backend)
    config = IdPConfig().load(idp | {"metadata": {"inline": [sp_metadata(folder)]}})
    return use_crypto(Server(config=config), backend)


def gateway_response(folder: Path) -> Callable[[Server, bool], str]:
    """The gateway's own answer (gateway.idp.saml.assertions.authn_response), as the views
    build it for a registered SP with an encryption key in its metadata."""
    sp = SamlServiceProvider(entity_id=SP, metadata_xml=sp_metadata(folder), bsn=False,
                             attributes='["given_name", "family_name", "email"]')
    result = AuthnResult(
        subject_key="account:bench", account_id=None, route="desk_account",
        level=Level.MIDDEN, amr=("pwd", "sms"), auth_time=clock.now(), sso_session_id=None,
    )
    released = attributes.released(
        sp.attribute_names, None,
        {"given_name": "Jan", "family_name": "Jansen", "email": "jan@example.org"},
    )
    name_id = NameID(format=NAMEID_FORMAT_PERSISTENT, text="pairwise-identifier-123")

    def make(idp: Server, encrypt: bool) -> str:
        return assertions.authn_response(
            idp, sp=sp, in_response_to="id-bench-request", destination=ACS, name_id=name_id,
            result=result, attributes=released, encrypt=encrypt,
        )

    return make


def unsigned_response(idp: Server) -> Any:
    return idp.create_authn_response(
        identity={"givenName": ["Jan"], "sn": ["Jansen"], "mail": ["jan@example.org"]},
        in_response_to="id-bench-request",
        destination=ACS,
        sp_entity_id=SP,
        name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text="pairwise-identifier-123"),
        authn={"class_ref": PASSWORD_PROTECTED, "authn_auth": IDP},
        sign_response=False,
        sign_assertion=False,
        encrypt_assertion=False,
    )


def rate(work: Callable[[], object], seconds: float, max_runs: int) -> float:
    """Responses per second of `work`, over about `seconds` (at least 3 runs)."""
    work()  # warm-up: key caches, imports, first fork
    runs, start = 0, time.perf_counter()
    while runs < 3 or (time.perf_counter() - start < seconds and runs < max_runs):
        work()
        runs += 1
    return runs / (time.perf_counter() - start)


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})  # inherited by every xmlsec1 child process
    return f"pinned to CPU {cpu}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    args = parser.parse_args(argv)
    if shutil.which("xmlsec1") is None:
        print("the xmlsec1 program is needed for the comparison (apt-get install xmlsec1)")
        return 1
    where = pin_to_one_core()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        key_pair(folder, "idp")
        key_pair(folder, "sp")
        servers = {backend: server(folder, backend) for backend in ("inprocess", "xmlsec1")}

        # One prepared response with signature templates, shared by both backends.
        prepared = unsigned_response(servers["inprocess"])
        if isinstance(prepared, str):
            prepared = samlp.response_from_string(prepared)
        cert_b64 = servers["inprocess"].sec.my_cert
        template = copy.deepcopy(prepared)
        template.assertion.signature = pre_signature_part(
            template.assertion.id, cert_b64, 2, sign_alg=SIG_RSA_SHA256, digest_alg=DIGEST_SHA256
        )
        template.signature = pre_signature_part(
            template.id, cert_b64, 1, sign_alg=SIG_RSA_SHA256, digest_alg=DIGEST_SHA256
        )
        unsigned = str(template)
        assertion_name, response_name = class_name(saml.Assertion()), class_name(samlp.Response())
        gateway = gateway_response(folder)

        def sign_only(idp: Server) -> Callable[[], object]:
            def work() -> object:
                text = idp.sec.sign_statement(
                    unsigned, assertion_name, node_id=template.assertion.id
                )
                return idp.sec.sign_statement(text, response_name, node_id=template.id)

            return work

        cases: list[tuple[str, Callable[[Server], Callable[[], object]]]] = [
            ("sign only (Response + Assertion)", sign_only),
            ("gateway: signed response", lambda s: lambda: gateway(s, False)),
            ("gateway: signed + encrypted", lambda s: lambda: gateway(s, True)),
        ]
        print(f"SAML response signing, RSA-2048, RSA-SHA256/SHA-256, {where}")
        print(f"python {sys.version.split()[0]}, {args.seconds:.0f} s per measurement\n")
        print(f"{'case':36} {'in-process/s':>13} {'xmlsec1/s':>10} {'ratio':>7}")
        for label, make in cases:
            fast = rate(make(servers["inprocess"]), args.seconds, 100_000)
            slow = rate(make(servers["xmlsec1"]), args.seconds, 200)
            print(f"{label:36} {fast:13.1f} {slow:10.1f} {fast / slow:6.1f}x")
        print(
            "\nencryption (both backends, the gateway's template): AES-256-GCM content,"
            " RSA-OAEP key transport"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
