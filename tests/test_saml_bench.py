"""bench/saml_sign.py times the gateway's own answer (issue 7 "Performance"): a smoke test
that its "gateway" cases still build what the IdP's views send (a signed Response; with an
encryption key, an EncryptedAssertion), so the benchmark cannot drift from the code it times.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from lxml import etree

BENCH = Path(__file__).resolve().parent.parent / "bench" / "saml_sign.py"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_saml_sign", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_times_the_gateway_path(tmp_path: Path) -> None:
    bench = _bench()
    bench.key_pair(tmp_path, "idp")
    bench.key_pair(tmp_path, "sp")
    server = bench.server(tmp_path, "inprocess")
    make = bench.gateway_response(tmp_path)

    plain = etree.fromstring(make(server, False).encode())
    assert plain.find(f"{{{DS_NS}}}Signature") is not None
    assertion = plain.find(f"{{{SAML_NS}}}Assertion")
    assert assertion is not None and assertion.find(f"{{{DS_NS}}}Signature") is not None
    names = {a.get("FriendlyName") for a in assertion.iter(f"{{{SAML_NS}}}Attribute")}
    assert names == {"given_name", "family_name", "email"}

    encrypted = etree.fromstring(make(server, True).encode())
    assert encrypted.find(f"{{{SAML_NS}}}EncryptedAssertion") is not None
    assert encrypted.find(f"{{{SAML_NS}}}Assertion") is None
